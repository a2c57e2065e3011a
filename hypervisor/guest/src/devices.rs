//! The guest's devices: blanket-xen's platform traits over the real hypercalls, and the workloads that use
//! blanket-xen's front-ends unchanged (xenbus, the console ring, blkfront, netfront).
//!
//! - `EventChannels`: `EVTCHNOP_alloc_unbound`, `EVTCHNOP_send`, `EVTCHNOP_close`;
//! - `GrantAccess`: blanket-xen's `GrantTableV1` over the frames `GNTTABOP_setup_table` returns (mapped at
//!   virtual = physical, so the frames are the table's addresses);
//! - `Translate`: the P2M is the identity, so a page's frame is its address / 4096 (checked against
//!   `nr_pages`);
//! - `WaitEvent`: test-and-clear the port's pending bit, else `SCHEDOP_poll` on it until the deadline;
//!   `now_ns` is Xen system time from `vcpu_time_info`.
//!
//! Workloads: `xs-test`, `console-ring[=MS]`, `disk-write=SEED`, `disk-verify=SEED`, `net-echo[=N]`,
//! `net-ping=N`, `disk-bench=N` (N passes of reads over the disk, one request at a time), `disk-load=N` (the
//! same with every ring slot kept busy), `disk-reboot=SEED` (verify the disk if a previous boot wrote SEED's
//! pattern, else write it and shut down with reason reboot). Their results go to the console ring (`console_io` if the ring is not served).

use core::fmt::Write;
use core::ptr::NonNull;

use blanket_xen::blk::{BlkConfig, BlkFront, RequestId};
use blanket_xen::console::ConsoleFront;
use blanket_xen::net::{NetConfig, NetFront};
use blanket_xen::platform::{
    EventChannels, Gfn, GrantAccess, GrantTableV1, PlatformError, Translate, WaitEvent, Wake,
};
use blanket_xen::xenbus::XenBus;
use xen_abi::DomId;
use xen_abi::event_channel::{self as ev, EvtchnPort};
use xen_abi::grant_table::{self as gt, GrantRef};
use xen_abi::hypercall as hc;
use xen_abi::ring::RawRingMemory;
use xen_abi::sched::{self, SchedPoll, ShutdownReason};

use crate::platform::{Platform, hypercall};

const PAGE: usize = 4096;
const DOMID_SELF: DomId = 0x7ff0;
/// Grant-table frames asked for (the hypervisor's maximum).
const GRANT_FRAMES: usize = 4;
/// Every wait of the drivers gives up after this long.
const TIMEOUT_NS: u64 = 10_000_000_000;

#[repr(C, align(4096))]
struct Pages<const N: usize>([[u8; PAGE]; N]);

/// Pages for the rings and buffers of the front-ends (bss: zero, in the guest's own memory).
static mut BLK_RING: Pages<1> = Pages([[0; PAGE]; 1]);
static mut BLK_POOL: Pages<32> = Pages([[0; PAGE]; 32]);
static mut NET_TX: Pages<1> = Pages([[0; PAGE]; 1]);
static mut NET_RX: Pages<1> = Pages([[0; PAGE]; 1]);
static mut NET_POOL: Pages<32> = Pages([[0; PAGE]; 32]);
static mut BUF: Pages<16> = Pages([[0; PAGE]; 16]);

fn pages<const N: usize>(p: *mut Pages<N>) -> RawRingMemory {
    // SAFETY: a static of whole pages, used only by one front-end (each workload takes each once), which
    // accesses it through volatile and atomic operations; it lives for the whole run.
    unsafe { RawRingMemory::new(NonNull::new_unchecked(p.cast::<u8>()), N * PAGE) }
}

/// The platform of blanket-xen's front-ends in this guest.
pub struct Pv<'a> {
    p: &'a Platform,
    gnttab: GrantTableV1<RawRingMemory>,
    nr_pages: u64,
}

fn err(op: &'static str, e: i64) -> PlatformError {
    PlatformError::Hypercall {
        op,
        errno: e as i32,
    }
}

