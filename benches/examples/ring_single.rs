//! Runs the single-thread ring loop of one side, for instruction counting with
//! `valgrind --tool=callgrind target/release/examples/ring_single {c|rust} [rounds]`.

use blanket_conformance::peers::{blkif, rust_single_thread_run};
use blanket_conformance::ring_c::c_blkif_single_thread_run;
use xen_abi::ring::RingPages;

fn main() {
    let mut args = std::env::args().skip(1);
    let side = args.next().unwrap_or_else(|| "rust".into());
    let rounds: u64 = args.next().map_or(10_000, |r| r.parse().expect("rounds"));
    let pages = RingPages::new(0);
    let bad = match side.as_str() {
        "c" => c_blkif_single_thread_run(&&pages, rounds, 16),
        "rust" => rust_single_thread_run::<blkif, _>(&pages, rounds, 16).expect("ring"),
        other => panic!("unknown side {other}: use c or rust"),
    };
    assert_eq!(bad, 0);
}
