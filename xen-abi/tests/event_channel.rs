//! `xen_abi::event_channel`: the 2-level bitmaps against the hostile inputs of HOSTILE-INPUT.md (shared rings:
//! "events that bring no work; event floods"), concurrently and against a model, and round trips of the
//! hypercall arguments.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use xen_abi::event_channel::*;
use zerocopy::{FromBytes, IntoBytes};

/// `evtchn_pending`, `evtchn_mask`, and one vCPU's `evtchn_pending_sel` and `evtchn_upcall_pending`.
struct Shared {
    pending: [AtomicU64; EVTCHN_2L_NR_WORDS],
    mask: [AtomicU64; EVTCHN_2L_NR_WORDS],
    sel: AtomicU64,
    upcall: AtomicU8,
}

impl Shared {
    fn new() -> Self {
        Self {
            pending: std::array::from_fn(|_| AtomicU64::new(0)),
            mask: std::array::from_fn(|_| AtomicU64::new(0)),
            sel: AtomicU64::new(0),
            upcall: AtomicU8::new(0),
        }
    }

    fn bitmaps(&self) -> TwoLevel<'_> {
        TwoLevel::new(&self.pending, &self.mask)
    }

    fn vcpu(&self) -> VcpuEvents<'_> {
        VcpuEvents {
            pending_sel: &self.sel,
            upcall_pending: &self.upcall,
        }
    }

    fn scan_all(&self) -> Vec<EvtchnPort> {
        self.bitmaps().scan(self.vcpu(), usize::MAX).collect()
    }

    fn nothing_pending(&self) -> bool {
        self.pending.iter().all(|w| w.load(SeqCst) == 0)
    }
}

const BAD: EventChannelError = EventChannelError::BadPort {
    port: 4096,
    nr_channels: 4096,
};

#[test]
fn ports_from_4096_are_rejected() {
    let s = Shared::new();
    let (b, v) = (s.bitmaps(), s.vcpu());
    for port in [4096, 4097, 1 << 17, u32::MAX] {
        let bad = EventChannelError::BadPort {
            port,
            nr_channels: EVTCHN_2L_NR_CHANNELS,
        };
        assert_eq!(b.set_pending(port), Err(bad));
        assert_eq!(b.clear_pending(port), Err(bad));
        assert_eq!(b.is_pending(port), Err(bad));
        assert_eq!(b.mask(port), Err(bad));
        assert_eq!(b.is_masked(port), Err(bad));
        assert_eq!(b.send(port, &v), Err(bad));
        assert_eq!(b.unmask(port, &v), Err(bad));
    }
    assert_eq!(b.send(4096, &v), Err(BAD));
    assert!(s.nothing_pending());
    assert_eq!((s.sel.load(SeqCst), s.upcall.load(SeqCst)), (0, 0));
    assert_eq!(b.send(4095, &v), Ok(Notify::Upcall));
    assert_eq!(s.scan_all(), vec![4095]);
}

#[test]
fn bad_port_message_names_the_port() {
    let msg = EventChannelError::BadPort {
        port: 5000,
        nr_channels: 4096,
    }
    .to_string();
    assert!(msg.contains("5000") && msg.contains("4096"), "{msg}");
}

