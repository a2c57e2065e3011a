//! The console front-end against a back-end thread (xenconsoled's part) on a real shared page, and
//! against a back-end that writes garbage indices.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use blanket_xen::console::{ConsoleFront, ConsoleFrontError};
use blanket_xen::emulated::{BackendDomain, EmulatedXen};
use blanket_xen::platform::EventChannels;
use xen_abi::console::{ConsoleError, XENCONS_IN_SIZE, XENCONS_OUT_SIZE};
use xen_abi::ring::{RawRingMemory, RingMemory};

const IN_CONS: usize = 3072;
const IN_PROD: usize = 3076;
const OUT_CONS: usize = 3080;
const OUT_PROD: usize = 3084;

fn idx(page: &RawRingMemory, off: usize) -> &AtomicU32 {
    // SAFETY: an index of the console page, inside the page and 4-byte aligned; atomic access only.
    unsafe { AtomicU32::from_ptr(page.as_ptr().add(off).cast::<u32>()) }
}

fn byte(page: &RawRingMemory, off: usize) -> u8 {
    // SAFETY: `off` is inside the page.
    unsafe { page.as_ptr().add(off).read_volatile() }
}

fn set_byte(page: &RawRingMemory, off: usize, b: u8) {
    // SAFETY: `off` is inside the page.
    unsafe { page.as_ptr().add(off).write_volatile(b) }
}

struct Setup {
    xen: Arc<EmulatedXen>,
    page: RawRingMemory,
    port: u32,
    back: BackendDomain,
    local: u32,
}

fn setup(start: u32) -> Setup {
    let xen = EmulatedXen::new(1, 2, 1);
    let page = xen.alloc_pages(1).unwrap();
    for off in [IN_CONS, IN_PROD, OUT_CONS, OUT_PROD] {
        idx(&page, off).store(start, Ordering::Relaxed);
    }
    let port = xen.alloc_unbound(0).unwrap();
    let back = BackendDomain::new(Arc::clone(&xen), 0);
    let local = back.bind_interdomain(port).unwrap();
    Setup {
        xen,
        page,
        port,
        back,
        local,
    }
}

/// xenconsoled's loop: takes the guest's output, and answers each line with it upper-cased as input.
fn spawn_backend(s: &Setup, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u8>> {
    let (page, back, local) = (s.page, s.back.clone(), s.local);
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut out_cons = idx(&page, OUT_CONS).load(Ordering::Relaxed);
        let mut in_prod = idx(&page, IN_PROD).load(Ordering::Relaxed);
        let mut pending_input: Vec<u8> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let prod = idx(&page, OUT_PROD).load(Ordering::Acquire);
            let used = prod.wrapping_sub(out_cons);
            assert!(
                used <= XENCONS_OUT_SIZE,
                "guest out_prod {prod} cons {out_cons}"
            );
            for i in 0..used {
                let b = byte(
                    &page,
                    1024 + (out_cons.wrapping_add(i) % XENCONS_OUT_SIZE) as usize,
                );
                got.push(b);
                if b == b'\n' || pending_input.len() < 64 {
                    pending_input.push(b.to_ascii_uppercase());
                }
            }
            out_cons = prod;
            idx(&page, OUT_CONS).store(out_cons, Ordering::Release);
            // Input, as much as fits.
            let in_cons = idx(&page, IN_CONS).load(Ordering::Acquire);
            let free = XENCONS_IN_SIZE - in_prod.wrapping_sub(in_cons);
            let n = (free as usize).min(pending_input.len());
            for (i, b) in pending_input.drain(..n).enumerate() {
                set_byte(
                    &page,
                    (in_prod.wrapping_add(i as u32) % XENCONS_IN_SIZE) as usize,
                    b,
                );
            }
            in_prod = in_prod.wrapping_add(n as u32);
            idx(&page, IN_PROD).store(in_prod, Ordering::Release);
            if used > 0 || n > 0 {
                back.notify(local).unwrap();
            }
            let _ = back.wait(local, Duration::from_millis(20));
        }
        got
    })
}