impl<'a> Pv<'a> {
    /// Sets up the grant table (`GNTTABOP_setup_table`, contiguous frames) and the platform.
    pub fn new(p: &'a Platform) -> Result<Self, PlatformError> {
        let mut frames = [0u64; GRANT_FRAMES];
        let mut op =
            gt::GnttabSetupTable::new(DOMID_SELF, GRANT_FRAMES as u32, frames.as_mut_ptr() as u64);
        // SAFETY: GNTTABOP_setup_table with one struct gnttab_setup_table whose frame_list has room.
        let r = unsafe {
            hypercall(
                hc::__HYPERVISOR_grant_table_op,
                u64::from(gt::GNTTABOP_setup_table),
                &raw mut op as u64,
                1,
                0,
                0,
            )
        };
        if r != 0 || op.status != 0 {
            return Err(err(
                "GNTTABOP_setup_table",
                if r != 0 { r } else { op.status.into() },
            ));
        }
        let contiguous = frames.windows(2).all(|w| w[1] == w[0] + 1);
        let n = if contiguous { GRANT_FRAMES } else { 1 };
        let base = frames[0] as usize * PAGE;
        // SAFETY: the frames are this guest's own memory, mapped read-write at virtual = physical, shared
        // with the hypervisor, and used only as the grant table from now on.
        let mem = unsafe { RawRingMemory::new(NonNull::new_unchecked(base as *mut u8), n * PAGE) };
        Ok(Self {
            p,
            gnttab: GrantTableV1::new(mem)?,
            nr_pages: p.start_info.nr_pages,
        })
    }

    fn evtchn<T>(&self, op: &'static str, cmd: u32, arg: &mut T) -> Result<(), PlatformError> {
        match self.p.evtchn_op(cmd, arg) {
            0 => Ok(()),
            e => Err(err(op, e)),
        }
    }
}

impl EventChannels for Pv<'_> {
    fn alloc_unbound(&self, remote: DomId) -> Result<EvtchnPort, PlatformError> {
        let mut a = ev::EvtchnAllocUnbound {
            dom: DOMID_SELF,
            remote_dom: remote,
            port: 0,
        };
        self.evtchn("EVTCHNOP_alloc_unbound", ev::EVTCHNOP_alloc_unbound, &mut a)?;
        Ok(a.port)
    }
    fn notify(&self, port: EvtchnPort) -> Result<(), PlatformError> {
        self.evtchn(
            "EVTCHNOP_send",
            ev::EVTCHNOP_send,
            &mut ev::EvtchnSend { port },
        )
    }
    fn close(&self, port: EvtchnPort) -> Result<(), PlatformError> {
        self.evtchn(
            "EVTCHNOP_close",
            ev::EVTCHNOP_close,
            &mut ev::EvtchnClose { port },
        )
    }
}

impl GrantAccess for Pv<'_> {
    fn grant_access(&self, domid: DomId, frame: Gfn, ro: bool) -> Result<GrantRef, PlatformError> {
        self.gnttab.grant_access(domid, frame, ro)
    }
    fn end_access(&self, gref: GrantRef) -> Result<(), PlatformError> {
        self.gnttab.end_access(gref)
    }
}

impl Translate for Pv<'_> {
    fn frame_of(&self, addr: usize) -> Result<Gfn, PlatformError> {
        let frame = (addr / PAGE) as u64;
        if !addr.is_multiple_of(PAGE) || frame == 0 || frame >= self.nr_pages {
            return Err(PlatformError::NotTranslatable { addr });
        }
        Ok(frame)
    }
}

impl WaitEvent for Pv<'_> {
    fn wait(&self, port: EvtchnPort, timeout_ns: u64) -> Result<Wake, PlatformError> {
        let events = self.p.events();
        if events.clear_pending(port).unwrap_or(false) {
            return Ok(Wake::Event);
        }
        let deadline = self.now_ns().saturating_add(timeout_ns.max(1));
        let ports = [port];
        let arg = SchedPoll::new(ports.as_ptr() as u64, 1, deadline);
        // SAFETY: SCHEDOP_poll with a struct sched_poll naming one port of a live array.
        let r = unsafe {
            hypercall(
                hc::__HYPERVISOR_sched_op,
                u64::from(sched::SCHEDOP_poll),
                &raw const arg as u64,
                0,
                0,
                0,
            )
        };
        if r < 0 {
            return Err(err("SCHEDOP_poll", r));
        }
        if events.clear_pending(port).unwrap_or(false) {
            Ok(Wake::Event)
        } else {
            Ok(Wake::TimedOut)
        }
    }
    fn now_ns(&self) -> u64 {
        self.p.time_ns()
    }
}

