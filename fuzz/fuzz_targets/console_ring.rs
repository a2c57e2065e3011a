//! The PV console back end (`console::ConsoleBackend`) on a `xencons_interface` page a guest
//! writes: output and input streams through the rings, the guest's indices (`out_prod`,
//! `in_cons`) set to anything, the sink taking as much as the input says (or nothing), time
//! moving for the rate limit, and both overflow policies over a small buffer.
//!
//! Invariants: no panic; a call fails only for a broken ring (indices more than the ring apart),
//! and then the console is closed and says so; while the guest keeps to the protocol, the sink gets
//! the guest's output in order (all of it with `Overflow::Keep`; with `Overflow::Discard`, the
//! stream less the bytes counted as discarded), the guest reads exactly the sink's input in order,
//! the back end never consumes past `out_prod` nor produces more input than the ring holds, the
//! bytes read plus discarded balance with those buffered and those the sink took, the buffer stays
//! within its limit, and one call never reads more than the byte budget of a period.
//!
//! Input: `cfg` (bit 0: `Overflow::Keep`; bit 1: a rate limit of 3 events and 3000 bytes per
//! 10 ms; bits 2-7: the buffer limit, `2 + 64 * n` bytes), then 6-byte steps
//! `[op, a, b, c, d, e]`: 0 the guest writes `a, b % 2049` bytes of output (as many as fit); 1 the
//! guest sets `out_prod = a..=d`; 2 the guest sets `in_cons = a..=d`; 3 an event; 4 `process`; 5
//! time moves by `a` ms and `b` µs; 6 the sink takes `a, b` bytes per write from now on and gets `c`
//! bytes of input; 7 the guest reads up to `a` bytes of input.
#![no_main]

use std::io;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pv_backend::console::{
    ConsoleBackend, ConsoleConfig, ConsoleError, ConsoleIndex, ConsolePage, ConsoleSink,
    EventChannel, Overflow, RateLimit,
};
use xen_abi::console::{XENCONS_IN_SIZE, XENCONS_OUT_SIZE};
use xen_abi::ring::RingPages;

struct Quiet;
impl EventChannel for Quiet {
    fn notify(&self) {}
}

/// A sink that takes `take` bytes per write and hands out queued input.
#[derive(Default)]
struct Sink {
    take: usize,
    got: Vec<u8>,
    input: Vec<u8>,
}

impl ConsoleSink for Sink {
    fn write_output(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.take);
        self.got.extend_from_slice(&data[..n]);
        Ok(n)
    }
    fn read_input(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input.drain(..n);
        Ok(n)
    }
}