#[test]
fn output_larger_than_the_ring_reaches_the_backend_in_order() {
    let s = setup(0);
    let stop = Arc::new(AtomicBool::new(false));
    let t = spawn_backend(&s, Arc::clone(&stop));
    let mut con = ConsoleFront::new(Arc::clone(&s.xen), s.page, s.port, 2_000_000_000).unwrap();
    let data: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    con.write_all(&data).unwrap();
    // Wait until everything is consumed.
    for _ in 0..200 {
        if idx(&s.page, OUT_CONS).load(Ordering::Acquire) == 20_000 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    s.back.kick_self(s.local).unwrap();
    assert_eq!(t.join().unwrap(), data);
}

#[test]
fn input_from_the_backend_is_read_and_its_room_given_back() {
    let s = setup(0);
    let stop = Arc::new(AtomicBool::new(false));
    let t = spawn_backend(&s, Arc::clone(&stop));
    let mut con = ConsoleFront::new(Arc::clone(&s.xen), s.page, s.port, 2_000_000_000).unwrap();
    con.write_all(b"hello\n").unwrap();
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while got.len() < 6 {
        let n = con.read_wait(&mut buf, 2_000_000_000).unwrap();
        assert!(n > 0, "no input within 2 s");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"HELLO\n");
    assert_eq!(idx(&s.page, IN_CONS).load(Ordering::Acquire), 6);
    stop.store(true, Ordering::Relaxed);
    s.back.kick_self(s.local).unwrap();
    t.join().unwrap();
}

#[test]
fn indices_that_wrap_through_2_pow_32() {
    let s = setup(u32::MAX - 1000);
    let stop = Arc::new(AtomicBool::new(false));
    let t = spawn_backend(&s, Arc::clone(&stop));
    let mut con = ConsoleFront::new(Arc::clone(&s.xen), s.page, s.port, 2_000_000_000).unwrap();
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    con.write_all(&data).unwrap();
    for _ in 0..200 {
        if idx(&s.page, OUT_CONS).load(Ordering::Acquire) == (u32::MAX - 1000).wrapping_add(5000) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    s.back.kick_self(s.local).unwrap();
    assert_eq!(t.join().unwrap(), data);
}

#[test]
fn out_cons_more_than_the_ring_size_behind() {
    let s = setup(0);
    let mut con = ConsoleFront::new(Arc::clone(&s.xen), s.page, s.port, 100_000_000).unwrap();
    // A back-end claiming to have consumed bytes never produced: prod - cons wraps to a huge number.
    idx(&s.page, OUT_CONS).store(3000, Ordering::Release);
    assert!(matches!(
        con.write(b"x"),
        Err(ConsoleFrontError::Ring {
            ring: "out",
            source: ConsoleError::RingIndexOverflow { .. }
        })
    ));
    // Nothing was written into the ring or published.
    assert_eq!(idx(&s.page, OUT_PROD).load(Ordering::Acquire), 0);
}

#[test]
fn in_prod_more_than_the_ring_size_ahead() {
    let s = setup(0);
    let mut con = ConsoleFront::new(Arc::clone(&s.xen), s.page, s.port, 100_000_000).unwrap();
    idx(&s.page, IN_PROD).store(XENCONS_IN_SIZE + 1, Ordering::Release);
    let mut buf = [0u8; 4096];
    assert!(matches!(
        con.read(&mut buf),
        Err(ConsoleFrontError::Ring {
            ring: "in",
            source: ConsoleError::RingIndexOverflow { used: 1025, .. }
        })
    ));
    assert_eq!(idx(&s.page, IN_CONS).load(Ordering::Acquire), 0);
    // Exactly the ring size is a full ring, and reads all of it.
    idx(&s.page, IN_PROD).store(XENCONS_IN_SIZE, Ordering::Release);
    assert_eq!(con.read(&mut buf).unwrap(), 1024);
}

#[test]
fn backend_that_never_consumes_output() {
    let s = setup(0);
    let mut con = ConsoleFront::new(Arc::clone(&s.xen), s.page, s.port, 50_000_000).unwrap();
    let t0 = std::time::Instant::now();
    assert_eq!(
        con.write_all(&[b'x'; 3000]),
        Err(ConsoleFrontError::Timeout {
            timeout_ns: 50_000_000,
            written: 2048
        })
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    // A full ring: nothing more fits, and that is not an error.
    assert_eq!(con.write(b"y").unwrap(), 0);
}

#[test]
fn event_flood_without_input() {
    let s = setup(0);
    let mut con = ConsoleFront::new(Arc::clone(&s.xen), s.page, s.port, 50_000_000).unwrap();
    for _ in 0..1000 {
        s.back.notify(s.local).unwrap();
    }
    let mut buf = [0u8; 16];
    assert_eq!(con.read_wait(&mut buf, 50_000_000).unwrap(), 0);
}

#[test]
fn page_too_small_or_misaligned() {
    let s = setup(0);
    let pages = s.xen.alloc_pages(1).unwrap();
    // SAFETY: a sub-range of guest memory of `s.xen`, alive for the test.
    let small =
        unsafe { RawRingMemory::new(std::ptr::NonNull::new(pages.as_ptr()).unwrap(), 3000) };
    assert!(matches!(
        ConsoleFront::new(Arc::clone(&s.xen), small, s.port, 1),
        Err(ConsoleFrontError::PageTooSmall { len: 3000, .. })
    ));
    // SAFETY: as above, one byte in.
    let odd =
        unsafe { RawRingMemory::new(std::ptr::NonNull::new(pages.as_ptr().add(1)).unwrap(), 4095) };
    assert!(matches!(
        ConsoleFront::new(Arc::clone(&s.xen), odd, s.port, 1),
        Err(ConsoleFrontError::PageMisaligned { .. })
    ));
    assert!(matches!(
        blanket_xen::xenbus::XenBus::new(Arc::clone(&s.xen), odd, s.port, 1),
        Err(blanket_xen::xenbus::XenBusError::PageMisaligned { .. })
    ));
}
