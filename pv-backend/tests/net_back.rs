//! netback's ring side driven by a Rust front end on real granted pages in guest memory: guests
//! reach each other through the virtual switch, and a guest reaches a UDP socket in a network
//! namespace through a TAP device. And the netif cases of HOSTILE-INPUT.md, each a named test, with
//! a second guest on the same switch that keeps working.

use std::process::Command;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pv_backend::backend::{EventChannel, GrantAccess, GrantedRing};
use pv_backend::blk::front::TestGuest;
use pv_backend::net::back::{NetQueue, NetQueueConfig, NetbackError, RxOffloads};
use pv_backend::net::switch::{Switch, SwitchConfig, SwitchPort};
use pv_backend::net::{FrameMeta, NetDevice};
use xen_abi::netif::{
    ExtraFlags, NET_RX_RING_SIZE, NET_TX_RING_SIZE, NetRxFlags, NetTxFlags, NetifError,
    NetifExtraInfo, NetifExtraInfoGso, NetifRspStatus, NetifRx, NetifRxRequest, NetifTx,
    NetifTxRequest, XEN_NETIF_GSO_TYPE_TCPV4,
};
use xen_abi::ring::{FrontRing, RawRingMemory, RingMemory};

const PAGE: usize = 4096;

#[derive(Default)]
struct Counter(AtomicU64);
impl EventChannel for Counter {
    fn notify(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}

fn frame(dst: [u8; 6], src: [u8; 6], len: usize, seed: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    let mut x = seed | 1;
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f
}

/// A received packet: its bytes, the first response's flags, and the GSO extra if any.
#[derive(Debug)]
struct Received {
    data: Vec<u8>,
    flags: NetRxFlags,
    gso: Option<NetifExtraInfoGso>,
}

/// A netfront: TX and RX rings in granted guest pages, a pool of TX pages, posted RX pages.
struct Front {
    guest: Arc<TestGuest>,
    tx: FrontRing<RawRingMemory, NetifTx>,
    rx: FrontRing<RawRingMemory, NetifRx>,
    tx_ref: u32,
    rx_ref: u32,
    /// TX data pages: (frame, gref).
    tx_pages: Vec<(u32, u32)>,
    /// RX buffers by request id: (frame, gref).
    rx_pages: Vec<(u32, u32)>,
    next_rx: u16,
}

fn ring_memory(guest: &TestGuest, frame: u32) -> RawRingMemory {
    // SAFETY: the page belongs to the guest's memory, which the `Arc<TestGuest>` in `Front` keeps
    // alive for as long as the ring; it is only accessed through the ring's atomic/volatile accesses.
    unsafe { RawRingMemory::new(NonNull::new(guest.page_ptr(frame)).unwrap(), PAGE) }
}

/// Puts a fresh ring's shared indices at `idx` (producers and consumers), as a ring that has been in
/// use for `idx` requests, and attaches a front end there.
fn ring_at<P: xen_abi::ring::RingProtocol>(
    mem: RawRingMemory,
    idx: u32,
) -> FrontRing<RawRingMemory, P> {
    // SHARED_RING_INIT first (the front end that made the ring), then the indices moved.
    let _ = FrontRing::<_, P>::new(mem).unwrap();
    let base = mem.as_ptr().cast::<std::sync::atomic::AtomicU32>();
    for (word, v) in [
        (0, idx),
        (1, idx.wrapping_add(1)),
        (2, idx),
        (3, idx.wrapping_add(1)),
    ] {
        // SAFETY: the four words of the shared ring header (req_prod, req_event, rsp_prod,
        // rsp_event) at the start of the page, which the guest keeps mapped.
        unsafe { (*base.add(word)).store(v, Ordering::Release) };
    }
    FrontRing::attach(mem, idx).unwrap()
}

impl Front {
    fn new(domid: u16) -> Self {
        Self::at(domid, 0)
    }

    /// A front end whose rings start at index `idx`.
    fn at(domid: u16, idx: u32) -> Self {
        let guest = TestGuest::new(domid, 0, 1024, 4);
        let (txf, rxf) = (guest.alloc_pages(1), guest.alloc_pages(1));
        let tx = ring_at(ring_memory(&guest, txf), idx);
        let rx = ring_at(ring_memory(&guest, rxf), idx);
        let tx_ref = guest.grant(txf, false);
        let rx_ref = guest.grant(rxf, false);
        let tx_pages = (0..40)
            .map(|_| {
                let f = guest.alloc_pages(1);
                (f, guest.grant(f, true))
            })
            .collect();
        let rx_pages = (0..NET_RX_RING_SIZE)
            .map(|_| {
                let f = guest.alloc_pages(1);
                (f, guest.grant(f, false))
            })
            .collect();
        Self {
            guest,
            tx,
            rx,
            tx_ref,
            rx_ref,
            tx_pages,
            rx_pages,
            next_rx: 0,
        }
    }

    /// netback for this front end, on `device`, attached where the rings are.
    fn back<D: NetDevice>(&self, device: D, config: NetQueueConfig) -> NetQueue<GrantedRing, D> {
        let grants: Arc<dyn GrantAccess> = Arc::new(self.guest.grants.clone());
        let d = self.guest.domid;
        let tx = GrantedRing::map(&*grants, d, &[self.tx_ref]).unwrap();
        let rx = GrantedRing::map(&*grants, d, &[self.rx_ref]).unwrap();
        let ev: Arc<dyn EventChannel> = Arc::new(Counter::default());
        let (ti, ri) = (self.tx.req_prod_pvt(), self.rx.req_prod_pvt());
        NetQueue::attach(
            d,
            grants,
            (tx, ti),
            (rx, ri),
            ev.clone(),
            ev,
            device,
            config,
        )
        .unwrap()
    }

    /// Writes `data` as fragments of at most `frag` bytes starting at `offset` in each page, with
    /// `flags` on the first request and `extras` after it, and pushes it. Returns the slots used.
    fn send(
        &mut self,
        data: &[u8],
        frag: usize,
        offset: usize,
        flags: NetTxFlags,
        extras: &[NetifExtraInfo],
    ) -> usize {
        let pieces: Vec<&[u8]> = data.chunks(frag.min(PAGE - offset)).collect();
        let mut slots = 0;
        for (i, piece) in pieces.iter().enumerate() {
            let (f, gref) = self.tx_pages[i];
            self.guest.write(f, offset, piece);
            let mut fl = if i == 0 { flags } else { NetTxFlags::empty() };
            if i + 1 < pieces.len() {
                fl |= NetTxFlags::MORE_DATA;
            }
            if i == 0 && !extras.is_empty() {
                fl |= NetTxFlags::EXTRA_INFO;
            }
            let size = if i == 0 { data.len() } else { piece.len() };
            self.tx
                .put_request(&NetifTxRequest::new(
                    gref,
                    offset as u16,
                    fl,
                    i as u16,
                    size as u16,
                ))
                .unwrap();
            slots += 1;
            if i == 0 {
                for (k, e) in extras.iter().enumerate() {
                    let mut e = *e;
                    if k + 1 < extras.len() {
                        e.flags |= ExtraFlags::MORE.bits();
                    }
                    self.tx
                        .put_request(&NetifTxRequest::from_extra_info(&e))
                        .unwrap();
                    slots += 1;
                }
            }
        }
        self.tx.push_requests();
        slots
    }

    /// Writes raw slots and pushes them.
    fn send_raw(&mut self, slots: &[NetifTxRequest]) {
        for s in slots {
            self.tx.put_request(s).unwrap();
        }
        self.tx.push_requests();
    }

    /// Collects TX responses: their statuses in order.
    fn tx_statuses(&mut self) -> Vec<i16> {
        std::iter::from_fn(|| self.tx.pop_response().unwrap().map(|r| r.status)).collect()
    }

    /// Posts `n` RX buffers.
    fn post_rx(&mut self, n: usize) {
        for _ in 0..n.min(self.rx.free_requests() as usize) {
            let id = self.next_rx % NET_RX_RING_SIZE as u16;
            self.next_rx = self.next_rx.wrapping_add(1);
            let gref = self.rx_pages[usize::from(id)].1;
            self.rx.put_request(&NetifRxRequest::new(id, gref)).unwrap();
        }
        self.rx.push_requests();
    }

    /// Reads every complete received packet.
    fn received(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        while let Some(first) = self.rx.pop_response().unwrap() {
            let mut r = Received {
                data: Vec::new(),
                flags: first.rx_flags(),
                gso: None,
            };
            let mut rsp = first;
            loop {
                let size = rsp.received().expect("an error response") as usize;
                let frame = self.rx_pages[usize::from(rsp.id)].0;
                r.data
                    .extend(self.guest.read(frame, usize::from(rsp.offset), size));
                if rsp.rx_flags().contains(NetRxFlags::EXTRA_INFO) {
                    let extra = self.rx.pop_response().unwrap().unwrap().as_extra_info();
                    r.gso = Some(extra.u.gso());
                }
                if !rsp.rx_flags().contains(NetRxFlags::MORE_DATA) {
                    break;
                }
                rsp = self.rx.pop_response().unwrap().expect("chain cut short");
            }
            out.push(r);
        }
        out
    }
}

fn run<D: NetDevice>(q: &mut NetQueue<GrantedRing, D>) {
    for _ in 0..100 {
        if !q.process(Instant::now()).unwrap() {
            return;
        }
    }
}

struct Pair {
    _sw: Switch,
    a: Front,
    b: Front,
    qa: NetQueue<GrantedRing, SwitchPort>,
    qb: NetQueue<GrantedRing, SwitchPort>,
}

fn pair(config: NetQueueConfig) -> Pair {
    pair_on(config, SwitchConfig::default())
}

fn pair_on(config: NetQueueConfig, switch: SwitchConfig) -> Pair {
    let sw = Switch::new(switch).unwrap();
    let (mut a, mut b) = (Front::new(1), Front::new(2));
    let qa = a.back(sw.add_port(), config);
    let qb = b.back(sw.add_port(), config);
    a.post_rx(64);
    b.post_rx(64);
    Pair {
        _sw: sw,
        a,
        b,
        qa,
        qb,
    }
}

impl Pair {
    /// A sends `data`; B must receive it intact; A's responses must all be OKAY (or NULL).
    fn a_to_b(&mut self, data: &[u8], frag: usize, offset: usize) {
        let slots = self.a.send(data, frag, offset, NetTxFlags::empty(), &[]);
        run(&mut self.qa);
        run(&mut self.qb);
        let st = self.a.tx_statuses();
        assert_eq!(st.len(), slots);
        assert!(
            st.iter().all(|s| *s == NetifRspStatus::Okay as i16),
            "{st:?}"
        );
        let got = self.b.received();
        assert_eq!(got.len(), 1, "B received {} packets", got.len());
        assert!(got[0].data == data, "B's packet differs");
        self.b.post_rx(64);
    }