#[test]
fn send_follows_evtchn_2l_set_pending() {
    let s = Shared::new();
    let (b, v) = (s.bitmaps(), s.vcpu());
    assert_eq!(b.send(3, &v), Ok(Notify::Upcall));
    assert_eq!(s.upcall.load(SeqCst), 1);
    assert_eq!(s.sel.load(SeqCst), 1);
    assert_eq!(b.send(3, &v), Ok(Notify::AlreadyPending));
    assert_eq!(b.send(4, &v), Ok(Notify::SelectorAlreadySet));
    assert_eq!(b.send(64 * 5 + 1, &v), Ok(Notify::UpcallAlreadyPending));
    assert_eq!(s.sel.load(SeqCst), 1 | 1 << 5);
    assert_eq!(b.mask(700), Ok(true));
    assert_eq!(b.mask(700), Ok(false));
    assert_eq!(b.send(700, &v), Ok(Notify::Masked));
    assert_eq!(s.sel.load(SeqCst) & 1 << (700 / 64), 0);
    assert_eq!(s.scan_all(), vec![3, 4, 321]);
    assert_eq!((s.sel.load(SeqCst), s.upcall.load(SeqCst)), (0, 0));
    assert_eq!(b.is_pending(700), Ok(true));
    assert_eq!(b.unmask(700, &v), Ok(Notify::Upcall));
    assert_eq!(b.unmask(700, &v), Ok(Notify::WasNotMasked));
    assert_eq!(s.scan_all(), vec![700]);
    assert_eq!(b.mask(9), Ok(true));
    assert_eq!(b.unmask(9, &v), Ok(Notify::NotPending));
    assert!(s.nothing_pending());
    assert!(Notify::Upcall.upcall_required() && !Notify::SelectorAlreadySet.upcall_required());
}

#[test]
fn clear_pending_and_is_pending() {
    let s = Shared::new();
    let b = s.bitmaps();
    assert_eq!(b.set_pending(100), Ok(true));
    assert_eq!(b.set_pending(100), Ok(false));
    assert_eq!(b.is_pending(100), Ok(true));
    assert_eq!(b.clear_pending(100), Ok(true));
    assert_eq!(b.clear_pending(100), Ok(false));
    assert_eq!(b.is_pending(100), Ok(false));
    // set_pending alone notifies nobody.
    assert_eq!((s.sel.load(SeqCst), s.upcall.load(SeqCst)), (0, 0));
}

// ----- events that bring no work ---------------------------------------------------------------------------

#[test]
fn events_that_bring_no_work_selector_without_pending_bits() {
    let s = Shared::new();
    s.sel.store(u64::MAX, SeqCst); // the other side set every selector bit and nothing else
    s.upcall.store(1, SeqCst);
    assert_eq!(s.scan_all(), Vec::<EvtchnPort>::new());
    assert_eq!((s.sel.load(SeqCst), s.upcall.load(SeqCst)), (0, 0));
}

#[test]
fn events_that_bring_no_work_masked_ports_stay_pending_and_unreported() {
    let s = Shared::new();
    let (b, v) = (s.bitmaps(), s.vcpu());
    for port in [1, 2, 65] {
        assert_eq!(b.mask(port), Ok(true));
        assert_eq!(b.set_pending(port), Ok(true));
    }
    s.sel.store(0b11, SeqCst);
    assert_eq!(s.scan_all(), Vec::<EvtchnPort>::new());
    assert_eq!((b.is_pending(1), b.is_pending(65)), (Ok(true), Ok(true)));
    assert_eq!(b.unmask(65, &v), Ok(Notify::Upcall));
    assert_eq!(s.scan_all(), vec![65]);
}

#[test]
fn events_that_bring_no_work_pending_cleared_before_the_scan() {
    let s = Shared::new();
    let (b, v) = (s.bitmaps(), s.vcpu());
    assert!(b.send(10, &v).unwrap().upcall_required());
    assert_eq!(b.clear_pending(10), Ok(true));
    assert_eq!(s.scan_all(), Vec::<EvtchnPort>::new());
}

// ----- event floods ----------------------------------------------------------------------------------------

#[test]
fn event_flood_of_one_port_a_million_times_is_one_event() {
    let s = Shared::new();
    let (b, v) = (s.bitmaps(), s.vcpu());
    let mut upcalls = 0;
    for _ in 0..1_000_000 {
        if b.send(77, &v).unwrap().upcall_required() {
            upcalls += 1;
        }
    }
    assert_eq!(upcalls, 1);
    assert_eq!(s.scan_all(), vec![77]);
    assert_eq!(s.scan_all(), Vec::<EvtchnPort>::new());
}

