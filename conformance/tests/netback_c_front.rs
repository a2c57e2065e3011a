//! pv-backend's netback driven by front ends written with Xen's own `io/ring.h` macros and `io/netif.h`
//! types (`c/netfront.c`, compiled against libxen-dev), on real shared pages of two guests' memory: guest A
//! transmits through its netback and the virtual switch, guest B receives through its netback, and the
//! bytes, the responses and the GSO extra are what the C side reads.

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

// The C functions live in the crate's static library.
use blanket_conformance as _;
use pv_backend::backend::{EventChannel, GrantAccess, GrantedRing};
use pv_backend::blk::front::TestGuest;
use pv_backend::net::back::{NetQueue, NetQueueConfig};
use pv_backend::net::switch::{Switch, SwitchConfig, SwitchPort};
use xen_abi::netif::{
    NETIF_RSP_NULL, NETIF_RSP_OKAY, NetRxFlags, NetTxFlags, NetifRxResponse,
    XEN_NETIF_GSO_TYPE_TCPV4,
};

unsafe extern "C" {
    fn c_netfront_size() -> usize;
    fn c_netfront_init(f: *mut c_void, tx_page: *mut c_void, rx_page: *mut c_void) -> u32;
    fn c_netfront_put_tx(
        f: *mut c_void,
        gref: u32,
        offset: u16,
        flags: u16,
        id: u16,
        size: u16,
    ) -> i32;
    fn c_netfront_put_tx_gso(f: *mut c_void, size: u16, gso_type: u8, flags: u8) -> i32;
    fn c_netfront_push_tx(f: *mut c_void) -> i32;
    fn c_netfront_pop_tx(f: *mut c_void, id: *mut u16, status: *mut i16) -> i32;
    fn c_netfront_final_check_tx(f: *mut c_void) -> i32;
    fn c_netfront_put_rx(f: *mut c_void, id: u16, gref: u32) -> i32;
    fn c_netfront_push_rx(f: *mut c_void) -> i32;
    fn c_netfront_pop_rx(f: *mut c_void, out: *mut u8) -> i32;
}