/// Output to the console ring, or to `console_io` once a ring write made no progress for 2 s (nobody serves
/// the ring) or the ring broke.
struct Out<'a, 'p> {
    p: &'p Platform,
    cons: Option<ConsoleFront<&'a Pv<'p>, RawRingMemory>>,
    buf: [u8; 256],
    len: usize,
}

impl Out<'_, '_> {
    fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        let line = &self.buf[..self.len];
        // The console ring; console_io if the ring is broken or not served (a write made no progress).
        let ring = match &mut self.cons {
            Some(c) => c.write_all(line).is_ok(),
            None => false,
        };
        if !ring {
            self.cons = None;
            self.p.console_write(line);
        }
        self.len = 0;
    }
}

impl Write for Out<'_, '_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
            if b == b'\n' {
                self.flush();
            }
        }
        Ok(())
    }
}

macro_rules! say {
    ($o:expr, $($arg:tt)*) => {{
        let _ = writeln!($o, $($arg)*);
        $o.flush();
    }};
}

/// The device workloads' stack: the drivers keep their buffers inline (xenbus alone has a 4 KiB payload
/// and a queue of watch events), more than the 64 KiB boot stack should carry.
static mut DEV_STACK: Pages<256> = Pages([[0; PAGE]; 256]);

/// What `run` passes to `run_on_stack`.
static mut ARGS: Option<(&'static Platform, &'static str, Option<&'static str>)> = None;

/// Runs device workload `name` on its own 1 MiB stack and powers off (or crashes, when a check fails).
pub fn run(p: &Platform, name: &str, arg: Option<&str>) -> ! {
    // SAFETY: the platform and the command line live for the whole run (guest_main never returns), and
    // this guest is single-threaded: the statics are written once here and read once in run_on_stack.
    unsafe {
        ARGS = Some((
            &*(p as *const Platform),
            &*(name as *const str),
            arg.map(|a| &*(a as *const str)),
        ));
        let top = (&raw mut DEV_STACK as usize) + size_of::<Pages<256>>();
        core::arch::asm!(
            "mov rsp, {top}",
            "call {f}",
            "ud2",
            top = in(reg) top,
            f = sym run_on_stack,
            options(noreturn)
        )
    }
}

extern "C" fn run_on_stack() -> ! {
    // SAFETY: written by `run` just before the stack switch.
    let Some((p, name, arg)) = (unsafe { ARGS }) else {
        loop {
            core::hint::spin_loop()
        }
    };
    run_workload(p, name, arg)
}

fn run_workload(p: &Platform, name: &str, arg: Option<&str>) -> ! {
    let pv = match Pv::new(p) {
        Ok(v) => v,
        Err(e) => {
            let mut c = crate::Console::new(p);
            let _ = writeln!(c, "{name}: grant table setup failed: {e}");
            drop(c);
            p.shutdown(ShutdownReason::Crash)
        }
    };
    let si = p.start_info;
    let cons_page = si.console.domu().mfn as usize * PAGE;
    // SAFETY: the console page the builder gave (identity-mapped, shared with the back-end).
    let cons_mem =
        unsafe { RawRingMemory::new(NonNull::new_unchecked(cons_page as *mut u8), PAGE) };
    let cons = ConsoleFront::new(&pv, cons_mem, si.console.domu().evtchn, 2_000_000_000).ok();
    let mut out = Out {
        p,
        cons,
        buf: [0; 256],
        len: 0,
    };
    let store_page = si.store_mfn as usize * PAGE;
    // SAFETY: the XenStore page the builder gave (identity-mapped, shared with xenstored).
    let store_mem =
        unsafe { RawRingMemory::new(NonNull::new_unchecked(store_page as *mut u8), PAGE) };
    let mut xb = match XenBus::new(&pv, store_mem, si.store_evtchn, TIMEOUT_NS) {
        Ok(x) => x,
        Err(e) => {
            say!(out, "{name}: xenbus: {e}");
            p.shutdown(ShutdownReason::Crash)
        }
    };
    let mut reboot = false;
    let ok = match name {
        "xs-test" => xs_test(&mut out, &mut xb),
        "console-ring" => {
            say!(out, "console-ring: hello through the PV console ring");
            // `console-ring=MS`: stay MS milliseconds longer (for a console client to read the line).
            if let Some(ms) = arg.and_then(|a| a.parse::<u64>().ok()) {
                let until = pv.now_ns().saturating_add(ms.saturating_mul(1_000_000));
                let port = si.console.domu().evtchn;
                // Bounded by the deadline.
                while pv.now_ns() < until {
                    let _ = pv.wait(port, until.saturating_sub(pv.now_ns()));
                }
            }
            true
        }
        "disk-write" | "disk-verify" | "disk-bench" | "disk-load" | "disk-reboot" => {
            let seed: u64 = arg.and_then(|a| a.parse().ok()).unwrap_or(1);
            disk(&mut out, &pv, &mut xb, name, seed, &mut reboot)
        }
        "net-echo" => net(
            &mut out,
            &pv,
            &mut xb,
            false,
            arg.and_then(|a| a.parse().ok()),
        ),
        "net-ping" => net(
            &mut out,
            &pv,
            &mut xb,
            true,
            arg.and_then(|a| a.parse().ok()).or(Some(10)),
        ),
        _ => false,
    };
    p.shutdown(match (ok, reboot) {
        (false, _) => ShutdownReason::Crash,
        (true, true) => ShutdownReason::Reboot,
        (true, false) => ShutdownReason::Poweroff,
    })
}

type Xb<'a, 'p> = XenBus<&'a Pv<'p>, RawRingMemory>;

fn xs_test(out: &mut Out, xb: &mut Xb) -> bool {
    // A guest learns its domain id from its home's `domid` (relative paths are under the home).
    let domid = match xb.read_u64(0, b"domid") {
        Ok(Some(d)) => d as DomId,
        other => {
            say!(out, "xs-test: reading domid: {other:?}");
            return false;
        }
    };
    let mut home = [0u8; 64];
    let n = match xb.get_domain_path(domid, &mut home) {
        Ok(n) => n,
        Err(e) => {
            say!(out, "xs-test: get_domain_path: {e}");
            return false;
        }
    };
    let home = core::str::from_utf8(&home[..n]).unwrap_or("?");
    let mut name = [0u8; 64];
    let nlen = xb.read(0, b"name", &mut name).unwrap_or(0);
    let w = xb.write(0, b"data/greeting", b"hello from the guest");
    let mut back = [0u8; 64];
    let blen = xb.read(0, b"data/greeting", &mut back).unwrap_or(0);
    // Another domain's home is not ours to write.
    let denied = xb.write(0, b"/local/domain/0/intrusion", b"x").is_err();
    say!(
        out,
        "xs-test: home {home}, name '{}', write {:?}, read back '{}', write outside home refused: {denied}",
        core::str::from_utf8(&name[..nlen]).unwrap_or("?"),
        w.is_ok(),
        core::str::from_utf8(&back[..blen]).unwrap_or("?")
    );
    w.is_ok() && &back[..blen] == b"hello from the guest" && denied
}

/// The first device under `device/<class>`: its node path.
fn first_device<'o>(xb: &mut Xb, class: &[u8], out: &'o mut [u8; 64]) -> Option<&'o [u8]> {
    let mut dir = [0u8; 256];
    let mut prefix = [0u8; 32];
    let pl = {
        let mut w = Cursor(&mut prefix, 0);
        let _ = write!(w, "device/{}", core::str::from_utf8(class).unwrap_or(""));
        w.1
    };
    let first = {
        let mut entries = xb.directory(0, &prefix[..pl], &mut dir).ok()?;
        let e = entries.next()?;
        let mut id = [0u8; 16];
        let n = e.len().min(16);
        id[..n].copy_from_slice(&e[..n]);
        (id, n)
    };
    let mut w = Cursor(out, 0);
    let _ = write!(
        w,
        "{}/{}",
        core::str::from_utf8(&prefix[..pl]).unwrap_or(""),
        core::str::from_utf8(&first.0[..first.1]).unwrap_or("")
    );
    let len = w.1;
    Some(&out[..len])
}