#[test]
fn event_flood_of_every_port_is_taken_in_bounded_scans() {
    let s = Shared::new();
    let (b, v) = (s.bitmaps(), s.vcpu());
    for port in 0..EVTCHN_2L_NR_CHANNELS {
        let _ = b.send(port, &v).unwrap();
    }
    let mut seen = Vec::new();
    let mut scans = 0;
    while s.upcall.load(SeqCst) != 0 {
        scans += 1;
        assert!(
            scans <= 4096 / 100 + 1,
            "scan {scans}: the flood is not draining"
        );
        let batch: Vec<_> = b.scan(v, 100).collect();
        assert!(batch.len() <= 100);
        seen.extend(batch);
    }
    assert_eq!(seen, (0..EVTCHN_2L_NR_CHANNELS).collect::<Vec<_>>());
    assert!(s.nothing_pending());
}

#[test]
fn event_flood_during_a_scan_does_not_extend_it() {
    // The other side re-sends every port as soon as it is taken: one scan still ends, having reported
    // each port at most once.
    let s = Shared::new();
    let (b, v) = (s.bitmaps(), s.vcpu());
    for port in 0..EVTCHN_2L_NR_CHANNELS {
        let _ = b.send(port, &v).unwrap();
    }
    let mut n = 0;
    let mut scan = b.scan(v, usize::MAX);
    for port in scan.by_ref() {
        n += 1;
        assert!(n <= 4096);
        let _ = b.send(port, &v).unwrap();
    }
    assert!(scan.is_complete());
    drop(scan);
    assert_eq!(n, 4096);
    assert_eq!(
        s.upcall.load(SeqCst),
        1,
        "the re-sent ports asked for another upcall"
    );
}

#[test]
fn a_scan_stopped_early_loses_nothing() {
    let s = Shared::new();
    let (b, v) = (s.bitmaps(), s.vcpu());
    for port in [1, 2, 3, 200, 4000] {
        let _ = b.send(port, &v).unwrap();
    }
    let first: Vec<_> = b.scan(v, usize::MAX).take(2).collect(); // dropped after two ports
    assert_eq!(first, vec![1, 2]);
    assert_eq!(s.upcall.load(SeqCst), 1);
    assert_eq!(s.scan_all(), vec![3, 200, 4000]);
    let none: Vec<_> = b.scan(v, 0).collect();
    assert!(none.is_empty());
}

// ----- two threads -----------------------------------------------------------------------------------------

struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// One thread sends (as the hypervisor), one scans only when the upcall flag says so (as the guest):
/// every event sent is reported after it was sent (the sender waits for it, so a lost wake-up hangs and
/// fails the test), and no port is reported that was never sent.
#[test]
fn concurrent_send_and_scan_lose_no_event_and_invent_none() {
    let s = Shared::new();
    let sent: Vec<AtomicBool> = (0..EVTCHN_2L_NR_CHANNELS)
        .map(|_| AtomicBool::new(false))
        .collect();
    let seen: Vec<AtomicU64> = (0..EVTCHN_2L_NR_CHANNELS)
        .map(|_| AtomicU64::new(0))
        .collect();
    let done = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(60);

    std::thread::scope(|scope| {
        scope.spawn(|| {
            let (b, v) = (s.bitmaps(), s.vcpu());
            while !done.load(SeqCst) {
                if s.upcall.load(SeqCst) == 0 {
                    std::hint::spin_loop();
                    continue;
                }
                for port in b.scan(v, 37) {
                    assert!(
                        sent[port as usize].load(SeqCst),
                        "port {port} reported but never sent"
                    );
                    seen[port as usize].fetch_add(1, SeqCst);
                }
            }
        });

        // Stops the scanner however the sender ends, so that a failure is reported, not a hang.
        let _stop = SetOnDrop(&done);
        let (b, v) = (s.bitmaps(), s.vcpu());
        let mut x: u32 = 12345;
        for _round in 0..2000 {
            let mut batch = Vec::new();
            for _ in 0..8 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                // Ports 0..4096, leaving every third one unused.
                let port = (x >> 8) % 4096 / 3 * 3;
                sent[port as usize].store(true, SeqCst);
                let before = seen[port as usize].load(SeqCst);
                let _ = b.send(port, &v).unwrap();
                batch.push((port, before));
            }
            for (port, before) in batch {
                while seen[port as usize].load(SeqCst) <= before {
                    assert!(
                        Instant::now() < deadline,
                        "port {port} was sent but never reported"
                    );
                    std::thread::yield_now();
                }
            }
        }
        while !s.nothing_pending() {
            assert!(
                Instant::now() < deadline,
                "events left pending without an upcall"
            );
            std::thread::yield_now();
        }
    });
    for port in 0..EVTCHN_2L_NR_CHANNELS {
        if port % 3 != 0 {
            assert_eq!(seen[port as usize].load(SeqCst), 0);
        }
    }
}