#[derive(Default)]
struct Counter(AtomicU64);
impl EventChannel for Counter {
    fn notify(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A received packet: its bytes, the first response's flags, the GSO extra's (size, type).
type Received = (Vec<u8>, NetRxFlags, Option<(u16, u8)>);

/// A guest with a C netfront: its ring pages, 20 TX pages and 64 RX pages, all granted.
struct CFront {
    guest: Arc<TestGuest>,
    state: Vec<u64>,
    tx_ref: u32,
    rx_ref: u32,
    tx_pages: Vec<(u32, u32)>,
    rx_pages: Vec<(u32, u32)>,
    /// RX buffers not posted.
    rx_free: Vec<u16>,
    /// Posted RX buffers in ring order: each response slot (data or extra) answers the next one.
    rx_posted: std::collections::VecDeque<u16>,
}

impl CFront {
    fn new(domid: u16) -> Self {
        let guest = TestGuest::new(domid, 0, 512, 4);
        let (txf, rxf) = (guest.alloc_pages(1), guest.alloc_pages(1));
        // SAFETY: c_netfront_size is a pure C function.
        let words = unsafe { c_netfront_size() }.div_ceil(8);
        let mut state = vec![0u64; words];
        // SAFETY: `state` holds at least c_netfront_size() bytes, 8-aligned; the two pages are guest
        // memory that `guest` keeps mapped for as long as this front end lives.
        let size = unsafe {
            c_netfront_init(
                state.as_mut_ptr().cast(),
                guest.page_ptr(txf).cast(),
                guest.page_ptr(rxf).cast(),
            )
        };
        assert_eq!(size, 256);
        let tx_ref = guest.grant(txf, false);
        let rx_ref = guest.grant(rxf, false);
        let tx_pages = (0..20)
            .map(|_| {
                let f = guest.alloc_pages(1);
                (f, guest.grant(f, true))
            })
            .collect();
        let rx_pages = (0..64)
            .map(|_| {
                let f = guest.alloc_pages(1);
                (f, guest.grant(f, false))
            })
            .collect();
        Self {
            guest,
            state,
            tx_ref,
            rx_ref,
            tx_pages,
            rx_pages,
            rx_free: (0..64).collect(),
            rx_posted: std::collections::VecDeque::new(),
        }
    }

    fn f(&mut self) -> *mut c_void {
        self.state.as_mut_ptr().cast()
    }

    fn back(&self, port: SwitchPort) -> NetQueue<GrantedRing, SwitchPort> {
        let grants: Arc<dyn GrantAccess> = Arc::new(self.guest.grants.clone());
        let d = self.guest.domid;
        let tx = GrantedRing::map(&*grants, d, &[self.tx_ref]).unwrap();
        let rx = GrantedRing::map(&*grants, d, &[self.rx_ref]).unwrap();
        let ev: Arc<dyn EventChannel> = Arc::new(Counter::default());
        NetQueue::new(
            d,
            grants,
            tx,
            rx,
            ev.clone(),
            ev,
            port,
            NetQueueConfig::default(),
        )
        .unwrap()
    }

    /// Writes `data` into TX pages (4096 bytes each) and queues it, with a GSO extra if asked.
    fn send(&mut self, data: &[u8], flags: NetTxFlags, gso: Option<u16>) {
        let pieces: Vec<&[u8]> = data.chunks(4096).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let (frame, gref) = self.tx_pages[i];
            self.guest.write(frame, 0, piece);
            let mut fl = if i == 0 { flags } else { NetTxFlags::empty() };
            if i + 1 < pieces.len() {
                fl |= NetTxFlags::MORE_DATA;
            }
            if i == 0 && gso.is_some() {
                fl |= NetTxFlags::EXTRA_INFO;
            }
            let size = if i == 0 { data.len() } else { piece.len() } as u16;
            let f = self.f();
            // SAFETY: `f` is this front end's initialised ring state.
            let rc = unsafe { c_netfront_put_tx(f, gref, 0, fl.bits(), i as u16, size) };
            assert_eq!(rc, 0);
            if i == 0
                && let Some(s) = gso
            {
                // SAFETY: as above.
                let rc = unsafe { c_netfront_put_tx_gso(f, s, XEN_NETIF_GSO_TYPE_TCPV4, 0) };
                assert_eq!(rc, 0);
            }
        }
        let f = self.f();
        // SAFETY: as above.
        unsafe { c_netfront_push_tx(f) };
    }

    fn tx_responses(&mut self) -> Vec<(u16, i16)> {
        let f = self.f();
        let mut out = Vec::new();
        let (mut id, mut status) = (0u16, 0i16);
        // SAFETY: `f` is initialised; the outputs are valid locals.
        while unsafe { c_netfront_pop_tx(f, &mut id, &mut status) } == 1 {
            out.push((id, status));
        }
        // SAFETY: as above.
        assert_eq!(unsafe { c_netfront_final_check_tx(f) }, 0);
        out
    }

    fn post_rx(&mut self) {
        let f = self.f();
        while let Some(id) = self.rx_free.pop() {
            let gref = self.rx_pages[usize::from(id)].1;
            // SAFETY: `f` is initialised.
            assert_eq!(unsafe { c_netfront_put_rx(f, id, gref) }, 0);
            self.rx_posted.push_back(id);
        }
        // SAFETY: as above.
        unsafe { c_netfront_push_rx(f) };
    }

    /// Reads one received packet: bytes, first flags, GSO extra's (size, type).
    fn recv(&mut self) -> Option<Received> {
        let f = self.f();
        let mut raw = [0u8; 8];
        let pop = |raw: &mut [u8; 8]| {
            // SAFETY: `f` is initialised and `raw` holds 8 bytes.
            (unsafe { c_netfront_pop_rx(f, raw.as_mut_ptr()) } == 1).then(|| {
                <NetifRxResponse as zerocopy::FromBytes>::read_from_bytes(&raw[..]).unwrap()
            })
        };
        let first = pop(&mut raw)?;
        let flags = first.rx_flags();
        let mut data = Vec::new();
        let mut gso = None;
        let mut rsp = first;
        loop {
            let len = rsp.received().expect("error response") as usize;
            let slot = self
                .rx_posted
                .pop_front()
                .expect("a response without a request");
            assert_eq!(rsp.id, slot, "a response in another request's slot");
            self.rx_free.push(slot);
            let frame = self.rx_pages[usize::from(rsp.id)].0;
            data.extend(self.guest.read(frame, usize::from(rsp.offset), len));
            if rsp.rx_flags().contains(NetRxFlags::EXTRA_INFO) {
                // The extra's slot consumed a posted buffer too (its id is the next request's).
                let e = pop(&mut raw).expect("missing extra").as_extra_info();
                self.rx_free.extend(self.rx_posted.pop_front());
                gso = Some((e.u.gso().size, e.u.gso().r#type));
            }
            if !rsp.rx_flags().contains(NetRxFlags::MORE_DATA) {
                return Some((data, flags, gso));
            }
            rsp = pop(&mut raw).expect("chain cut short");
        }
    }
}

fn tcp4(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[15] = 0;
    f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    f[20..22].copy_from_slice(&[0, 0]);
    f[23] = 6;
    f[46] = 5 << 4;
    f
}

#[test]
fn c_netfronts_exchange_frames_through_netback_and_the_switch() {
    let sw = Switch::new(SwitchConfig::default()).unwrap();
    let (mut a, mut b) = (CFront::new(1), CFront::new(2));
    let mut qa = a.back(sw.add_port());
    let mut qb = b.back(sw.add_port());
    b.post_rx();
    let (ma, mb) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    for len in [60usize, 1514, 5000, 20_000] {
        let f = tcp4(mb, ma, len);
        a.send(&f, NetTxFlags::empty(), None);
        qa.process(Instant::now()).unwrap();
        qb.process(Instant::now()).unwrap();
        let rsps = a.tx_responses();
        assert_eq!(rsps.len(), len.div_ceil(4096));
        assert!(
            rsps.iter()
                .enumerate()
                .all(|(i, (id, st))| *id == i as u16 && *st == NETIF_RSP_OKAY)
        );
        let (got, flags, gso) = b.recv().expect("B received nothing");
        assert!(got == f, "B's frame of {len} bytes differs");
        assert_eq!(
            flags & (NetRxFlags::CSUM_BLANK | NetRxFlags::DATA_VALIDATED),
            NetRxFlags::empty()
        );
        assert!(gso.is_none());
        b.post_rx();
    }
    // A GSO packet with a blank checksum: the extra's response is NETIF_RSP_NULL, B sees the GSO extra
    // and csum_blank | data_validated.
    let f = tcp4(mb, ma, 60_000);
    a.send(&f, NetTxFlags::CSUM_BLANK, Some(1448));
    qa.process(Instant::now()).unwrap();
    qb.process(Instant::now()).unwrap();
    let rsps = a.tx_responses();
    assert_eq!(rsps[0].1, NETIF_RSP_OKAY);
    assert_eq!(rsps[1].1, NETIF_RSP_NULL);
    assert!(rsps[2..].iter().all(|(_, st)| *st == NETIF_RSP_OKAY));
    let (got, flags, gso) = b.recv().expect("B received nothing");
    assert!(got == f);
    assert!(flags.contains(NetRxFlags::CSUM_BLANK | NetRxFlags::DATA_VALIDATED));
    assert_eq!(gso, Some((1448, XEN_NETIF_GSO_TYPE_TCPV4)));
}