struct Cursor<'a, const N: usize>(&'a mut [u8; N], usize);

impl<const N: usize> Write for Cursor<'_, N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let b = s.as_bytes();
        let end = self.1 + b.len();
        if end > N {
            return Err(core::fmt::Error);
        }
        self.0[self.1..end].copy_from_slice(b);
        self.1 = end;
        Ok(())
    }
}

/// The pattern word at byte offset `off` of the disk (a multiple of 8).
fn pattern(seed: u64, off: u64) -> u64 {
    let mut z = seed ^ off.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn buf() -> &'static mut [u8] {
    // SAFETY: the one scratch buffer, used by one workload at a time (this guest is single-threaded and the
    // upcall handler does not touch it).
    unsafe { &mut (*(&raw mut BUF)).0.as_flattened_mut()[..] }
}

fn disk<'a, 'p>(
    out: &mut Out,
    pv: &'a Pv<'p>,
    xb: &mut Xb<'a, 'p>,
    name: &str,
    seed: u64,
    reboot: &mut bool,
) -> bool {
    let mut node = [0u8; 64];
    let Some(node) = first_device(xb, b"vbd", &mut node) else {
        say!(out, "{name}: no vbd in device/vbd");
        return false;
    };
    let config = BlkConfig {
        pages_per_request: 8,
        timeout_ns: TIMEOUT_NS,
        ..BlkConfig::default()
    };
    let mut blk = match BlkFront::connect(
        pv,
        xb,
        node,
        pages(&raw mut BLK_RING),
        pages(&raw mut BLK_POOL),
        config,
    ) {
        Ok(b) => b,
        Err(e) => {
            say!(out, "{name}: blkfront connect: {e}");
            return false;
        }
    };
    let sectors = blk.info().sectors;
    let chunk = blk.max_request_bytes().min(buf().len()) & !511;
    let bytes = sectors * 512;
    say!(
        out,
        "{name}: vbd {} connected: {sectors} sectors, {} slots, {chunk} bytes a request",
        core::str::from_utf8(node).unwrap_or("?"),
        blk.nr_slots()
    );
    // `disk-reboot`: verify the data a previous boot wrote, or write it and reboot.
    let mut name = name;
    if name == "disk-reboot" {
        let b = &mut buf()[..512];
        if let Err(e) = blk.read(0, b) {
            say!(out, "disk-reboot: reading sector 0: {e}");
            return false;
        }
        if u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])) == pattern(seed, 0) {
            say!(
                out,
                "disk-reboot: the disk holds seed {seed}'s data from a previous boot: verifying it"
            );
            name = "disk-verify";
        } else {
            say!(
                out,
                "disk-reboot: the disk does not hold seed {seed}'s data: writing it, then rebooting"
            );
            name = "disk-write";
            *reboot = true;
        }
    }
    let t0 = pv.now_ns();
    let mut off = 0u64;
    let mut ios = 0u64;
    let mut ok = true;
    if name == "disk-load" {
        return disk_load(out, pv, blk, xb, bytes, chunk, seed.max(1));
    }
    let rounds = if name == "disk-bench" { seed.max(1) } else { 1 };
    for _ in 0..rounds {
        off = 0;
        while off < bytes {
            let n = (chunk as u64).min(bytes - off) as usize;
            let b = &mut buf()[..n];
            let r = if name == "disk-write" {
                for (i, w) in b.chunks_exact_mut(8).enumerate() {
                    w.copy_from_slice(&pattern(seed, off + 8 * i as u64).to_le_bytes());
                }
                blk.write(off / 512, b)
            } else {
                blk.read(off / 512, b)
            };
            if let Err(e) = r {
                say!(out, "{name}: I/O at sector {} failed: {e}", off / 512);
                return false;
            }
            if name == "disk-verify" {
                for (i, w) in b.chunks_exact(8).enumerate() {
                    let want = pattern(seed, off + 8 * i as u64);
                    let got = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
                    if got != want {
                        say!(
                            out,
                            "disk-verify: MISMATCH at byte {}: {got:#018x}, expected {want:#018x}",
                            off + 8 * i as u64
                        );
                        ok = false;
                        break;
                    }
                }
                if !ok {
                    break;
                }
            }
            off += n as u64;
            ios += 1;
        }
    }
    if name == "disk-write"
        && let Err(e) = blk.flush()
    {
        say!(out, "disk-write: flush failed: {e}");
        return false;
    }
    let ns = pv.now_ns().saturating_sub(t0).max(1);
    match name {
        "disk-write" => say!(
            out,
            "disk-write: {} bytes written with seed {seed} and flushed in {} us ({ios} requests)",
            off,
            ns / 1000
        ),
        "disk-verify" if ok => say!(
            out,
            "disk-verify: OK, {} bytes match seed {seed} ({} us, {ios} requests)",
            off,
            ns / 1000
        ),
        "disk-bench" => say!(
            out,
            "disk-bench: {ios} reads of {chunk} bytes in {} us: {} IOPS ({ns} ns)",
            ns / 1000,
            ios * 1_000_000_000 / ns
        ),
        _ => {}
    }
    let _ = blk.close(xb);
    ok
}

