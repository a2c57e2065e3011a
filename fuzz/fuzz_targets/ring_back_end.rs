//! A back end consuming a ring page full of hostile bytes: the page comes from the input, and the rest of the
//! input rewrites the shared indices between the back end's steps, as a hostile front end racing it would.
//! The back end must never panic, never hold more requests in flight than the ring has slots, and stop on
//! a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xen_abi::blkif::Blkif;
use xen_abi::netif::NetifTx;
use xen_abi::ring::{BackRing, RingMemory, RingPages, RingProtocol};

fn poke(pages: &RingPages, offset: usize, value: u32) {
    let mem: &RingPages = pages;
    // SAFETY: `offset` is one of the four header indices, inside the page; accessed atomically like the ring does.
    unsafe { std::sync::atomic::AtomicU32::from_ptr(mem.as_ptr().add(offset).cast()) }
        .store(value, std::sync::atomic::Ordering::Relaxed);
}

fn serve<P: RingProtocol>(pages: &RingPages, script: &[u8]) {
    let start = u32::from_le_bytes([script[0], script[1], script[2], script[3]]);
    let mut back = BackRing::<_, P>::attach(pages, start).expect("a page is big enough");
    let size = back.size();
    for step in script[4..].chunks_exact(5) {
        let [what, a, b, c, d] = <[u8; 5]>::try_from(step).expect("5-byte steps");
        let value = u32::from_le_bytes([a, b, c, d]);
        let result = match what % 6 {
            0 => {
                poke(pages, 0, value);
                Ok(())
            }
            1 => {
                poke(pages, 4 * usize::from(a % 4), value);
                Ok(())
            }
            2 => (0..u32::from(a)).try_for_each(|_| back.pop_request().map(drop)),
            3 => {
                for _ in 0..a {
                    let rsp = zerocopy::FromZeros::new_zeroed();
                    if back.put_response(&rsp).is_err() {
                        break;
                    }
                }
                let _ = back.push_responses_and_check_notify();
                Ok(())
            }
            4 => back.final_check_for_requests().map(drop),
            _ => back.unconsumed_requests().map(|n| assert!(n <= size)),
        };
        assert!(
            back.req_cons().wrapping_sub(back.rsp_prod_pvt()) <= size,
            "more in flight than the ring holds"
        );
        if result.is_err() {
            // A real back end stops serving a ring whose front end broke the protocol.
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // data[0]: protocol; data[1]: steps in the script; then the script (4-byte start index and 5-byte steps);
    // then the page contents (the rest of the page stays zero).
    let [proto, steps, rest @ ..] = data else {
        return;
    };
    let script_len = 4 + 5 * usize::from(*steps);
    if rest.len() < script_len {
        return;
    }
    let (script, page) = rest.split_at(script_len);
    let pages = RingPages::new(0);
    {
        let mem: &RingPages = &pages;
        for (i, byte) in page.iter().take(4096).enumerate() {
            // SAFETY: `i` < 4096, inside the page we own.
            unsafe { mem.as_ptr().add(i).write_volatile(*byte) };
        }
    }
    if proto & 1 == 0 {
        serve::<Blkif>(&pages, script);
    } else {
        serve::<NetifTx>(&pages, script);
    }
});