    /// B still talks to A.
    fn b_still_works(&mut self) {
        let f = frame(mac(1), mac(2), 500, 77);
        self.b.send(&f, 4096, 0, NetTxFlags::empty(), &[]);
        run(&mut self.qb);
        assert_eq!(self.b.tx_statuses(), vec![0]);
    }
}

#[test]
fn frames_between_two_guests_through_the_switch_byte_identical() {
    let mut p = pair(NetQueueConfig::default());
    for (i, (len, frag, off)) in [
        (60usize, 4096usize, 0usize),
        (1514, 4096, 0),
        (1514, 500, 100),
        (9000, 4096, 0),
        (9000, 3000, 1096),
        (14, 4096, 4082),
        (65535, 4096, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let f = frame(mac(2), mac(1), len, i as u32 + 1);
        p.a_to_b(&f, frag, off);
    }
    // And back, so both addresses are learned: unicast from now on.
    let f = frame(mac(1), mac(2), 1000, 9);
    p.b.send(&f, 4096, 0, NetTxFlags::empty(), &[]);
    run(&mut p.qb);
    run(&mut p.qa);
    assert_eq!(p.a.received().pop().unwrap().data, f);
    assert!(p.qa.stats().tx_packets == 7 && p.qb.stats().rx_packets == 7);
    assert!(!p.qa.is_disconnected() && !p.qb.is_disconnected());
}

/// Many packets in a row, more than the rings hold, with the front ends refilling as they go.
#[test]
fn a_stream_longer_than_the_rings() {
    let mut p = pair(NetQueueConfig::default());
    for i in 0..600u32 {
        let f = frame(mac(2), mac(1), 60 + (i as usize * 37) % 1454, i);
        p.a_to_b(&f, 4096, 0);
    }
    assert_eq!(p.qb.stats().rx_packets, 600);
}

/// An IPv4/TCP frame of `payload` bytes (headers valid enough to locate the checksum).
fn tcp4_frame(dst: [u8; 6], src: [u8; 6], payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = 20 + 20 + payload;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total.min(65535) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[12] = 5 << 4;
    f.extend_from_slice(&tcp);
    f.extend((0..payload).map(|i| (i * 31) as u8));
    f
}

/// A 64 KiB GSO packet with a blank checksum crosses to the other guest with its metadata: the
/// receiver sees `csum_blank | data_validated` and the GSO extra.
#[test]
fn gso_and_checksum_offload_cross_to_the_other_guest() {
    let mut p = pair(NetQueueConfig::default());
    let f = tcp4_frame(mac(2), mac(1), 65535 - 54);
    let gso = NetifExtraInfo::gso(
        NetifExtraInfoGso::new(1448, XEN_NETIF_GSO_TYPE_TCPV4, 0),
        ExtraFlags::empty(),
    );
    p.a.send(&f, 4096, 0, NetTxFlags::CSUM_BLANK, &[gso]);
    run(&mut p.qa);
    run(&mut p.qb);
    let st = p.a.tx_statuses();
    assert_eq!(st[0], NetifRspStatus::Okay as i16);
    assert_eq!(
        st[1],
        NetifRspStatus::Null as i16,
        "the extra slot's response"
    );
    let got = p.b.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].data == f);
    assert!(
        got[0]
            .flags
            .contains(NetRxFlags::CSUM_BLANK | NetRxFlags::DATA_VALIDATED)
    );
    let g = got[0].gso.expect("no GSO extra");
    assert_eq!(g.size, 1448);
    assert_eq!(g.r#type, XEN_NETIF_GSO_TYPE_TCPV4);
    // data_validated alone passes too.
    let f = frame(mac(2), mac(1), 300, 5);
    p.a.send(&f, 4096, 0, NetTxFlags::DATA_VALIDATED, &[]);
    run(&mut p.qa);
    run(&mut p.qb);
    let got = p.b.received();
    assert_eq!(got[0].flags, NetRxFlags::DATA_VALIDATED);
}

/// An IPv6 UDP frame with a hop-by-hop extension header, its checksum field holding the folded
/// pseudo-header sum.
fn udp6_frame(payload: usize) -> Vec<u8> {
    let (src, dst) = (
        [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1u8],
        [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2u8],
    );
    let udp_len = 8 + payload;
    let mut f = Vec::new();
    f.extend_from_slice(&mac(2));
    f.extend_from_slice(&mac(1));
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((8 + udp_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 64]); // next header: hop-by-hop; hop limit
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop: next UDP, length 8, PadN
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(udp_len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    f.extend_from_slice(&1000u16.to_be_bytes());
    f.extend_from_slice(&2000u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&fold(csum(&pseudo, 0)).to_be_bytes());
    f.extend((0..payload).map(|i| (i * 5 + 1) as u8));
    f
}

/// IPv6 checksum offload (`feature-ipv6-csum-offload`), through an extension header: with a switch
/// that carries partial checksums, B sees `csum_blank | data_validated` and the same bytes; with one
/// that does not, netback completes the checksum in software and B's copy verifies.
#[test]
fn ipv6_checksum_offload_through_an_extension_header() {
    let f = udp6_frame(1000);
    let mut p = pair(NetQueueConfig::default());
    p.a.send(&f, 4096, 0, NetTxFlags::CSUM_BLANK, &[]);
    run(&mut p.qa);
    run(&mut p.qb);
    assert_eq!(p.a.tx_statuses(), vec![0]);
    let got = p.b.received();
    assert!(got[0].data == f);
    assert!(
        got[0]
            .flags
            .contains(NetRxFlags::CSUM_BLANK | NetRxFlags::DATA_VALIDATED)
    );
    let mut p = pair_on(
        NetQueueConfig::default(),
        SwitchConfig {
            offloads: pv_backend::net::Offloads::NONE,
            ..SwitchConfig::default()
        },
    );
    p.a.send(&f, 4096, 0, NetTxFlags::CSUM_BLANK, &[]);
    run(&mut p.qa);
    run(&mut p.qb);
    assert_eq!(p.a.tx_statuses(), vec![0]);
    let got = p.b.received();
    let g = &got[0].data;
    assert_eq!(got[0].flags, NetRxFlags::DATA_VALIDATED);
    // Only the UDP checksum (at 62 + 6, after the 8-byte extension header) may differ.
    assert_eq!(&g[..68], &f[..68], "headers changed");
    assert_eq!(&g[70..], &f[70..], "payload changed");
    // The UDP checksum now verifies over the pseudo-header (addresses, length, next header).
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&g[22..54]);
    pseudo.extend_from_slice(&((g.len() - 62) as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    assert_eq!(fold(csum(&g[62..], csum(&pseudo, 0))), 0xffff);
}

/// Runs a hostile chain from A, expects a protocol error with `check`, error responses for what was
/// consumed, A disconnected, and B unaffected.
fn hostile(slots: &[NetifTxRequest], check: impl Fn(&NetifError) -> bool) {
    let mut p = pair(NetQueueConfig::default());
    p.a.send_raw(slots);
    match p.qa.process(Instant::now()) {
        Err(NetbackError::Protocol { domid: 1, source }) => {
            assert!(check(&source), "wrong error: {source}")
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert!(p.qa.is_disconnected());
    let st = p.a.tx_statuses();
    assert!(!st.is_empty(), "no error responses");
    assert!(
        st.iter().all(|s| *s == NetifRspStatus::Error as i16),
        "{st:?}"
    );
    assert!(matches!(
        p.qa.process(Instant::now()),
        Err(NetbackError::Disconnected { domid: 1 })
    ));
    assert!(p.b.received().is_empty(), "a hostile packet was delivered");
    p.b_still_works();
}

fn req(gref: u32, offset: u16, flags: NetTxFlags, id: u16, size: u16) -> NetifTxRequest {
    NetifTxRequest::new(gref, offset, flags, id, size)
}

const G: u32 = 10; // the first TX page's grant reference in every front end (see Front::new)

/// Ring indices that wrap through 2^31 and 2^32: hundreds of packets cross the wrap intact.
#[test]
fn indices_wrapping_through_2_31_and_2_32() {
    for idx in [0x7fff_ff00u32, 0xffff_ff00] {
        let sw = Switch::new(SwitchConfig::default()).unwrap();
        let (mut a, mut b) = (Front::at(1, idx), Front::at(2, idx));
        let qa = a.back(sw.add_port(), NetQueueConfig::default());
        let qb = b.back(sw.add_port(), NetQueueConfig::default());
        a.post_rx(64);
        b.post_rx(64);
        let mut p = Pair {
            _sw: sw,
            a,
            b,
            qa,
            qb,
        };
        for i in 0..400u32 {
            let f = frame(mac(2), mac(1), 60 + (i as usize * 97) % 9000, i);
            p.a_to_b(&f, 4096, 0);
        }
        let (tx_cons, rx_prod) = (p.qa.ring_positions().0, p.qb.ring_positions().3);
        assert!(
            (tx_cons ^ idx) & 0x8000_0000 != 0,
            "TX did not cross at {idx:#x}"
        );
        assert!(
            (rx_prod ^ idx) & 0x8000_0000 != 0,
            "RX did not cross at {idx:#x}"
        );
    }
}

/// Another thread rewrites A's TX ring (slots and req_prod) while netback reads it: no panic, no
/// hang; the queue either serves or disconnects, and B is unaffected.
#[test]
fn hostile_tx_ring_changed_by_another_thread_while_netback_reads_it() {
    let mut p = pair(NetQueueConfig::default());
    let base = p.a.tx.memory().as_ptr() as usize;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut x = 0x9e37_79b9u32;
            let words = base as *const std::sync::atomic::AtomicU32;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                // A slot word (after the 64-byte header), or req_prod a little ahead.
                let i = 16 + (x as usize % ((PAGE - 64) / 4));
                // SAFETY: word `i` lies within the ring page, which the guest keeps mapped; the
                // page is only ever accessed atomically or with volatile copies.
                unsafe { (*words.add(i)).store(x.rotate_left(7), Ordering::Relaxed) };
                if x % 8 == 0 {
                    // SAFETY: req_prod, the ring's first word.
                    unsafe { (*words).store(x % 300, Ordering::Release) };
                }
            }
        });
        for _ in 0..3000 {
            match p.qa.process(Instant::now()) {
                Ok(_) => {}
                Err(NetbackError::Protocol { .. } | NetbackError::Ring { .. }) => break,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(p.qb.rx_queued() <= NetQueueConfig::default().rx_queue_frames);
    p.b_still_works();
}

/// `rsp_event` set to garbage on both of A's rings: notifications may come or not, but traffic
/// flows and nothing fails.
#[test]
fn hostile_rsp_event_garbage() {
    let mut p = pair(NetQueueConfig::default());
    let (tx, rx) = (p.a.tx.memory().as_ptr(), p.a.rx.memory().as_ptr());
    for (i, v) in [0u32, 1, 0x7fff_ffff, 0x8000_0000, u32::MAX, 12345]
        .into_iter()
        .enumerate()
    {
        for ring in [tx, rx] {
            // SAFETY: rsp_event is the fourth word of the ring header, in a page the guest keeps
            // mapped and only accesses atomically.
            unsafe {
                (*ring.cast::<std::sync::atomic::AtomicU32>().add(3)).store(v, Ordering::Release)
            };
        }
        p.b.send(
            &frame(mac(1), mac(2), 300, i as u32),
            4096,
            0,
            NetTxFlags::empty(),
            &[],
        );
        run(&mut p.qb);
        run(&mut p.qa);
        let got = p.a.received();
        assert_eq!(got.len(), 1);
        p.a.post_rx(4);
        p.a_to_b(&frame(mac(2), mac(1), 200, i as u32), 4096, 0);
    }
}

#[test]
fn hostile_missing_final_fragment() {
    hostile(
        &[
            req(G, 0, NetTxFlags::MORE_DATA, 0, 200),
            req(G + 1, 0, NetTxFlags::MORE_DATA, 1, 100),
        ],
        |e| matches!(e, NetifError::MissingFinalFragment { .. }),
    );
}

#[test]
fn hostile_more_than_18_slots() {
    let mut slots = vec![req(G, 0, NetTxFlags::MORE_DATA, 0, 19 * 10)];
    for i in 1..19 {
        let fl = if i < 18 {
            NetTxFlags::MORE_DATA
        } else {
            NetTxFlags::empty()
        };
        slots.push(req(G + 1, 0, fl, i, 10));
    }
    hostile(&slots, |e| {
        matches!(e, NetifError::TooManySlots { max: 18 })
    });
}

#[test]
fn hostile_a_full_rings_worth_of_more_data() {
    let slots: Vec<_> = (0..NET_TX_RING_SIZE as u16)
        .map(|i| {
            req(
                G,
                0,
                NetTxFlags::MORE_DATA,
                i,
                if i == 0 { 60_000 } else { 10 },
            )
        })
        .collect();
    hostile(&slots, |e| {
        matches!(
            e,
            NetifError::TooManySlots { .. } | NetifError::MissingFinalFragment { .. }
        )
    });
}

#[test]
fn hostile_fragment_offset_plus_size_above_4096() {
    hostile(&[req(G, 4000, NetTxFlags::empty(), 0, 200)], |e| {
        matches!(e, NetifError::FragmentCrossesPage { .. })
    });
}

#[test]
fn hostile_zero_length_fragment() {
    hostile(
        &[
            req(G, 0, NetTxFlags::MORE_DATA, 0, 100),
            req(G + 1, 0, NetTxFlags::empty(), 1, 0),
        ],
        |e| matches!(e, NetifError::ZeroLengthFragment { .. }),
    );
}

#[test]
fn hostile_packet_smaller_than_14_bytes() {
    hostile(&[req(G, 0, NetTxFlags::empty(), 0, 13)], |e| {
        matches!(e, NetifError::PacketTooSmall { .. })
    });
}

#[test]
fn hostile_first_size_smaller_than_the_sum_of_its_fragments() {
    hostile(
        &[
            req(G, 0, NetTxFlags::MORE_DATA, 0, 100),
            req(G + 1, 0, NetTxFlags::empty(), 1, 200),
        ],
        |e| matches!(e, NetifError::FragmentLargerThanRemaining { .. }),
    );
}

#[test]
fn hostile_headers_split_across_fragments() {
    hostile(
        &[
            req(G, 0, NetTxFlags::MORE_DATA, 0, 100),
            req(G + 1, 0, NetTxFlags::empty(), 1, 90),
        ],
        |e| matches!(e, NetifError::HeaderSplit { .. }),
    );
}

fn extra_slot(ty: u8, flags: u8) -> NetifTxRequest {
    let mut e = NetifExtraInfo::gso(
        NetifExtraInfoGso::new(1000, XEN_NETIF_GSO_TYPE_TCPV4, 0),
        ExtraFlags::empty(),
    );
    e.r#type = ty;
    e.flags = flags;
    NetifTxRequest::from_extra_info(&e)
}

#[test]
fn hostile_extra_info_of_type_0() {
    hostile(
        &[req(G, 0, NetTxFlags::EXTRA_INFO, 0, 100), extra_slot(0, 0)],
        |e| matches!(e, NetifError::ExtraTypeNone),
    );
}

#[test]
fn hostile_extra_info_of_type_5_and_above() {
    for ty in [5u8, 6, 255] {
        hostile(
            &[req(G, 0, NetTxFlags::EXTRA_INFO, 0, 100), extra_slot(ty, 0)],
            |e| matches!(e, NetifError::UnknownExtraType { .. }),
        );
    }
}

#[test]
fn hostile_chain_of_more_extras_runs_off_the_ring() {
    hostile(
        &[
            req(G, 0, NetTxFlags::EXTRA_INFO, 0, 100),
            extra_slot(1, ExtraFlags::MORE.bits()),
        ],
        |e| matches!(e, NetifError::ExtraInfoRunsOffRing { .. }),
    );
}

#[test]
fn hostile_gso_size_0_and_unknown_gso_type() {
    let mut e = NetifExtraInfo::gso(
        NetifExtraInfoGso::new(0, XEN_NETIF_GSO_TYPE_TCPV4, 0),
        ExtraFlags::empty(),
    );
    hostile(
        &[
            req(G, 0, NetTxFlags::EXTRA_INFO, 0, 100),
            NetifTxRequest::from_extra_info(&e),
        ],
        |e| matches!(e, NetifError::GsoSizeZero),
    );
    e = NetifExtraInfo::gso(NetifExtraInfoGso::new(1000, 9, 0), ExtraFlags::empty());
    hostile(
        &[
            req(G, 0, NetTxFlags::EXTRA_INFO, 0, 100),
            NetifTxRequest::from_extra_info(&e),
        ],
        |e| matches!(e, NetifError::UnknownGsoType { gso_type: 9 }),
    );
}

#[test]
fn hostile_req_prod_ring_size_plus_one_ahead() {
    let mut p = pair(NetQueueConfig::default());
    // The front end claims one more request than the ring holds.
    p.a.send(
        &frame(mac(2), mac(1), 100, 1),
        4096,
        0,
        NetTxFlags::empty(),
        &[],
    );
    let raw = p.a.tx.memory().as_ptr();
    // SAFETY: req_prod is the first u32 of the shared ring page, which `p.a` keeps mapped.
    unsafe {
        (*(raw.cast::<std::sync::atomic::AtomicU32>()))
            .store(NET_TX_RING_SIZE + 1, Ordering::Release)
    };
    match p.qa.process(Instant::now()) {
        Err(NetbackError::Ring { ring: "tx", .. }) => {}
        other => panic!("expected a ring error, got {other:?}"),
    }
    assert!(p.qa.is_disconnected());
    p.b_still_works();
}

/// A TX fragment whose grant does not map: an error response, and the queue goes on.
#[test]
fn hostile_invalid_grant_ref_in_tx() {
    let mut p = pair(NetQueueConfig::default());
    p.a.send_raw(&[req(3999, 0, NetTxFlags::empty(), 0, 100)]);
    run(&mut p.qa);
    assert_eq!(p.a.tx_statuses(), vec![NetifRspStatus::Error as i16]);
    assert!(!p.qa.is_disconnected());
    p.a_to_b(&frame(mac(2), mac(1), 100, 3), 4096, 0);
}

/// A front end that never consumes its TX responses: netback stops when the response ring is
/// full (no overflow, no error), and goes on once they are consumed.
#[test]
fn hostile_front_end_never_consumes_responses() {
    let mut p = pair(NetQueueConfig::default());
    let f = frame(mac(2), mac(1), 64, 1);
    for _ in 0..NET_TX_RING_SIZE {
        p.a.send(&f, 4096, 0, NetTxFlags::empty(), &[]);
        run(&mut p.qa);
    }
    assert!(p.a.tx.is_full());
    assert_eq!(p.qa.stats().tx_packets, u64::from(NET_TX_RING_SIZE));
    run(&mut p.qa);
    assert!(!p.qa.is_disconnected());
    assert_eq!(p.a.tx_statuses().len(), NET_TX_RING_SIZE as usize);
    p.a.send(&f, 4096, 0, NetTxFlags::empty(), &[]);
    run(&mut p.qa);
    assert_eq!(p.a.tx_statuses(), vec![0]);
}

/// A flood of multicast adds: the filter holds 64 addresses, further adds are answered with an
/// error, and the queue stays up.
#[test]
fn hostile_flood_of_multicast_adds() {
    let config = NetQueueConfig {
        multicast_control: true,
        ..NetQueueConfig::default()
    };
    let mut p = pair(config);
    let mut statuses = Vec::new();
    for i in 0..100u32 {
        let addr = [0x01, 0x00, 0x5e, 0, (i >> 8) as u8, i as u8];
        let e = NetifExtraInfo::mcast(true, addr, ExtraFlags::empty());
        p.a.send_raw(&[
            req(0, 0, NetTxFlags::EXTRA_INFO, i as u16, 0),
            NetifTxRequest::from_extra_info(&e),
        ]);
        run(&mut p.qa);
        statuses.extend(p.a.tx_statuses());
    }
    assert_eq!(p.qa.multicast_filter().len(), 64);
    let errors = statuses
        .iter()
        .filter(|s| **s == NetifRspStatus::Error as i16)
        .count();
    assert_eq!(errors, 36);
    assert!(!p.qa.is_disconnected());
    // Multicast control filters: a group A added reaches it, one it did not is dropped.
    let added = frame([0x01, 0x00, 0x5e, 0, 0, 5], mac(2), 100, 1);
    let other = frame([0x01, 0x00, 0x5e, 0x7f, 0, 5], mac(2), 100, 2);
    // (The front end reuses its TX pages, so each packet is served before the next is written.)
    p.b.send(&other, 4096, 0, NetTxFlags::empty(), &[]);
    run(&mut p.qb);
    p.b.send(&added, 4096, 0, NetTxFlags::empty(), &[]);
    run(&mut p.qb);
    run(&mut p.qa);
    let got = p.a.received();
    let dsts: Vec<_> = got.iter().map(|r| r.data[..6].to_vec()).collect();
    assert_eq!(got.len(), 1, "{dsts:x?}");
    assert!(got[0].data == added);
}

/// XSA-392: an RX ring kept one slot short for ever. What netback buffers is bounded, and frames
/// that waited past the drain timeout are dropped, so the sender and the switch are never stuck.
#[test]
fn hostile_rx_ring_kept_one_slot_short_for_ever() {
    let config = NetQueueConfig {
        rx_queue_frames: 8,
        rx_drain_timeout: Duration::from_secs(10),
        ..NetQueueConfig::default()
    };
    let sw = Switch::new(SwitchConfig {
        queue_frames: 16,
        ..SwitchConfig::default()
    })
    .unwrap();
    let (mut a, mut b) = (Front::new(1), Front::new(2));
    let mut qa = a.back(sw.add_port(), config);
    let mut qb = b.back(sw.add_port(), config);
    // B posts 2 buffers; each frame needs 3 (9000 bytes).
    b.post_rx(2);
    let t0 = Instant::now();
    for i in 0..50u32 {
        a.send(
            &frame(mac(2), mac(1), 9000, i),
            4096,
            0,
            NetTxFlags::empty(),
            &[],
        );
        qa.process(t0).unwrap();
        a.tx_statuses();
        qb.process(t0).unwrap();
        assert!(qb.rx_queued() <= 8);
    }
    assert!(b.received().is_empty());
    assert_eq!(qb.rx_queued(), 8);
    // Past the drain timeout the stale frames go.
    qb.process(t0 + Duration::from_secs(11)).unwrap();
    assert!(qb.stats().rx_dropped >= 8);
    // With enough buffers, traffic flows again.
    b.post_rx(60);
    let f = frame(mac(2), mac(1), 9000, 999);
    a.send(&f, 4096, 0, NetTxFlags::empty(), &[]);
    qa.process(t0).unwrap();
    for _ in 0..5 {
        qb.process(t0 + Duration::from_secs(11)).unwrap();
    }
    let got = b.received();
    assert!(
        got.iter().any(|r| r.data == f),
        "the fresh frame did not arrive"
    );
}

/// An event flood with no work: nothing moves, nothing is notified, and the queue stays up.
#[test]
fn hostile_events_that_bring_no_work() {
    let mut p = pair(NetQueueConfig::default());
    for _ in 0..10_000 {
        assert!(!p.qa.process(Instant::now()).unwrap());
    }
    assert!(p.qa.idle().unwrap());
    let st = p.qa.stats();
    assert_eq!(st.tx_notifies + st.rx_notifies, 0);
}

// --- Through TAP to a UDP socket in a network namespace ---------------------------------------

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace made for one test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        ip(&["netns", "add", &name]);
        Self(name)
    }

    /// A new TAP device moved into the namespace, with MAC `02:<subnet>:00:00:00:01` and address
    /// `169.254.<subnet>.1/24`, up.
    fn tap(&self, name: String, subnet: u8) -> pv_backend::net::tap::Tap {
        use pv_backend::net::tap::{Tap, TapOptions};
        let tap = Tap::open(&TapOptions {
            name,
            ..TapOptions::default()
        })
        .unwrap();
        let dev = tap.name().to_string();
        let mac = format!("02:{subnet:02x}:00:00:00:01");
        let addr = format!("169.254.{subnet}.1/24");
        ip(&["link", "set", "dev", &dev, "netns", &self.0]);
        ip(&["-n", &self.0, "link", "set", "dev", &dev, "address", &mac]);
        ip(&["-n", &self.0, "addr", "add", &addr, "dev", &dev]);
        ip(&["-n", &self.0, "link", "set", "dev", &dev, "up"]);
        tap
    }

    /// Runs `f` on a thread inside the namespace (sockets it makes stay in it) and gives its result.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        use std::os::fd::AsRawFd;
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap();
                // SAFETY: setns with an open namespace fd changes only this thread's network
                // namespace; the thread ends with `f`.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn csum(data: &[u8], mut sum: u32) -> u32 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// A guest's UDP datagram with a blank checksum (`csum_blank`, only the pseudo-header sum in the
/// field) goes through netback and a TAP device without offloads: netback completes the checksum
/// in software, the kernel accepts it, and a UDP socket in the namespace gets the payload.
#[test]
fn guest_reaches_a_udp_socket_in_a_namespace_through_tap() {
    use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let ns = Netns::new(format!("pvbnb-{}-{n}", std::process::id()));
    let tap = ns.tap(format!("pvbn{}x{n}", std::process::id() % 100_000), 78);
    let name = tap.name().to_string();
    let (ns_ip, g_ip) = (
        Ipv4Addr::new(169, 254, 78, 1),
        Ipv4Addr::new(169, 254, 78, 2),
    );
    let ns_mac = [0x02, 78, 0, 0, 0, 1];
    let sock = ns.run(|| {
        let s = UdpSocket::bind(SocketAddrV4::new(ns_ip, 9999)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    });
    let mut a = Front::new(1);
    let mut q = a.back(tap, NetQueueConfig::default());
    // Ethernet + IPv4 + UDP, checksum field = folded pseudo-header sum (not inverted).
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 11) as u8).collect();
    let udp_len = 8 + payload.len();
    let mut f = Vec::new();
    f.extend_from_slice(&ns_mac);
    f.extend_from_slice(&mac(1));
    f.extend_from_slice(&[0x08, 0x00]);
    let mut iph = [0u8; 20];
    iph[0] = 0x45;
    iph[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    iph[8] = 64;
    iph[9] = 17;
    iph[12..16].copy_from_slice(&g_ip.octets());
    iph[16..20].copy_from_slice(&ns_ip.octets());
    let c = !fold(csum(&iph, 0));
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&iph);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&g_ip.octets());
    pseudo.extend_from_slice(&ns_ip.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&4444u16.to_be_bytes());
    f.extend_from_slice(&9999u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&fold(csum(&pseudo, 0)).to_be_bytes());
    f.extend_from_slice(&payload);
    a.send(&f, 600, 0, NetTxFlags::CSUM_BLANK, &[]);
    run(&mut q);
    assert!(a.tx_statuses().iter().all(|s| *s == 0));
    let mut buf = [0u8; 2048];
    let (n, from) = sock
        .recv_from(&mut buf)
        .expect("the datagram did not arrive");
    assert_eq!(&buf[..n], &payload[..]);
    assert_eq!(
        from,
        std::net::SocketAddr::V4(SocketAddrV4::new(g_ip, 4444))
    );
    // And back: a datagram from the namespace reaches the guest's RX ring intact.
    ip(&[
        "-n",
        &ns.0,
        "neigh",
        "add",
        "169.254.78.2",
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        &name,
        "nud",
        "permanent",
    ]);
    a.post_rx(16);
    let reply = vec![0x42u8; 777];
    sock.send_to(&reply, SocketAddrV4::new(g_ip, 4444)).unwrap();
    let t0 = Instant::now();
    let got = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no reply reached the guest"
        );
        q.device().wait_readable(Duration::from_millis(50)).unwrap();
        a.post_rx(16);
        run(&mut q);
        let r: Vec<_> = a
            .received()
            .into_iter()
            .filter(|r| r.data.len() > 42 && r.data[23] == 17)
            .collect();
        if let Some(r) = r.into_iter().next() {
            break r;
        }
    };
    assert_eq!(&got.data[42..], &reply[..]);
    let _ = FrameMeta::default();
}