/// `disk-load=ROUNDS`: `rounds` passes of `chunk`-byte reads over the disk with every slot of the ring
/// busy (a new read is submitted as soon as the oldest completes), so the back-end sees a loaded ring.
fn disk_load<'a, 'p>(
    out: &mut Out,
    pv: &'a Pv<'p>,
    mut blk: BlkFront<&'a Pv<'p>, RawRingMemory, RawRingMemory>,
    xb: &mut Xb<'a, 'p>,
    bytes: u64,
    chunk: usize,
    rounds: u64,
) -> bool {
    const MAX_DEPTH: usize = 32;
    let depth = blk.nr_slots().clamp(1, MAX_DEPTH);
    let per_round = bytes.div_ceil(chunk as u64);
    let total = per_round * rounds;
    let mut ids = [RequestId(0); MAX_DEPTH];
    let (mut head, mut tail) = (0u64, 0u64);
    let t0 = pv.now_ns();
    while tail < total {
        while head < total && head - tail < depth as u64 {
            let off = (head % per_round) * chunk as u64;
            let n = (chunk as u64).min(bytes - off) as usize;
            match blk.submit_read(off / 512, n) {
                Ok(id) => ids[(head % MAX_DEPTH as u64) as usize] = id,
                Err(e) => {
                    say!(out, "disk-load: submit at sector {}: {e}", off / 512);
                    return false;
                }
            }
            head += 1;
        }
        let id = ids[(tail % MAX_DEPTH as u64) as usize];
        let r = blk
            .wait_for(id)
            .and_then(|()| blk.take_completion(id, buf()));
        match r {
            Ok(c) if c.status == xen_abi::blkif::BlkifStatus::Okay => {}
            Ok(c) => {
                say!(out, "disk-load: read {tail} ended with {:?}", c.status);
                return false;
            }
            Err(e) => {
                say!(out, "disk-load: read {tail}: {e}");
                return false;
            }
        }
        tail += 1;
    }
    let ns = pv.now_ns().saturating_sub(t0).max(1);
    say!(
        out,
        "disk-load: {total} reads of {chunk} bytes at depth {depth} in {} us: {} IOPS ({ns} ns)",
        ns / 1000,
        total * 1_000_000_000 / ns
    );
    let _ = blk.close(xb);
    true
}