// ----- model -----------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Send(EvtchnPort),
    Mask(EvtchnPort),
    Unmask(EvtchnPort),
    Clear(EvtchnPort),
    Scan(usize),
}

fn op() -> impl Strategy<Value = Op> {
    // Few ports, in a few words, so that operations meet (the model test checks exactly these ports).
    let port = prop_oneof![0u32..8, 60u32..70, 4090u32..4096];
    prop_oneof![
        4 => port.clone().prop_map(Op::Send),
        2 => port.clone().prop_map(Op::Mask),
        2 => port.clone().prop_map(Op::Unmask),
        1 => port.prop_map(Op::Clear),
        2 => (0usize..6).prop_map(Op::Scan),
        1 => Just(Op::Scan(usize::MAX)),
    ]
}

proptest! {
    /// On one thread the bitmaps behave as two sets: a scan reports, in order, the first ports that are
    /// pending and not masked, and takes them; a send reports `AlreadyPending` or `Masked` as the sets say.
    #[test]
    fn two_level_equals_a_model_of_two_sets(ops in proptest::collection::vec(op(), 0..200)) {
        let s = Shared::new();
        let (b, v) = (s.bitmaps(), s.vcpu());
        let mut pending = BTreeSet::new();
        let mut masked = BTreeSet::new();
        for op in ops {
            match op {
                Op::Send(p) => {
                    let n = b.send(p, &v).unwrap();
                    if pending.contains(&p) {
                        prop_assert_eq!(n, Notify::AlreadyPending);
                    } else if masked.contains(&p) {
                        prop_assert_eq!(n, Notify::Masked);
                    } else {
                        prop_assert!(matches!(n, Notify::Upcall | Notify::UpcallAlreadyPending | Notify::SelectorAlreadySet));
                    }
                    pending.insert(p);
                }
                Op::Mask(p) => prop_assert_eq!(b.mask(p).unwrap(), masked.insert(p)),
                Op::Unmask(p) => {
                    let n = b.unmask(p, &v).unwrap();
                    if !masked.remove(&p) {
                        prop_assert_eq!(n, Notify::WasNotMasked);
                    } else if !pending.contains(&p) {
                        prop_assert_eq!(n, Notify::NotPending);
                    }
                }
                Op::Clear(p) => prop_assert_eq!(b.clear_pending(p).unwrap(), pending.remove(&p)),
                Op::Scan(max) => {
                    let got: Vec<_> = b.scan(v, max).collect();
                    let want: Vec<_> = pending.difference(&masked).copied().take(max).collect();
                    prop_assert_eq!(&got, &want);
                    for p in &got {
                        pending.remove(p);
                    }
                    if max == usize::MAX {
                        prop_assert_eq!(s.sel.load(SeqCst), 0);
                        prop_assert_eq!(s.upcall.load(SeqCst), 0);
                    }
                }
            }
            // Something to deliver always has an upcall on its way.
            if pending.difference(&masked).next().is_some() {
                prop_assert_eq!(s.upcall.load(SeqCst), 1);
            }
            for p in (0..8).chain(60..70).chain(4090..4096) {
                prop_assert_eq!(b.is_pending(p).unwrap(), pending.contains(&p));
                prop_assert_eq!(b.is_masked(p).unwrap(), masked.contains(&p));
            }
        }
    }
}