// --- The XenBus handshake -------------------------------------------------------------------------

mod handshake {
    use super::*;
    use pv_backend::backend::{LocalEventChannels, LocalXs, XenbusBackend, XsHandle};
    use pv_backend::blk::front::wait_state;
    use pv_backend::net::xenbus::{NetBack, NetBackConfig};
    use pv_backend::xenstore::XenStore;
    use pv_backend::xenstore::server::{SharedStore, lock};
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;
    use xen_abi::xenbus::XenbusState;
    use xen_abi::xs_wire::XsPerm;

    /// The toolstack's nodes for vif 0 of `domid`; returns (backend, frontend) paths.
    fn add_vif(store: &SharedStore, domid: u16) -> (String, String) {
        let be = format!("/local/domain/0/backend/vif/{domid}/0");
        let fe = format!("/local/domain/{domid}/device/vif/0");
        let mut s = lock(store);
        let c = s.connect(0, None);
        for (p, v) in [
            (format!("{be}/frontend"), fe.clone()),
            (format!("{be}/frontend-id"), domid.to_string()),
            (format!("{be}/online"), "1".into()),
            (format!("{be}/state"), "1".into()),
            (format!("{fe}/backend"), be.clone()),
            (format!("{fe}/backend-id"), "0".into()),
            (format!("{fe}/state"), "1".into()),
        ] {
            s.write(c, 0, p.as_bytes(), v.as_bytes()).unwrap();
        }
        for p in ["", "/frontend", "/frontend-id", "/online", "/state"] {
            s.set_perms(
                c,
                0,
                format!("{be}{p}").as_bytes(),
                &XsPerm::owner_and_reader(0, domid),
            )
            .unwrap();
        }
        for p in ["", "/backend", "/backend-id", "/state"] {
            s.set_perms(
                c,
                0,
                format!("{fe}{p}").as_bytes(),
                &XsPerm::owner_and_reader(domid, 0),
            )
            .unwrap();
        }
        s.disconnect(c);
        (be, fe)
    }