/// Whether `sub` is `full` with some bytes left out.
fn is_subsequence(sub: &[u8], full: &[u8]) -> bool {
    let mut it = full.iter();
    sub.iter().all(|b| it.any(|x| x == b))
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, script)) = data.split_first() else {
        return;
    };
    let keep = cfg & 1 != 0;
    let limit = RateLimit {
        period: Duration::from_millis(10),
        events: 3,
        bytes: 3000,
    };
    let config = ConsoleConfig {
        rate_limit: (cfg & 2 != 0).then_some(limit),
        buffer_limit: 2 + 64 * usize::from(cfg >> 2),
        overflow: if keep {
            Overflow::Keep
        } else {
            Overflow::Discard
        },
    };
    let pages = RingPages::new(0);
    let guest = ConsolePage::new(&pages).expect("a page holds the interface");
    let mut now = Instant::now();
    let mut back = ConsoleBackend::new(&pages, Quiet, Sink::default(), 4, config, now)
        .expect("a valid configuration");

    // The streams as the guest wrote and read them; `honest` until the guest breaks the protocol.
    let mut out_stream: Vec<u8> = Vec::new();
    let mut in_sent: Vec<u8> = Vec::new();
    let mut in_read: Vec<u8> = Vec::new();
    let mut honest = true;
    let mut next_byte = 0u8;
    for step in script.chunks_exact(6).take(512) {
        let [op, a, b, c, d, _] = <[u8; 6]>::try_from(step).expect("6-byte steps");
        let word = u32::from_le_bytes([a, b, c, d]);
        match op % 8 {
            0 => {
                let prod = guest.load(ConsoleIndex::OutProd);
                let cons = guest.load(ConsoleIndex::OutCons);
                let free = XENCONS_OUT_SIZE.saturating_sub(prod.wrapping_sub(cons));
                let n = (u32::from(u16::from_le_bytes([a, b])) % (XENCONS_OUT_SIZE + 1)).min(free);
                let bytes: Vec<u8> = (0..n)
                    .map(|_| {
                        next_byte = next_byte.wrapping_add(1);
                        next_byte
                    })
                    .collect();
                guest.write_out(prod, &bytes);
                guest.store(ConsoleIndex::OutProd, prod.wrapping_add(n));
                out_stream.extend_from_slice(&bytes);
            }
            1 => {
                guest.store(ConsoleIndex::OutProd, word);
                honest = false;
            }
            2 => {
                guest.store(ConsoleIndex::InCons, word);
                honest = false;
            }
            3 | 4 => {
                let before = back.stats();
                let out_cons = guest.load(ConsoleIndex::OutCons);
                let out_prod = guest.load(ConsoleIndex::OutProd);
                let r = if op % 8 == 3 {
                    back.handle_event(now)
                } else {
                    back.process(now)
                };
                match r {
                    Ok(p) => {
                        assert!(!back.is_closed());
                        let s = back.stats();
                        assert_eq!(s.out_bytes - before.out_bytes, p.out as u64);
                        assert_eq!(s.in_bytes - before.in_bytes, p.input as u64);
                        assert_eq!(s.sink_bytes - before.sink_bytes, p.sink as u64);
                        if config.rate_limit.is_some() {
                            assert!(p.out as u64 <= limit.bytes, "{} bytes in one call", p.out);
                        }
                        // Never past what the guest produced.
                        let consumed = guest.load(ConsoleIndex::OutCons).wrapping_sub(out_cons);
                        assert!(
                            consumed <= out_prod.wrapping_sub(out_cons),
                            "consumed {consumed} bytes past out_prod"
                        );
                    }
                    Err(ConsoleError::RingIndex { .. }) => {
                        assert!(!honest, "an honest ring broke");
                        assert!(back.is_closed());
                    }
                    Err(ConsoleError::Closed { .. }) => assert!(back.is_closed()),
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }
            5 => now += Duration::from_millis(u64::from(a)) + Duration::from_micros(u64::from(b)),
            6 => {
                let sink = back.sink_mut();
                sink.take = usize::from(u16::from_le_bytes([a, b]));
                let bytes: Vec<u8> = (0..c).map(|i| d.wrapping_add(i)).collect();
                sink.input.extend_from_slice(&bytes);
                in_sent.extend_from_slice(&bytes);
            }
            _ => {
                let cons = guest.load(ConsoleIndex::InCons);
                let prod = guest.load(ConsoleIndex::InProd);
                let avail = prod.wrapping_sub(cons);
                if honest {
                    assert!(
                        avail <= XENCONS_IN_SIZE,
                        "in_prod {prod} is {avail} past in_cons"
                    );
                }
                let n = avail.min(XENCONS_IN_SIZE).min(u32::from(a)) as usize;
                let mut buf = vec![0u8; n];
                guest.read_in(cons, &mut buf);
                guest.store(ConsoleIndex::InCons, cons.wrapping_add(n as u32));
                in_read.extend_from_slice(&buf);
            }
        }
        assert!(
            back.pending_output() <= config.buffer_limit,
            "the buffer is over its limit"
        );
        let s = back.stats();
        assert_eq!(
            s.out_bytes,
            s.sink_bytes + s.discarded + back.pending_output() as u64,
            "bytes read do not balance"
        );
        if honest {
            assert!(s.out_bytes <= out_stream.len() as u64);
            assert!(
                in_read.len() <= in_sent.len(),
                "the guest read input never sent"
            );
        }
    }
    // The streams, once at the end (the checks are linear in their length).
    let s = back.stats();
    if honest {
        let got = &back.sink().got;
        if keep {
            assert_eq!(s.discarded, 0);
            assert_eq!(
                got[..],
                out_stream[..got.len()],
                "the sink's output is not the guest's"
            );
        } else {
            assert!(
                is_subsequence(got, &out_stream[..s.out_bytes as usize]),
                "the sink's output is not the guest's less discarded bytes"
            );
        }
        assert_eq!(
            in_read[..],
            in_sent[..in_read.len()],
            "the guest's input is not the sink's"
        );
    }
});