// ----- hypercall arguments ---------------------------------------------------------------------------------

fn kind() -> impl Strategy<Value = EvtchnStatusKind> {
    prop_oneof![
        Just(EvtchnStatusKind::Closed),
        any::<u16>().prop_map(|dom| EvtchnStatusKind::Unbound { dom }),
        (any::<u16>(), any::<u32>())
            .prop_map(|(dom, port)| EvtchnStatusKind::Interdomain { dom, port }),
        any::<u32>().prop_map(EvtchnStatusKind::Pirq),
        any::<u32>().prop_map(EvtchnStatusKind::Virq),
        Just(EvtchnStatusKind::Ipi),
    ]
}

fn bytes_round_trip<
    T: FromBytes + IntoBytes + zerocopy::Immutable + PartialEq + core::fmt::Debug,
>(
    bytes: &[u8],
) {
    let v = T::read_from_bytes(&bytes[..size_of::<T>()]).unwrap();
    assert_eq!(v.as_bytes(), &bytes[..size_of::<T>()]);
    assert_eq!(T::read_from_bytes(v.as_bytes()).unwrap(), v);
}

#[test]
fn unknown_status_is_rejected() {
    let mut st = EvtchnStatus::answer(1, 2, 0, EvtchnStatusKind::Ipi);
    st.status = 6;
    assert_eq!(
        st.kind(),
        Err(EventChannelError::UnknownStatus { status: 6 })
    );
    st.status = u32::MAX;
    assert_eq!(
        st.kind(),
        Err(EventChannelError::UnknownStatus { status: u32::MAX })
    );
}

#[test]
fn evtchn_op_with_the_wrong_cmd_is_rejected() {
    let op = EvtchnOp::new(EvtchnSend { port: 5 });
    assert_eq!(op.cmd, EVTCHNOP_send);
    assert_eq!(op.args::<EvtchnSend>(), Ok(EvtchnSend { port: 5 }));
    assert_eq!(
        op.args::<EvtchnClose>(),
        Err(EventChannelError::WrongCmd {
            cmd: EVTCHNOP_send,
            expected: EVTCHNOP_close
        })
    );
    assert_eq!(&op.u[4..], &[0; 20]);
}

#[test]
fn answers_carry_no_stale_bytes() {
    let a = EvtchnStatus::answer(
        u16::MAX,
        u32::MAX,
        u32::MAX,
        EvtchnStatusKind::Unbound { dom: u16::MAX },
    );
    assert_eq!(&a.as_bytes()[2..4], &[0, 0]);
    assert_eq!(&a.as_bytes()[18..], &[0; 6]);
    let i = EvtchnStatus::answer(
        0,
        0,
        0,
        EvtchnStatusKind::Interdomain {
            dom: u16::MAX,
            port: u32::MAX,
        },
    );
    assert_eq!(&i.as_bytes()[18..20], &[0, 0]);
    assert_eq!(
        &EvtchnBindInterdomain::new(u16::MAX, u32::MAX).as_bytes()[2..4],
        &[0, 0]
    );
    assert_eq!(
        EvtchnInitControl::new(u64::MAX, u32::MAX, u32::MAX)._pad,
        [0; 7]
    );
}