    struct Vif {
        front: Front,
        ctrl: FrontRing<RawRingMemory, xen_abi::netif::NetifCtrl>,
        ctrl_port: u32,
        port: u32,
        bell: Arc<pv_backend::backend::Doorbell>,
        be: String,
        xs: LocalXs,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Vif {
        /// Waits (5 s) for the back end to be Connected.
        fn connected(&self) {
            let st = wait_state(
                &self.xs,
                &format!("{}/state", self.be),
                &[XenbusState::Connected],
                Duration::from_secs(5),
            );
            assert_eq!(st, XenbusState::Connected);
        }

        /// Sends `f` with `flags`, kicks, and waits (5 s) for its responses, which must be OKAY: the
        /// TX pages are reused for the next frame.
        fn send_acked(&mut self, evtchns: &LocalEventChannels, f: &[u8], flags: NetTxFlags) {
            self.front.send(f, 4096, 0, flags, &[]);
            evtchns.send(self.front.guest.domid, self.port);
            let t0 = Instant::now();
            loop {
                let st = self.front.tx_statuses();
                if !st.is_empty() {
                    assert!(st.iter().all(|s| *s == 0), "{st:?}");
                    return;
                }
                assert!(t0.elapsed() < Duration::from_secs(5), "no TX response");
                self.bell.wait(Duration::from_millis(5));
            }
        }
    }