const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const PING: u8 = 1;
const PONG: u8 = 2;

fn net<'a, 'p>(
    out: &mut Out,
    pv: &'a Pv<'p>,
    xb: &mut Xb<'a, 'p>,
    ping: bool,
    count: Option<u64>,
) -> bool {
    let what = if ping { "net-ping" } else { "net-echo" };
    let mut node = [0u8; 64];
    let Some(node) = first_device(xb, b"vif", &mut node) else {
        say!(out, "{what}: no vif in device/vif");
        return false;
    };
    let config = NetConfig {
        rx_buffers: 16,
        tx_buffers: 16,
        timeout_ns: if ping { 2_000_000_000 } else { TIMEOUT_NS },
    };
    let mut net = match NetFront::connect(
        pv,
        xb,
        node,
        pages(&raw mut NET_TX),
        pages(&raw mut NET_RX),
        pages(&raw mut NET_POOL),
        config,
    ) {
        Ok(n) => n,
        Err(e) => {
            say!(out, "{what}: netfront connect: {e}");
            return false;
        }
    };
    let mac = net.info().mac;
    say!(
        out,
        "{what}: vif {} connected, mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        core::str::from_utf8(node).unwrap_or("?"),
        mac[0],
        mac[1],
        mac[2],
        mac[3],
        mac[4],
        mac[5]
    );
    let mut frame = [0u8; 128];
    let mut rx = [0u8; 2048];
    let ok = if ping {
        let n = count.unwrap_or(10);
        let mut peer = [0xffu8; 6];
        let mut good = 0u64;
        let mut t0 = pv.now_ns();
        // The neighbour may still be connecting: the first ping is retried for a while.
        let mut tries = 0;
        let mut seq = 0u64;
        while seq < n {
            frame[..6].copy_from_slice(&peer);
            frame[6..12].copy_from_slice(&mac);
            frame[12..14].copy_from_slice(&ETHERTYPE);
            frame[14] = PING;
            frame[15..23].copy_from_slice(&seq.to_le_bytes());
            for (i, b) in frame[23..].iter_mut().enumerate() {
                *b = (seq as u8).wrapping_add(i as u8);
            }
            if let Err(e) = net.send_wait(&frame) {
                say!(out, "net-ping: send {seq}: {e}");
                return false;
            }
            let mut answered = false;
            while let Ok(Some(len)) = net.recv_wait(&mut rx) {
                let r = &rx[..len];
                if len >= 23 && r[12..14] == ETHERTYPE && r[14] == PONG && r[..6] == mac {
                    let rseq = u64::from_le_bytes(r[15..23].try_into().unwrap_or([0; 8]));
                    if rseq == seq && len == frame.len() && r[23..] == frame[23..] {
                        peer.copy_from_slice(&r[6..12]);
                        answered = true;
                        break;
                    }
                }
            }
            if answered {
                if good == 0 {
                    // Round trips are timed from the first answer (the neighbour may have been late).
                    t0 = pv.now_ns();
                }
                good += 1;
                seq += 1;
            } else if seq == 0 && tries < 20 {
                tries += 1;
            } else {
                say!(out, "net-ping: no pong for ping {seq}");
                break;
            }
        }
        let ns = pv.now_ns().saturating_sub(t0).max(1);
        say!(
            out,
            "net-ping: {good}/{n} pongs checked, {} us per round trip ({ns} ns for {} round trips)",
            ns / 1000 / good.saturating_sub(1).max(1),
            good.saturating_sub(1)
        );
        good == n
    } else {
        // With a count N: until the ping with sequence number N - 1 is echoed (a ping the neighbour
        // retried while this guest was connecting is echoed again, so frames are not counted).
        let mut echoed = 0u64;
        let mut last = None;
        loop {
            if let (Some(c), Some(l)) = (count, last)
                && l + 1 >= c
            {
                break;
            }
            match net.recv_wait(&mut rx) {
                Ok(Some(len)) if len >= 23 && rx[12..14] == ETHERTYPE && rx[14] == PING => {
                    last = Some(u64::from_le_bytes(rx[15..23].try_into().unwrap_or([0; 8])));
                    let mut src = [0u8; 6];
                    src.copy_from_slice(&rx[6..12]);
                    rx[..6].copy_from_slice(&src);
                    rx[6..12].copy_from_slice(&mac);
                    rx[14] = PONG;
                    if net.send_wait(&rx[..len]).is_ok() {
                        echoed += 1;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {}
            }
        }
        // Let netback take the last frames before the rings go away.
        let port = net.rings_and_port().2;
        let until = pv.now_ns() + 1_000_000_000;
        while net.tx_in_flight() > 0 && pv.now_ns() < until {
            let _ = net.reap_tx();
            let _ = pv.wait(port, 10_000_000);
        }
        say!(
            out,
            "net-echo: {echoed} frames echoed, the last with sequence number {last:?}"
        );
        count.is_none_or(|c| last.is_some_and(|l| l + 1 >= c))
    };
    let _ = net.close(xb);
    ok
}