proptest! {
    #[test]
    fn status_answers_round_trip(dom: u16, port: u32, vcpu: u32, kind in kind()) {
        let st = EvtchnStatus::answer(dom, port, vcpu, kind);
        prop_assert_eq!(st.kind(), Ok(kind));
        prop_assert_eq!((st.dom, st.port, st.vcpu), (dom, port, vcpu));
        let copy = EvtchnStatus::read_from_bytes(st.as_bytes()).unwrap();
        prop_assert_eq!(copy.kind(), Ok(kind));
    }

    #[test]
    fn evtchn_op_round_trips(port: u32, vcpu: u32, dom: u16, virq: u32, kind in kind()) {
        macro_rules! rt {
            ($v:expr, $t:ty) => {{
                let v: $t = $v;
                let op = EvtchnOp::new(v);
                prop_assert_eq!(op.cmd, <$t as EventChannelOp>::CMD);
                prop_assert_eq!(op.args::<$t>(), Ok(v));
                let bytes = op.as_bytes();
                prop_assert_eq!(EvtchnOp::read_from_bytes(bytes).unwrap().args::<$t>(), Ok(v));
            }};
        }
        rt!(EvtchnAllocUnbound { dom, remote_dom: dom ^ 1, port }, EvtchnAllocUnbound);
        rt!(EvtchnBindInterdomain::new(dom, port), EvtchnBindInterdomain);
        rt!(EvtchnBindVirq { virq, vcpu, port }, EvtchnBindVirq);
        rt!(EvtchnBindPirq { pirq: virq, flags: BIND_PIRQ__WILL_SHARE, port }, EvtchnBindPirq);
        rt!(EvtchnBindIpi { vcpu, port }, EvtchnBindIpi);
        rt!(EvtchnClose { port }, EvtchnClose);
        rt!(EvtchnSend { port }, EvtchnSend);
        rt!(EvtchnStatus::answer(dom, port, vcpu, kind), EvtchnStatus);
        rt!(EvtchnBindVcpu { port, vcpu }, EvtchnBindVcpu);
        rt!(EvtchnUnmask { port }, EvtchnUnmask);
    }

    #[test]
    fn every_struct_round_trips_through_bytes(bytes in proptest::collection::vec(any::<u8>(), 72)) {
        bytes_round_trip::<EvtchnAllocUnbound>(&bytes);
        bytes_round_trip::<EvtchnBindInterdomain>(&bytes);
        bytes_round_trip::<EvtchnBindVirq>(&bytes);
        bytes_round_trip::<EvtchnBindPirq>(&bytes);
        bytes_round_trip::<EvtchnBindIpi>(&bytes);
        bytes_round_trip::<EvtchnClose>(&bytes);
        bytes_round_trip::<EvtchnSend>(&bytes);
        bytes_round_trip::<EvtchnStatus>(&bytes);
        bytes_round_trip::<EvtchnStatusU>(&bytes);
        bytes_round_trip::<EvtchnStatusInterdomain>(&bytes);
        bytes_round_trip::<EvtchnBindVcpu>(&bytes);
        bytes_round_trip::<EvtchnUnmask>(&bytes);
        bytes_round_trip::<EvtchnReset>(&bytes);
        bytes_round_trip::<EvtchnInitControl>(&bytes);
        bytes_round_trip::<EvtchnExpandArray>(&bytes);
        bytes_round_trip::<EvtchnSetPriority>(&bytes);
        bytes_round_trip::<EvtchnOp>(&bytes);
        bytes_round_trip::<EvtchnFifoControlBlock>(&bytes);
    }

    #[test]
    fn status_union_round_trips(dom: u16, port: u32, irq: u32) {
        prop_assert_eq!(EvtchnStatusU::unbound(dom).unbound_dom(), dom);
        let i = EvtchnStatusU::interdomain(dom, port).as_interdomain();
        prop_assert_eq!((i.dom, i.port), (dom, port));
        prop_assert_eq!(EvtchnStatusU::irq(irq).as_irq(), irq);
    }
}