    impl Drop for Vif {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// A guest with a vif on `port` of the switch; the front end writes its keys (with
    /// `request-rx-copy` unless `no_rx_copy`) and moves to Initialised.
    fn vif<D: NetDevice + 'static>(
        store: &SharedStore,
        evtchns: &Arc<LocalEventChannels>,
        port: D,
        domid: u16,
        no_rx_copy: bool,
    ) -> Vif {
        vif_with(store, evtchns, port, domid, no_rx_copy, &[])
    }

    /// [`vif`], with `extra` keys written by the front end too.
    fn vif_with<D: NetDevice + 'static>(
        store: &SharedStore,
        evtchns: &Arc<LocalEventChannels>,
        port: D,
        domid: u16,
        no_rx_copy: bool,
        extra: &[(&'static str, &str)],
    ) -> Vif {
        let front = Front::new(domid);
        let (be, fe) = add_vif(store, domid);
        let nb = NetBack::new(
            Arc::new(front.guest.grants.clone()),
            evtchns.clone(),
            port,
            NetBackConfig::default(),
        );
        let bxs: Arc<dyn XsHandle> = Arc::new(LocalXs::connect(store.clone(), 0));
        let mut backend = XenbusBackend::new(bxs, &be, nb).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            backend.start().unwrap();
            while !s.load(Ordering::Relaxed) {
                let _ = backend.poll(Duration::from_millis(5));
            }
            pv_backend::backend::XenbusDevice::disconnect(backend.device_mut());
        });
        let xs = LocalXs::connect(store.clone(), domid);
        let st = wait_state(
            &xs,
            &format!("{be}/state"),
            &[XenbusState::InitWait],
            Duration::from_secs(5),
        );
        assert_eq!(st, XenbusState::InitWait);
        assert_eq!(
            xs.read(&format!("{be}/feature-rx-copy")).unwrap().unwrap(),
            b"1"
        );
        assert_eq!(
            xs.read(&format!("{be}/feature-gso-tcpv4"))
                .unwrap()
                .unwrap(),
            b"1"
        );
        let (port, bell) = evtchns.alloc(domid);
        let cf = front.guest.alloc_pages(1);
        let ctrl = FrontRing::new(ring_memory(&front.guest, cf)).unwrap();
        let ctrl_ref = front.guest.grant(cf, false);
        let (ctrl_port, _) = evtchns.alloc(domid);
        let mut keys = vec![
            ("ctrl-ring-ref", ctrl_ref.to_string()),
            ("event-channel-ctrl", ctrl_port.to_string()),
            ("tx-ring-ref", front.tx_ref.to_string()),
            ("rx-ring-ref", front.rx_ref.to_string()),
            ("event-channel", port.to_string()),
            ("feature-rx-notify", "1".into()),
            ("feature-gso-tcpv4", "1".into()),
        ];
        if !no_rx_copy {
            keys.push(("request-rx-copy", "1".into()));
        }
        keys.extend(extra.iter().map(|&(k, v)| (k, v.to_owned())));
        for (k, v) in keys {
            xs.write(&format!("{fe}/{k}"), v.as_bytes()).unwrap();
        }
        xs.write(&format!("{fe}/state"), b"3").unwrap();
        Vif {
            front,
            ctrl,
            ctrl_port,
            port,
            bell,
            be,
            xs,
            stop,
            thread: Some(thread),
        }
    }

    #[test]
    fn two_guests_connect_through_the_xenbus_handshake_and_exchange_frames() {
        let store: SharedStore = Arc::new(Mutex::new(XenStore::default()));
        let evtchns = LocalEventChannels::new();
        let sw = Switch::new(SwitchConfig::default()).unwrap();
        let mut a = vif(&store, &evtchns, sw.add_port(), 1, false);
        let mut b = vif(&store, &evtchns, sw.add_port(), 2, false);
        for v in [&a, &b] {
            v.connected();
        }
        b.front.post_rx(64);
        evtchns.send(2, b.port);
        let frames: Vec<Vec<u8>> = (0..20u32)
            .map(|i| frame(mac(2), mac(1), 60 + i as usize * 400, i))
            .collect();
        let mut got = Vec::new();
        for f in &frames {
            a.send_acked(&evtchns, f, NetTxFlags::empty());
        }
        let t0 = Instant::now();
        while got.len() < frames.len() {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "B got {} frames",
                got.len()
            );
            b.bell.wait(Duration::from_millis(5));
            got.extend(b.front.received().into_iter().map(|r| r.data));
        }
        assert!(got == frames, "B's frames differ");
        // A's control ring is served too.
        let req = xen_abi::netif::XenNetifCtrlRequest::new(
            7,
            xen_abi::netif::XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE,
            [0; 3],
        );
        a.ctrl.put_request(&req).unwrap();
        a.ctrl.push_requests();
        evtchns.send(1, a.ctrl_port);
        let t0 = Instant::now();
        let rsp = loop {
            if let Some(r) = a.ctrl.pop_response().unwrap() {
                break r;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "no control response");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!((rsp.id, rsp.status, rsp.data), (7, 0, 128));
    }

    /// `feature-no-csum-offload` and `feature-ipv6-csum-offload` are read from the front end's
    /// directory: A sends TCPv4, UDPv4 and UDPv6 packets with blank checksums (flooded to B and C);
    /// B, which wrote `feature-no-csum-offload` = 1 and no IPv6 key, gets all three with complete
    /// checksums (verified here) and without `csum_blank`; C, which wrote only
    /// `feature-ipv6-csum-offload` = 1, gets all three blank, as they were sent.
    #[test]
    fn checksum_offload_follows_the_front_ends_keys() {
        let store: SharedStore = Arc::new(Mutex::new(XenStore::default()));
        let evtchns = LocalEventChannels::new();
        let sw = Switch::new(SwitchConfig::default()).unwrap();
        let mut a = vif(&store, &evtchns, sw.add_port(), 1, false);
        let no_csum = [("feature-no-csum-offload", "1")];
        let mut b = vif_with(&store, &evtchns, sw.add_port(), 2, false, &no_csum);
        let v6_csum = [("feature-ipv6-csum-offload", "1")];
        let mut c = vif_with(&store, &evtchns, sw.add_port(), 3, false, &v6_csum);
        for v in [&a, &b, &c] {
            v.connected();
        }
        for (v, d) in [(&mut b, 2), (&mut c, 3)] {
            v.front.post_rx(64);
            evtchns.send(d, v.port);
        }
        let frames = [blank4_frame(6, 1200), blank4_frame(17, 99), udp6_frame(500)];
        for f in &frames {
            let mut f = f.clone();
            f[..6].copy_from_slice(&mac(9)); // unknown: flooded to B and C
            a.send_acked(&evtchns, &f, NetTxFlags::CSUM_BLANK);
        }
        let mut got = [Vec::new(), Vec::new()];
        for (v, g) in [&mut b, &mut c].into_iter().zip(&mut got) {
            let t0 = Instant::now();
            while g.len() < frames.len() {
                assert!(t0.elapsed() < Duration::from_secs(5), "{} frames", g.len());
                v.bell.wait(Duration::from_millis(5));
                g.extend(v.front.received());
            }
        }
        for (i, f) in frames.iter().enumerate() {
            let mut f = f.clone();
            f[..6].copy_from_slice(&mac(9));
            let (rb, rc) = (&got[0][i], &got[1][i]);
            assert_eq!(rb.flags, NetRxFlags::DATA_VALIDATED, "B, frame {i}");
            if i < 2 {
                assert_full_checksum4(&rb.data, &f);
            } else {
                assert_full_checksum6(&rb.data, &f);
            }
            assert!(
                rc.flags
                    .contains(NetRxFlags::CSUM_BLANK | NetRxFlags::DATA_VALIDATED),
                "C, frame {i}: {:?}",
                rc.flags
            );
            assert!(rc.data == f, "C, frame {i}: changed");
        }
    }

    /// The CPU time (user + system, in clock ticks) and voluntary context switches of this
    /// process's threads named `name`.
    fn thread_usage(name: &str) -> (u64, u64) {
        let (mut ticks, mut switches) = (0, 0);
        for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let p = t.path();
            let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
            // Fields after the command's closing parenthesis: state is field 3, utime 14, stime 15.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            ticks += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
            let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
            for l in status.lines() {
                if let Some(v) = l.strip_prefix("voluntary_ctxt_switches:") {
                    switches += v.trim().parse::<u64>().unwrap();
                }
            }
        }
        (ticks, switches)
    }

    /// An idle vif on a TAP device sleeps on its doorbell and the TAP's descriptor together: over a
    /// second its queue thread uses (almost) no CPU and wakes only a few times (polling the TAP
    /// every millisecond, as before, woke it about a thousand times). A frame from the namespace
    /// still wakes it and reaches the guest.
    #[test]
    fn idle_vif_on_a_tap_device_uses_no_cpu_and_still_wakes_for_a_frame() {
        let ns = Netns::new(format!("pvbidle-{}", std::process::id()));
        let tap = ns.tap(format!("pvbi{}", std::process::id() % 100_000), 80);
        let name = tap.name().to_string();
        let store: SharedStore = Arc::new(Mutex::new(XenStore::default()));
        let evtchns = LocalEventChannels::new();
        let mut v = vif(&store, &evtchns, tap, 5, false);
        v.connected();
        v.front.post_rx(200);
        evtchns.send(5, v.port);
        // Let the interface's own start-up traffic (IPv6 DAD, router solicitations) pass.
        std::thread::sleep(Duration::from_millis(300));
        v.front.received();
        v.front.post_rx(200);
        evtchns.send(5, v.port);
        std::thread::sleep(Duration::from_millis(50));
        let (t0, s0) = thread_usage("netback-d5-q0");
        std::thread::sleep(Duration::from_secs(1));
        let (t1, s1) = thread_usage("netback-d5-q0");
        // SAFETY: sysconf takes an integer and returns one.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let cpu_ms = (t1 - t0) * 1000 / hz;
        eprintln!(
            "idle vif on TAP over 1 s: {cpu_ms} ms CPU, {} wake-ups",
            s1 - s0
        );
        assert!(s0 > 0, "no netback queue thread found");
        assert!(
            cpu_ms <= 10,
            "an idle vif used {cpu_ms} ms of CPU in a second"
        );
        assert!(
            s1 - s0 < 50,
            "an idle vif woke {} times in a second",
            s1 - s0
        );
        // A datagram from the namespace wakes it.
        ns.run(|| {
            ip(&[
                "-n",
                &ns.0,
                "neigh",
                "add",
                "169.254.80.2",
                "lladdr",
                "02:00:00:00:00:05",
                "dev",
                &name,
                "nud",
                "permanent",
            ]);
            let u = std::net::UdpSocket::bind("169.254.80.1:0").unwrap();
            u.send_to(&[0x5a; 321], "169.254.80.2:4321").unwrap();
        });
        let t = Instant::now();
        let got = loop {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the datagram never reached the guest"
            );
            v.bell.wait(Duration::from_millis(20));
            let r: Vec<_> = v
                .front
                .received()
                .into_iter()
                .filter(|r| r.data.len() == 42 + 321 && r.data[23] == 17)
                .collect();
            if let Some(r) = r.into_iter().next() {
                break r;
            }
        };
        eprintln!("datagram reached the idle guest after {:?}", t.elapsed());
        assert_eq!(&got.data[42..], &[0x5a; 321][..]);
    }

    /// A front end without `request-rx-copy`: the back end refuses with a clear error in its
    /// `error` node and moves to Closing.
    #[test]
    fn hostile_front_end_without_rx_copy_is_refused() {
        let store: SharedStore = Arc::new(Mutex::new(XenStore::default()));
        let evtchns = LocalEventChannels::new();
        let sw = Switch::new(SwitchConfig::default()).unwrap();
        let v = vif(&store, &evtchns, sw.add_port(), 3, true);
        let st = wait_state(
            &v.xs,
            &format!("{}/state", v.be),
            &[XenbusState::Closing, XenbusState::Closed],
            Duration::from_secs(5),
        );
        assert!(
            matches!(st, XenbusState::Closing | XenbusState::Closed),
            "{st:?}"
        );
        let err =
            v.xs.read(&format!("{}/error", v.be))
                .unwrap()
                .unwrap_or_default();
        let err = String::from_utf8_lossy(&err);
        assert!(err.contains("request-rx-copy"), "{err}");
    }
}

// --- The control ring -----------------------------------------------------------------------------

mod control_ring {
    use super::*;
    use pv_backend::net::ctrl::CtrlRing;
    use xen_abi::netif::{
        _XEN_NETIF_CTRL_HASH_TYPE_IPV4, _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP, NetifCtrl,
        XEN_NETIF_CTRL_HASH_TYPE_IPV4, XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP,
        XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW, XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
        XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED, XEN_NETIF_CTRL_STATUS_SUCCESS,
        XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING, XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS,
        XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE, XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM,
        XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, XEN_NETIF_CTRL_TYPE_SET_HASH_KEY,
        XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE,
        XenNetifCtrlRequest,
    };

    /// The key of Microsoft's RSS verification suite.
    const RSS_KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];

    struct Ctrl {
        ring: FrontRing<RawRingMemory, NetifCtrl>,
        /// A page the front end writes keys and mapping tables into: (frame, gref).
        data: (u32, u32),
        next_id: u16,
    }

    impl Ctrl {
        /// Sends one request and returns (status, data) once the queue answered it.
        fn call(
            &mut self,
            q: &mut NetQueue<GrantedRing, SwitchPort>,
            ty: u16,
            data: [u32; 3],
        ) -> (u32, u32) {
            self.next_id += 1;
            self.ring
                .put_request(&XenNetifCtrlRequest::new(self.next_id, ty, data))
                .unwrap();
            self.ring.push_requests();
            q.process(Instant::now()).unwrap();
            let r = self
                .ring
                .pop_response()
                .unwrap()
                .expect("no control response");
            assert_eq!((r.id, r.r#type), (self.next_id, ty));
            (r.status, r.data)
        }
    }

    /// A pair whose guest A also has a control ring.
    fn setup() -> (Pair, Ctrl) {
        let mut p = pair(NetQueueConfig::default());
        let g = &p.a.guest;
        let f = g.alloc_pages(1);
        let ring = FrontRing::new(ring_memory(g, f)).unwrap();
        let ring_ref = g.grant(f, false);
        let df = g.alloc_pages(1);
        let data = (df, g.grant(df, true));
        let grants: Arc<dyn GrantAccess> = Arc::new(g.grants.clone());
        let mem = GrantedRing::map(&*grants, 1, &[ring_ref]).unwrap();
        let ev: Arc<dyn EventChannel> = Arc::new(Counter::default());
        let ctrl = CtrlRing::new(1, grants, mem, ev, 1).unwrap();
        p.qa.attach_ctrl(ctrl);
        (
            p,
            Ctrl {
                ring,
                data,
                next_id: 0,
            },
        )
    }

    /// Microsoft's first RSS vector: 66.9.149.187:2794 to 161.142.100.80:1766.
    fn rss_frame() -> Vec<u8> {
        let mut f = tcp4_frame(mac(1), mac(2), 100);
        f[26..30].copy_from_slice(&[66, 9, 149, 187]);
        f[30..34].copy_from_slice(&[161, 142, 100, 80]);
        f[34..36].copy_from_slice(&2794u16.to_be_bytes());
        f[36..38].copy_from_slice(&1766u16.to_be_bytes());
        f
    }

    fn configure(p: &mut Pair, c: &mut Ctrl, flags: u32) {
        let ok = XEN_NETIF_CTRL_STATUS_SUCCESS;
        assert_eq!(
            c.call(&mut p.qa, XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, [1, 0, 0])
                .0,
            ok
        );
        let (st, supported) = c.call(&mut p.qa, XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS, [0; 3]);
        assert_eq!((st, supported & flags), (ok, flags));
        assert_eq!(
            c.call(&mut p.qa, XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, [flags, 0, 0])
                .0,
            ok
        );
        p.a.guest.write(c.data.0, 0, &RSS_KEY);
        let key = [c.data.1, 40, 0];
        assert_eq!(
            c.call(&mut p.qa, XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, key).0,
            ok
        );
    }

    /// B sends the RSS vector's frame to A and returns the hash extra A receives.
    fn received_hash(p: &mut Pair) -> Option<(u32, u8)> {
        p.b.send(&rss_frame(), 4096, 0, NetTxFlags::empty(), &[]);
        run(&mut p.qb);
        run(&mut p.qa);
        // Read the raw slots: the first response, then its extra.
        let first = p.a.rx.pop_response().unwrap().expect("A received nothing");
        if !first.rx_flags().contains(NetRxFlags::EXTRA_INFO) {
            return None;
        }
        let e = p.a.rx.pop_response().unwrap().unwrap().as_extra_info();
        assert_eq!(e.r#type, xen_abi::netif::XEN_NETIF_EXTRA_TYPE_HASH);
        let h = e.u.hash();
        p.a.post_rx(2);
        Some((u32::from_le_bytes(h.value), h.r#type))
    }

    #[test]
    fn toeplitz_hash_of_received_frames_matches_the_rss_verification_vectors() {
        let (mut p, mut c) = setup();
        configure(&mut p, &mut c, XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP);
        let (value, ty) = received_hash(&mut p).expect("no hash extra");
        assert_eq!(value, 0x51cc_c178, "IPv4 with TCP ports");
        assert_eq!(ty, _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP);
        let (mut p, mut c) = setup();
        configure(&mut p, &mut c, XEN_NETIF_CTRL_HASH_TYPE_IPV4);
        let (value, ty) = received_hash(&mut p).expect("no hash extra");
        assert_eq!(value, 0x323e_8fc2, "IPv4 addresses only");
        assert_eq!(ty, _XEN_NETIF_CTRL_HASH_TYPE_IPV4);
        // Hashing off: no extra.
        assert_eq!(
            c.call(&mut p.qa, XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, [0; 3])
                .0,
            XEN_NETIF_CTRL_STATUS_SUCCESS
        );
        assert_eq!(received_hash(&mut p), None);
    }

    /// HOSTILE-INPUT.md's `len > 1024`: one `SET_HASH_MAPPING` carries its (sub-)table at the start
    /// of one granted page, so 1024 entries (4096 bytes) is the most; 1025 entries (4100 bytes, past
    /// the page) is refused even where the table is large enough, as is a `len` whose byte count
    /// wraps 32 bits, and a 1025-byte key. Nothing changes, and the ring keeps working.
    #[test]
    fn hostile_control_mapping_len_above_1024_entries_of_one_page() {
        use xen_abi::netif::{CtrlLimits, NetifError};
        // The rule itself, with a table of 2048 entries so that only the page limit applies.
        let limits = CtrlLimits {
            max_hash_mapping_size: 2048,
            hash_mapping_size: 2048,
            ..CtrlLimits::DEFAULT
        };
        let req = |len: u32, off: u32| {
            XenNetifCtrlRequest::new(1, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [5, len, off])
                .validate(&limits)
        };
        assert!(req(1024, 0).is_ok(), "4096 bytes: exactly the page");
        assert!(req(1024, 1024).is_ok());
        assert!(matches!(
            req(1025, 0),
            Err(NetifError::HashMappingLenTooLarge {
                len: 1025,
                max: 1024
            })
        ));
        assert!(matches!(
            req(0x4000_0001, 0),
            Err(NetifError::HashMappingLenTooLarge { .. })
        ));

        // Through the ring, on a queue whose table is 2048 entries.
        let (mut p, mut c) = setup();
        let g = &p.a.guest;
        let f = g.alloc_pages(1);
        c.ring = FrontRing::new(ring_memory(g, f)).unwrap();
        let ring_ref = g.grant(f, false);
        let grants: Arc<dyn GrantAccess> = Arc::new(g.grants.clone());
        let mem = GrantedRing::map(&*grants, 1, &[ring_ref]).unwrap();
        let ev: Arc<dyn EventChannel> = Arc::new(Counter::default());
        let big = CtrlLimits {
            max_hash_mapping_size: 2048,
            num_queues: 2,
            ..CtrlLimits::DEFAULT
        };
        p.qa.attach_ctrl(CtrlRing::with_limits(1, grants, mem, ev, big).unwrap());
        let (ok, inval) = (
            XEN_NETIF_CTRL_STATUS_SUCCESS,
            XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
        );
        let q = &mut p.qa;
        let map = XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING;
        assert_eq!(
            c.call(q, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, [2048, 0, 0])
                .0,
            ok
        );
        // A whole page of entries, all 1: accepted.
        let (df, g) = c.data;
        let ones: Vec<u8> = (0..1024).flat_map(|_| 1u32.to_ne_bytes()).collect();
        p.a.guest.write(df, 0, &ones);
        let q = &mut p.qa;
        assert_eq!(c.call(q, map, [g, 1024, 0]).0, ok);
        let table =
            |q: &NetQueue<GrantedRing, SwitchPort>| q.ctrl().unwrap().hash().mapping.clone();
        let before = table(q);
        assert_eq!(before.iter().filter(|&&m| m == 1).count(), 1024);
        // 1025 entries, 4100 bytes: refused, wherever it would go.
        assert_eq!(c.call(q, map, [g, 1025, 0]).0, inval);
        assert_eq!(c.call(q, map, [g, 1025, 1000]).0, inval);
        // A len whose byte count (len * 4) wraps to 4 in 32 bits.
        assert_eq!(c.call(q, map, [g, 0x4000_0001, 0]).0, inval);
        assert_eq!(table(q), before, "a refused mapping changed the table");
        // A key of 1025 bytes.
        assert_eq!(
            c.call(q, XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, [g, 1025, 0]).0,
            XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW
        );
        assert!(q.ctrl().unwrap().hash().key.is_empty());
        assert!(!q.is_disconnected());
        // The ring still answers.
        assert_eq!(c.call(q, map, [g, 16, 2032]).0, ok);
    }

    #[test]
    fn hostile_control_requests_are_answered_with_their_status_and_change_nothing() {
        let (mut p, mut c) = setup();
        let (ok, inval) = (
            XEN_NETIF_CTRL_STATUS_SUCCESS,
            XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER,
        );
        configure(&mut p, &mut c, XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP);
        let q = &mut p.qa;
        let (st, max) = c.call(q, XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE, [0; 3]);
        assert_eq!((st, max), (ok, 128));
        assert_eq!(
            c.call(q, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, [8, 0, 0])
                .0,
            ok
        );
        assert_eq!(
            c.call(q, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, [129, 0, 0])
                .0,
            inval
        );
        // off + len overflowing.
        let g = c.data.1;
        assert_eq!(
            c.call(q, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [g, 2, u32::MAX])
                .0,
            inval
        );
        // len above 1024 (one page of entries), and a mapping past the table's 8 entries.
        assert_eq!(
            c.call(q, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [g, 1025, 0])
                .0,
            inval
        );
        assert_eq!(
            c.call(q, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [g, 4, 6]).0,
            inval
        );
        // A mapping value of at least num_queues (1).
        p.a.guest.write(c.data.0, 0, &[0, 0, 0, 0, 1, 0, 0, 0]);
        let q = &mut p.qa;
        assert_eq!(
            c.call(q, XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, [g, 2, 0]).0,
            inval
        );
        assert!(q.ctrl().unwrap().hash().mapping.iter().all(|&m| m == 0));
        // An unknown type, type 0, and the grant-mapping requests.
        assert_eq!(c.call(q, 99, [0; 3]).0, XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED);
        assert_eq!(c.call(q, 0, [0; 3]).0, XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED);
        let add = XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING;
        assert_eq!(
            c.call(q, add, [0, g, 1]).0,
            XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED
        );
        // A key above 40 bytes; a key in a grant that does not map.
        let key = XEN_NETIF_CTRL_TYPE_SET_HASH_KEY;
        assert_eq!(
            c.call(q, key, [g, 41, 0]).0,
            XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW
        );
        assert_eq!(c.call(q, key, [3999, 40, 0]).0, inval);
        assert_eq!(
            q.ctrl().unwrap().hash().key,
            RSS_KEY.to_vec(),
            "the key changed"
        );
        assert!(q.ctrl().unwrap().errors() >= 9);
        assert!(!q.is_disconnected());
        // The configuration still works.
        assert_eq!(received_hash(&mut p).map(|h| h.0), Some(0x51cc_c178));
    }
}

// --- Software GSO segmentation ----------------------------------------------------------------------

/// The TCP payload of an IPv4 TCP segment, after checking its IP and TCP checksums.
fn checked_tcp4_payload(s: &[u8]) -> &[u8] {
    let ihl = usize::from(s[14] & 0xf) * 4;
    assert_eq!(
        fold(csum(&s[14..14 + ihl], 0)),
        0xffff,
        "IPv4 header checksum"
    );
    let total = usize::from(u16::from_be_bytes([s[16], s[17]]));
    assert_eq!(total, s.len() - 14, "IPv4 total length");
    let l4 = &s[14 + ihl..];
    let mut pseudo = Vec::from(&s[26..34]);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    assert_eq!(fold(csum(l4, csum(&pseudo, 0))), 0xffff, "TCP checksum");
    &l4[usize::from(l4[12] >> 4) * 4..]
}

/// A 64 KiB TCPv4 GSO packet sent by a guest to a front end that did not ask for GSO
/// (`rx.gso_tcpv4` off) arrives as MSS-sized segments, each complete, whose payloads put together are the
/// packet's.
#[test]
fn gso_packet_to_a_front_end_without_gso_arrives_segmented() {
    let segs = gso_to_b_segmented(
        NetQueueConfig {
            rx: RxOffloads {
                gso_tcpv4: false,
                ..RxOffloads::ALL
            },
            ..NetQueueConfig::default()
        },
        60000,
    );
    assert!(segs.iter().all(|s| s.data.len() <= 14 + 40 + 1448));
}

/// A sends a TCPv4 GSO packet of `payload` bytes (MSS 1448) to B, whose queue has `config`; B must
/// receive it as MSS-sized segments, each complete (checksums verified here) and without a GSO
/// extra, whose payloads put together are the packet's. Returns the segments.
fn gso_to_b_segmented(config: NetQueueConfig, payload: usize) -> Vec<Received> {
    let mut p = pair(config);
    let f = tcp4_frame(mac(2), mac(1), payload);
    let gso = NetifExtraInfo::gso(
        NetifExtraInfoGso::new(1448, XEN_NETIF_GSO_TYPE_TCPV4, 0),
        ExtraFlags::empty(),
    );
    p.a.send(&f, 4096, 0, NetTxFlags::CSUM_BLANK, &[gso]);
    let mut segs = Vec::new();
    for _ in 0..20 {
        run(&mut p.qa);
        run(&mut p.qb);
        segs.extend(p.b.received());
        p.b.post_rx(64);
    }
    assert_eq!(p.a.tx_statuses()[0], NetifRspStatus::Okay as i16);
    assert_eq!(segs.len(), payload.div_ceil(1448), "segments received");
    let mut got = Vec::new();
    for s in &segs {
        assert!(s.gso.is_none(), "a segment came with a GSO extra");
        assert!(!s.flags.contains(NetRxFlags::CSUM_BLANK), "{:?}", s.flags);
        got.extend_from_slice(checked_tcp4_payload(&s.data));
    }
    assert!(
        got == f[54..],
        "the segments' payloads differ from the packet's"
    );
    segs
}

/// The real-peer proof: a guest opens a TCP connection to a socket in a network namespace through
/// netback and a TAP device without vnet headers (so no GSO below), and sends its stream as two
/// 30000-byte GSO packets, the last with FIN. netback segments them in software; the kernel's own
/// TCP stack accepts every segment (checksums, lengths, sequence numbers, FIN only at the end) and
/// the socket reads the stream byte-identical, then end of file.
#[test]
fn guest_streams_gso_packets_to_a_tcp_socket_in_a_namespace_through_tap() {
    use pv_backend::net::tap::Tap;
    use std::io::Read;
    use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let ns = Netns::new(format!("pvbgso-{}-{n}", std::process::id()));
    let tap = ns.tap(format!("pvbg{}x{n}", std::process::id() % 100_000), 79);
    assert_eq!(tap.offloads(), pv_backend::net::Offloads::NONE);
    let name = tap.name().to_string();
    let (ns_ip, g_ip) = (
        Ipv4Addr::new(169, 254, 79, 1),
        Ipv4Addr::new(169, 254, 79, 2),
    );
    let ns_mac = [0x02, 79, 0, 0, 0, 1];
    ip(&[
        "-n",
        &ns.0,
        "neigh",
        "add",
        "169.254.79.2",
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        &name,
        "nud",
        "permanent",
    ]);
    let listener = ns.run(|| TcpListener::bind(SocketAddrV4::new(ns_ip, 7777)).unwrap());
    listener.set_nonblocking(true).unwrap();
    let reader = std::thread::spawn(move || {
        let t0 = Instant::now();
        let (mut s, _) = loop {
            match listener.accept() {
                Ok(c) => break c,
                Err(_) if t0.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => panic!("no connection was accepted: {e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).map(|_| got)
    });

    let mut a = Front::new(1);
    let mut q = a.back(tap, NetQueueConfig::default());
    a.post_rx(64);
    let (gport, sport) = (5555u16, 7777u16);
    // Ethernet + IPv4 + TCP from the guest; the checksums are left to netback (csum_blank).
    let segment = |seq: u32, ack: u32, flags: u8, payload: &[u8]| -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&ns_mac);
        f.extend_from_slice(&mac(1));
        f.extend_from_slice(&[0x08, 0x00]);
        let mut iph = [0u8; 20];
        iph[0] = 0x45;
        iph[2..4].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
        iph[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        iph[6] = 0x40;
        iph[8] = 64;
        iph[9] = 6;
        iph[12..16].copy_from_slice(&g_ip.octets());
        iph[16..20].copy_from_slice(&ns_ip.octets());
        let c = !fold(csum(&iph, 0));
        iph[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&iph);
        f.extend_from_slice(&gport.to_be_bytes());
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&ack.to_be_bytes());
        f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        let mut pseudo = Vec::from(&f[26..34]);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        f[50..52].copy_from_slice(&fold(csum(&pseudo, 0)).to_be_bytes());
        f
    };
    // Waits for a TCP segment from the socket with `flags` set; returns (seq, ack).
    let wait_for = |a: &mut Front, q: &mut NetQueue<GrantedRing, Tap>, flags: u8| {
        let t0 = Instant::now();
        loop {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "no TCP segment with flags {flags:#x} came back"
            );
            q.device().wait_readable(Duration::from_millis(20)).unwrap();
            run(q);
            a.post_rx(64);
            for r in a.received() {
                let d = &r.data;
                if d.len() >= 54
                    && d[12..14] == [0x08, 0x00]
                    && d[23] == 6
                    && d[34..36] == sport.to_be_bytes()
                    && d[47] & flags == flags
                {
                    let be32 = |i: usize| u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
                    return (be32(38), be32(42));
                }
            }
        }
    };
    let send = |a: &mut Front, q: &mut NetQueue<GrantedRing, Tap>, f: &[u8], gso: bool| {
        let extras = if gso {
            vec![NetifExtraInfo::gso(
                NetifExtraInfoGso::new(1400, XEN_NETIF_GSO_TYPE_TCPV4, 0),
                ExtraFlags::empty(),
            )]
        } else {
            Vec::new()
        };
        a.send(f, 4096, 0, NetTxFlags::CSUM_BLANK, &extras);
        run(q);
        let st = a.tx_statuses();
        assert!(!st.is_empty() && st.iter().all(|s| *s >= 0), "{st:?}");
    };
    let (syn, ack, psh, fin) = (0x02u8, 0x10u8, 0x08u8, 0x01u8);
    let isn = 1000u32;
    send(&mut a, &mut q, &segment(isn, 0, syn, &[]), false);
    let (server_isn, acked) = wait_for(&mut a, &mut q, syn | ack);
    assert_eq!(acked, isn + 1);
    let rcv = server_isn.wrapping_add(1);
    send(&mut a, &mut q, &segment(isn + 1, rcv, ack, &[]), false);
    let stream: Vec<u8> = (0..60000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let first = segment(isn + 1, rcv, ack | psh, &stream[..30000]);
    send(&mut a, &mut q, &first, true);
    let (_, acked) = wait_for(&mut a, &mut q, ack);
    assert!(
        acked > isn + 1,
        "the kernel acknowledged nothing of the first GSO packet"
    );
    let second = segment(isn + 30001, rcv, ack | psh | fin, &stream[30000..]);
    send(&mut a, &mut q, &second, true);
    let t0 = Instant::now();
    while !reader.is_finished() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the socket never saw end of file"
        );
        run(&mut q);
        a.post_rx(64);
        a.received();
        std::thread::sleep(Duration::from_millis(2));
    }
    let got = reader.join().unwrap().expect("reading the TCP stream");
    assert_eq!(got.len(), stream.len(), "bytes the socket read");
    assert!(got == stream, "the stream differs");
    assert!(q.stats().tx_errors == 0);
}

// --- Checksum offload the receiving front end turned off --------------------------------------------

/// An IPv4 frame carrying `proto` (6 TCP, 17 UDP) from 10.0.0.1 to 10.0.0.2 with `payload` bytes, its
/// L4 checksum field holding the folded pseudo-header sum (what `NETTXF_csum_blank` promises).
fn blank4_frame(proto: u8, payload: usize) -> Vec<u8> {
    let l4_hdr = if proto == 6 { 20 } else { 8 };
    let l4_len = l4_hdr + payload;
    let mut f = Vec::new();
    f.extend_from_slice(&mac(2));
    f.extend_from_slice(&mac(1));
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let ip_sum = !fold(csum(&ip, 0));
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut l4 = vec![0u8; l4_hdr];
    l4[0..2].copy_from_slice(&4321u16.to_be_bytes());
    l4[2..4].copy_from_slice(&80u16.to_be_bytes());
    if proto == 6 {
        l4[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        l4[12] = 5 << 4;
        l4[13] = 0x18;
        l4[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    } else {
        l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    let mut pseudo = Vec::from(&ip[12..20]);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
    let field = if proto == 6 { 16 } else { 6 };
    l4[field..field + 2].copy_from_slice(&fold(csum(&pseudo, 0)).to_be_bytes());
    f.extend_from_slice(&l4);
    f.extend((0..payload).map(|i| (i * 13 + 7) as u8));
    f
}

/// Checks, by its own sum over the pseudo-header, that the IPv4 TCP or UDP frame `g` carries a
/// complete L4 checksum, and that it differs from `sent` only in that field.
fn assert_full_checksum4(g: &[u8], sent: &[u8]) {
    assert_eq!(g.len(), sent.len());
    let proto = g[23];
    let field = 34 + if proto == 6 { 16 } else { 6 };
    assert_eq!(&g[..field], &sent[..field], "headers changed");
    assert_eq!(&g[field + 2..], &sent[field + 2..], "payload changed");
    let l4 = &g[34..];
    let mut pseudo = Vec::from(&g[26..34]);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    assert_eq!(
        fold(csum(l4, csum(&pseudo, 0))),
        0xffff,
        "protocol {proto}: the L4 checksum does not verify"
    );
    assert_ne!(&g[field..field + 2], &[0, 0], "a zero checksum");
}

/// Checks the IPv6 UDP frame of [`udp6_frame`] (checksum at 62 + 6) the same way.
fn assert_full_checksum6(g: &[u8], sent: &[u8]) {
    assert_eq!(&g[..68], &sent[..68], "headers changed");
    assert_eq!(&g[70..], &sent[70..], "payload changed");
    let mut pseudo = Vec::from(&g[22..54]);
    pseudo.extend_from_slice(&((g.len() - 62) as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    assert_eq!(
        fold(csum(&g[62..], csum(&pseudo, 0))),
        0xffff,
        "the IPv6 UDP checksum does not verify"
    );
}

/// Sends each frame from A with `csum_blank` through a switch that carries partial checksums, and
/// returns what B received of each.
fn blank_a_to_b(p: &mut Pair, frames: &[&[u8]]) -> Vec<Received> {
    let mut out = Vec::new();
    for f in frames {
        p.a.send(f, 4096, 0, NetTxFlags::CSUM_BLANK, &[]);
        run(&mut p.qa);
        run(&mut p.qb);
        assert_eq!(p.a.tx_statuses(), vec![0]);
        let mut got = p.b.received();
        assert_eq!(got.len(), 1);
        out.push(got.remove(0));
        p.b.post_rx(64);
    }
    out
}

/// A front end that turned checksum offload off (`feature-no-csum-offload` = 1, no
/// `feature-ipv6-csum-offload`) gets TCP and UDP packets over IPv4 and IPv6 whose checksums the
/// sender left blank with the checksum complete, and not marked `csum_blank`; one that takes IPv6
/// offload but not IPv4's gets the IPv6 packet blank and the IPv4 ones complete.
#[test]
fn front_end_without_checksum_offload_gets_complete_checksums() {
    let (tcp, udp, udp6) = (
        blank4_frame(6, 1000),
        blank4_frame(17, 333),
        udp6_frame(777),
    );
    let mut p = pair(NetQueueConfig {
        rx: RxOffloads {
            csum_ipv4: false,
            csum_ipv6: false,
            ..RxOffloads::ALL
        },
        ..NetQueueConfig::default()
    });
    let got = blank_a_to_b(&mut p, &[&tcp, &udp, &udp6]);
    for r in &got {
        assert_eq!(r.flags, NetRxFlags::DATA_VALIDATED, "flags {:?}", r.flags);
    }
    assert_full_checksum4(&got[0].data, &tcp);
    assert_full_checksum4(&got[1].data, &udp);
    assert_full_checksum6(&got[2].data, &udp6);

    let mut p = pair(NetQueueConfig {
        rx: RxOffloads {
            csum_ipv4: false,
            ..RxOffloads::ALL
        },
        ..NetQueueConfig::default()
    });
    let got = blank_a_to_b(&mut p, &[&tcp, &udp6]);
    assert_eq!(got[0].flags, NetRxFlags::DATA_VALIDATED);
    assert_full_checksum4(&got[0].data, &tcp);
    assert!(
        got[1]
            .flags
            .contains(NetRxFlags::CSUM_BLANK | NetRxFlags::DATA_VALIDATED),
        "{:?}",
        got[1].flags
    );
    assert!(got[1].data == udp6, "a blank IPv6 checksum was changed");
}

/// A front end that asks for TCPv4 GSO but turns checksum offload off gets no GSO (as Linux, GSO
/// needs checksum offload): the 64 KiB packet arrives segmented, each segment's checksum complete.
#[test]
fn gso_to_a_front_end_without_checksum_offload_arrives_segmented() {
    gso_to_b_segmented(
        NetQueueConfig {
            rx: RxOffloads {
                csum_ipv4: false,
                ..RxOffloads::ALL
            },
            ..NetQueueConfig::default()
        },
        20000,
    );
}
