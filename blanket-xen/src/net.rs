//! netfront: the guest side of a Xen virtual network interface (`io/netif.h`), one queue, receive by
//! copy (`feature-rx-copy`), scatter-gather on both rings when the back-end offers `feature-sg`.
//!
//! [`NetFront::connect`] reads `<node>/mac`, waits for the back-end's InitWait, reads `feature-rx-copy`
//! (required), `feature-sg` and `multi-queue-max-queues`, grants the TX and RX rings, allocates one event
//! channel, and writes `tx-ring-ref`, `rx-ring-ref`, `event-channel`, `request-rx-copy`, `feature-rx-notify`
//! and `feature-sg` in one transaction; then Initialised, the back-end's Connected, and Connected.
//!
//! Buffers are driver-owned pages (the `pool`), each granted once for the driver's lifetime: RX pages
//! writable, TX pages read-only. A frame to send is copied into TX pages (one slot per 4096 bytes, at most
//! 18 slots, `NETTXF_more_data` on all but the last); received data is copied out of RX pages once, into
//! the caller's buffer, and the pages are posted again.
//!
//! Everything the back-end writes is checked: a TX response must name a TX buffer in flight and carry a
//! `NETIF_RSP_*` status (`NETIF_RSP_NULL` only answers extra-info slots, which we never send); an RX
//! response must answer the request posted in the same ring slot (as netback does), fit its page
//! (`offset + size <= 4096`), and a packet must end within 18 slots; extra-info slots must have a known
//! type. A hostile response is a typed [`NetError`] and the packet it belongs to is dropped; a ring whose
//! `rsp_prod` overflows stops the device.

use xen_abi::DomId;
use xen_abi::event_channel::EvtchnPort;
use xen_abi::grant_table::GrantRef;
use xen_abi::netif::{
    ETH_HLEN, MacAddr, NETIF_RSP_DROPPED, NETIF_RSP_ERROR, NETIF_RSP_OKAY, NetRxFlags, NetTxFlags,
    NetifExtraInfo, NetifRx, NetifRxRequest, NetifRxResponse, NetifTx, NetifTxRequest,
    XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_MAX, XEN_NETIF_MAX_TX_SIZE,
    XEN_NETIF_NR_SLOTS_MIN,
};
use xen_abi::ring::{FrontRing, RingError, RingMemory, ring_entries};
use xen_abi::xenbus::XenbusState;
use xen_abi::xs_wire::XsErrno;
use xen_abi::{XEN_PAGE_SIZE, xenbus};

use crate::platform::{Platform, PlatformError};
use crate::shmem;
use crate::xenbus::{FrontendDevice, XBT_NIL, XenBus, XenBusError, fmt_decimal};

/// Slots of the one-page TX ring: 256.
pub const NET_TX_RING_SIZE: usize = ring_entries::<NetifTx>(XEN_PAGE_SIZE) as usize;
/// Slots of the one-page RX ring: 256.
pub const NET_RX_RING_SIZE: usize = ring_entries::<NetifRx>(XEN_PAGE_SIZE) as usize;
/// The most slots one packet takes on either ring (`XEN_NETIF_NR_SLOTS_MIN`).
pub const MAX_SLOTS_PER_PACKET: usize = XEN_NETIF_NR_SLOTS_MIN;
const TX_RETRIES: usize = 16;

/// What can go wrong in netfront.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// XenStore failed during the handshake.
    #[error("xenbus: {0}")]
    XenBus(#[from] XenBusError),
    /// The platform failed.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// A shared ring failed; an overflowing `rsp_prod` stops the device.
    #[error("netif ring: {0}")]
    Ring(#[from] RingError),
    /// A node is missing, malformed, or out of range.
    #[error("node {key} is {what}")]
    BadNode {
        /// The node.
        key: &'static str,
        /// What is wrong.
        what: &'static str,
    },
    /// The back-end lacks a feature this driver needs.
    #[error("the back-end does not offer {feature}, which netfront needs")]
    NotOffered {
        /// The feature node.
        feature: &'static str,
    },
    /// The back-end went to a state the handshake does not allow at this point.
    #[error("back-end went to {state} while the front-end was {front}")]
    BackendState {
        /// The back-end's state.
        state: XenbusState,
        /// Ours.
        front: XenbusState,
    },
    /// A configuration or pool that cannot work.
    #[error(
        "{rx} RX and {tx} TX buffers need {need} pool pages, {pages} were given (each count 1 to 256)"
    )]
    BadPool {
        /// RX buffers asked for.
        rx: usize,
        /// TX buffers asked for.
        tx: usize,
        /// Pages needed.
        need: usize,
        /// Pages given.
        pages: usize,
    },
    /// A frame this driver will not send: shorter than an Ethernet header, longer than 65535 bytes, or
    /// needing more slots than a packet may take (or than one, without `feature-sg`).
    #[error("frame of {len} bytes cannot be sent (14 to {max} bytes)")]
    BadFrame {
        /// The frame's length.
        len: usize,
        /// The longest frame that can be sent.
        max: usize,
    },
    /// Not enough free TX buffers or ring slots now: reap completions and retry.
    #[error("no room to send: {needed} TX slots needed, {free} free")]
    TxFull {
        /// Slots needed.
        needed: usize,
        /// Slots free.
        free: usize,
    },
    /// Hostile back-end: a TX response naming no TX buffer in flight.
    #[error("back-end answered TX id {id}, which is not in flight")]
    BadTxId {
        /// The id.
        id: u16,
    },
    /// Hostile back-end: a TX response with a status that is not OKAY, ERROR or DROPPED.
    #[error("back-end answered TX id {id} with status {status}")]
    BadTxStatus {
        /// The id.
        id: u16,
        /// The status.
        status: i16,
    },
    /// Hostile back-end: an RX response whose id is not that of the request posted in its slot.
    #[error("back-end answered RX slot holding buffer {want} with id {got}")]
    BadRxId {
        /// The buffer posted in that slot.
        want: u16,
        /// The id answered.
        got: u16,
    },
    /// Hostile back-end: an RX fragment outside its page.
    #[error("back-end's RX fragment at offset {offset} of {size} bytes runs past the page")]
    BadRxFragment {
        /// Offset.
        offset: u16,
        /// Size.
        size: u16,
    },
    /// Hostile back-end: a packet whose fragments run past 18 slots (a missing final fragment).
    #[error("back-end's RX packet runs past {max} slots without a final fragment")]
    RxTooManySlots {
        /// The limit.
        max: usize,
    },
    /// Hostile back-end: an extra-info slot of an unknown type (0, or 5 and above).
    #[error("back-end's RX extra info has type {extra_type}, which netif.h does not define")]
    BadRxExtra {
        /// The type.
        extra_type: u8,
    },
    /// A received packet shorter than an Ethernet header; dropped.
    #[error("back-end delivered a packet of {len} bytes, shorter than an Ethernet header")]
    RxRunt {
        /// Its length.
        len: usize,
    },
    /// The back-end reported an error or a drop for an RX packet; dropped.
    #[error("back-end reported status {status} for a received packet")]
    RxStatus {
        /// The status.
        status: i16,
    },
    /// A received packet larger than the caller's buffer; dropped.
    #[error("received packet of {len} bytes does not fit the buffer of {available}")]
    BufferTooSmall {
        /// The packet's length.
        len: usize,
        /// The buffer's length.
        available: usize,
    },
    /// An earlier ring error stopped the device.
    #[error("the device is stopped by an earlier ring error")]
    Stopped,
}

/// How the driver is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// RX buffers (pages) kept posted: 1 to 256.
    pub rx_buffers: usize,
    /// TX buffers (pages): 1 to 256.
    pub tx_buffers: usize,
    /// Timeout of every handshake step and blocking call, in nanoseconds.
    pub timeout_ns: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            rx_buffers: 64,
            tx_buffers: 64,
            timeout_ns: 5_000_000_000,
        }
    }
}

/// What the back-end offers and what the toolstack set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetInfo {
    /// The interface's MAC address (`<node>/mac`).
    pub mac: MacAddr,
    /// `feature-sg`.
    pub sg: bool,
    /// `feature-gso-tcpv4` (read, not used).
    pub gso_tcpv4: bool,
    /// `multi-queue-max-queues` (1 when absent; one queue is used).
    pub max_queues: u32,
}

/// Counters of what the driver dropped or saw fail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames sent.
    pub tx_packets: u64,
    /// TX slots answered with an error or a drop.
    pub tx_errors: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Received packets dropped (error status, runt, too large, hostile).
    pub rx_dropped: u64,
    /// TX responses refused as hostile (an id not in flight, an unknown status).
    pub tx_bad_responses: u64,
}

fn parse_mac(v: &[u8]) -> Option<MacAddr> {
    let v = v.strip_suffix(b"\0").unwrap_or(v);
    if v.len() != 17 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, byte) in mac.iter_mut().enumerate() {
        let hex = v.get(i * 3..i * 3 + 2)?;
        if i < 5 && v.get(i * 3 + 2) != Some(&b':') {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        *byte = digit(hex[0])? << 4 | digit(hex[1])?;
    }
    Some(mac)
}

/// A received fragment waiting for the rest of its packet.
#[derive(Debug, Clone, Copy, Default)]
struct Frag {
    buf: u16,
    offset: u16,
    size: u16,
}

/// A connected netfront.
pub struct NetFront<P, M, B> {
    platform: P,
    tx: FrontRing<M, NetifTx>,
    rx: FrontRing<M, NetifRx>,
    tx_ref: GrantRef,
    rx_ref: GrantRef,
    port: EvtchnPort,
    device: FrontendDevice,
    info: NetInfo,
    pool: B,
    nrx: usize,
    ntx: usize,
    rx_grefs: [GrantRef; NET_RX_RING_SIZE],
    rx_posted: [bool; NET_RX_RING_SIZE],
    /// The buffer posted in each RX ring slot.
    rx_slot_buf: [u16; NET_RX_RING_SIZE],
    tx_grefs: [GrantRef; NET_TX_RING_SIZE],
    tx_busy: [bool; NET_TX_RING_SIZE],
    frags: [Frag; MAX_SLOTS_PER_PACKET],
    nfrags: usize,
    in_packet: bool,
    expect_extra: bool,
    /// The packet being assembled is dropped, with this error.
    dropping: Option<NetError>,
    stats: NetStats,
    timeout_ns: u64,
    stopped: bool,
}

impl<P, M, B> core::fmt::Debug for NetFront<P, M, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NetFront")
            .field("device", &self.device)
            .field("info", &self.info)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn backend_number<P: Platform, XM: RingMemory>(
    xb: &mut XenBus<P, XM>,
    dev: &FrontendDevice,
    key: &'static str,
) -> Result<Option<u64>, NetError> {
    match dev.backend_u64(xb, key.as_bytes()) {
        Ok(v) => Ok(v),
        Err(XenBusError::NotNumeric { .. }) => Err(NetError::BadNode {
            key,
            what: "not a decimal number",
        }),
        Err(XenBusError::Xs(XsErrno::EACCES)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl<P: Platform, M: RingMemory, B: RingMemory> NetFront<P, M, B> {
    /// Connects to the back-end of the vif at `node` (for example `device/vif/0`), with `tx_page` and
    /// `rx_page` as the rings and `pool` (page-aligned memory of this domain) holding
    /// `rx_buffers + tx_buffers` pages.
    ///
    /// On an error after the rings were published, the grants are ended where the back-end let go; a page
    /// it still maps stays granted and must not be reused (the error does not say which: treat the ring and
    /// pool memory as lost to the back-end).
    pub fn connect<XM: RingMemory>(
        platform: P,
        xb: &mut XenBus<P, XM>,
        node: &[u8],
        tx_page: M,
        rx_page: M,
        pool: B,
        config: NetConfig,
    ) -> Result<Self, NetError> {
        let pages = pool.len() / XEN_PAGE_SIZE;
        let need = config.rx_buffers + config.tx_buffers;
        if !(1..=NET_RX_RING_SIZE).contains(&config.rx_buffers)
            || !(1..=NET_TX_RING_SIZE).contains(&config.tx_buffers)
            || pages < need
            || (pool.as_ptr() as usize) % XEN_PAGE_SIZE != 0
        {
            return Err(NetError::BadPool {
                rx: config.rx_buffers,
                tx: config.tx_buffers,
                need,
                pages,
            });
        }
        let timeout = config.timeout_ns;
        let mut dev = FrontendDevice::probe(xb, node)?;
        let mut macbuf = [0u8; 32];
        let mac = match xb.read(XBT_NIL, dev.node().join(b"mac")?.as_bytes(), &mut macbuf) {
            Ok(n) => parse_mac(&macbuf[..n]).ok_or(NetError::BadNode {
                key: "mac",
                what: "not a MAC address aa:bb:cc:dd:ee:ff",
            })?,
            Err(XenBusError::Xs(XsErrno::ENOENT)) => {
                return Err(NetError::BadNode {
                    key: "mac",
                    what: "missing",
                });
            }
            Err(XenBusError::BufferTooSmall { .. }) => {
                return Err(NetError::BadNode {
                    key: "mac",
                    what: "not a MAC address aa:bb:cc:dd:ee:ff",
                });
            }
            Err(e) => return Err(e.into()),
        };
        let backend: DomId = dev.backend_id();
        let front = dev.state();
        let state_error = move |e: XenBusError| match e {
            XenBusError::State(xenbus::XenbusError::IllegalTransition { to, .. }) => {
                NetError::BackendState { state: to, front }
            }
            e => e.into(),
        };
        dev.wait_for_backend(
            xb,
            |s| matches!(s, XenbusState::InitWait | XenbusState::Initialised),
            |s| {
                matches!(
                    s,
                    XenbusState::Connected | XenbusState::Closing | XenbusState::Closed
                )
            },
            timeout,
        )
        .map_err(state_error)?;
        if backend_number(xb, &dev, "feature-rx-copy")?.unwrap_or(0) == 0 {
            return Err(NetError::NotOffered {
                feature: "feature-rx-copy",
            });
        }
        let sg = backend_number(xb, &dev, "feature-sg")?.unwrap_or(0) != 0;
        let gso_tcpv4 = backend_number(xb, &dev, "feature-gso-tcpv4")?.unwrap_or(0) != 0;
        let max_queues = match backend_number(xb, &dev, "multi-queue-max-queues")? {
            None => 1,
            Some(0) => {
                return Err(NetError::BadNode {
                    key: "multi-queue-max-queues",
                    what: "0 (at least one queue is needed)",
                });
            }
            Some(n) => u32::try_from(n).map_err(|_| NetError::BadNode {
                key: "multi-queue-max-queues",
                what: "larger than 2^32 - 1",
            })?,
        };
        let info = NetInfo {
            mac,
            sg,
            gso_tcpv4,
            max_queues,
        };

        // Rings, their grants, the event channel and the buffers' grants.
        let tx = FrontRing::<M, NetifTx>::new(tx_page)?;
        let rx = FrontRing::<M, NetifRx>::new(rx_page)?;
        let mut granted: [GrantRef; NET_RX_RING_SIZE + NET_TX_RING_SIZE + 2] =
            [0; NET_RX_RING_SIZE + NET_TX_RING_SIZE + 2];
        let mut ngranted = 0;
        let mut port = None;
        let result = (|| -> Result<(), NetError> {
            for (mem, readonly) in [
                (tx.memory().as_ptr() as usize, false),
                (rx.memory().as_ptr() as usize, false),
            ] {
                let f = platform.frame_of(mem)?;
                granted[ngranted] = platform.grant_access(backend, f, readonly)?;
                ngranted += 1;
            }
            for page in 0..need {
                let f = platform.frame_of(pool.as_ptr() as usize + page * XEN_PAGE_SIZE)?;
                // RX pages are written by the back-end, TX pages only read.
                let readonly = page >= config.rx_buffers;
                granted[ngranted] = platform.grant_access(backend, f, readonly)?;
                ngranted += 1;
            }
            port = Some(platform.alloc_unbound(backend)?);
            Ok(())
        })();
        let cleanup = |platform: &P, granted: &[GrantRef], port: Option<EvtchnPort>| {
            if let Some(p) = port {
                let _ = platform.close(p);
            }
            for g in granted {
                let _ = platform.end_access(*g);
            }
        };
        if let Err(e) = result {
            cleanup(&platform, &granted[..ngranted], port);
            return Err(e);
        }
        let port = port.unwrap_or(0);
        let (tx_ref, rx_ref) = (granted[0], granted[1]);
        let publish = (|| -> Result<(), NetError> {
            Self::publish(xb, &dev, tx_ref, rx_ref, port, sg)?;
            dev.switch_state(xb, XBT_NIL, XenbusState::Initialised)?;
            let front = dev.state();
            dev.wait_for_backend(
                xb,
                |s| s == XenbusState::Connected,
                |s| {
                    matches!(
                        s,
                        XenbusState::Closing
                            | XenbusState::Closed
                            | XenbusState::Initialising
                            | XenbusState::Unknown
                    )
                },
                timeout,
            )
            .map_err(|e| match e {
                XenBusError::State(xenbus::XenbusError::IllegalTransition { to, .. }) => {
                    NetError::BackendState { state: to, front }
                }
                e => e.into(),
            })?;
            dev.switch_state(xb, XBT_NIL, XenbusState::Connected)?;
            Ok(())
        })();
        if let Err(e) = publish {
            let _ = dev.switch_state(xb, XBT_NIL, XenbusState::Closing);
            cleanup(&platform, &granted[..ngranted], Some(port));
            return Err(e);
        }
        let mut rx_grefs = [0; NET_RX_RING_SIZE];
        rx_grefs[..config.rx_buffers].copy_from_slice(&granted[2..2 + config.rx_buffers]);
        let mut tx_grefs = [0; NET_TX_RING_SIZE];
        tx_grefs[..config.tx_buffers].copy_from_slice(&granted[2 + config.rx_buffers..2 + need]);
        let mut net = Self {
            platform,
            tx,
            rx,
            tx_ref,
            rx_ref,
            port,
            device: dev,
            info,
            pool,
            nrx: config.rx_buffers,
            ntx: config.tx_buffers,
            rx_grefs,
            rx_posted: [false; NET_RX_RING_SIZE],
            rx_slot_buf: [0; NET_RX_RING_SIZE],
            tx_grefs,
            tx_busy: [false; NET_TX_RING_SIZE],
            frags: [Frag::default(); MAX_SLOTS_PER_PACKET],
            nfrags: 0,
            in_packet: false,
            expect_extra: false,
            dropping: None,
            stats: NetStats::default(),
            timeout_ns: timeout,
            stopped: false,
        };
        net.refill()?;
        Ok(net)
    }

    fn publish<XM: RingMemory>(
        xb: &mut XenBus<P, XM>,
        dev: &FrontendDevice,
        tx_ref: GrantRef,
        rx_ref: GrantRef,
        port: EvtchnPort,
        sg: bool,
    ) -> Result<(), NetError> {
        let node = dev.node();
        let (mut a, mut b, mut c) = ([0u8; 20], [0u8; 20], [0u8; 20]);
        let values: [(&[u8], &[u8]); 6] = [
            (b"tx-ring-ref", fmt_decimal(u64::from(tx_ref), &mut a)),
            (b"rx-ring-ref", fmt_decimal(u64::from(rx_ref), &mut b)),
            (b"event-channel", fmt_decimal(u64::from(port), &mut c)),
            (b"request-rx-copy", b"1"),
            (b"feature-rx-notify", b"1"),
            (b"feature-sg", if sg { b"1" } else { b"0" }),
        ];
        // Bounded: a few retries when the transaction conflicts.
        for _ in 0..TX_RETRIES {
            let tx = xb.transaction_start()?;
            let mut writes = Ok(());
            for (key, value) in values {
                writes = node
                    .join(key)
                    .and_then(|p| xb.write(tx, p.as_bytes(), value));
                if writes.is_err() {
                    break;
                }
            }
            if let Err(e) = writes {
                if !e.is_fatal() {
                    let _ = xb.transaction_end(tx, false);
                }
                return Err(e.into());
            }
            match xb.transaction_end(tx, true) {
                Ok(()) => return Ok(()),
                Err(XenBusError::Xs(XsErrno::EAGAIN)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(XenBusError::Xs(XsErrno::EAGAIN).into())
    }

    /// Sets the timeout of the blocking calls from now on, in nanoseconds.
    pub fn set_timeout_ns(&mut self, timeout_ns: u64) {
        self.timeout_ns = timeout_ns;
    }

    /// What the back-end offers.
    pub fn info(&self) -> &NetInfo {
        &self.info
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The xenbus device.
    pub fn device(&self) -> &FrontendDevice {
        &self.device
    }

    /// The rings' grant references and the event channel.
    pub fn rings_and_port(&self) -> (GrantRef, GrantRef, EvtchnPort) {
        (self.tx_ref, self.rx_ref, self.port)
    }

    /// The longest frame [`send`](Self::send) takes: 65535 bytes with `feature-sg`, a page without.
    pub fn max_frame(&self) -> usize {
        if self.info.sg {
            usize::from(XEN_NETIF_MAX_TX_SIZE)
        } else {
            XEN_PAGE_SIZE
        }
    }

    fn rx_page(&self, buf: usize) -> usize {
        buf * XEN_PAGE_SIZE
    }

    fn tx_page(&self, buf: usize) -> usize {
        (self.nrx + buf) * XEN_PAGE_SIZE
    }

    /// Posts every RX buffer that is not posted.
    fn refill(&mut self) -> Result<(), NetError> {
        let mut posted = false;
        for b in 0..self.nrx {
            if self.rx_posted[b] || self.rx.is_full() {
                continue;
            }
            let slot = self.rx.req_prod_pvt() as usize % NET_RX_RING_SIZE;
            self.rx
                .put_request(&NetifRxRequest::new(b as u16, self.rx_grefs[b]))?;
            self.rx_slot_buf[slot] = b as u16;
            self.rx_posted[b] = true;
            posted = true;
        }
        if posted && self.rx.push_requests_and_check_notify() {
            self.platform.notify(self.port)?;
        }
        Ok(())
    }

    /// Reaps TX completions; returns how many slots were freed. The first hostile response is returned as
    /// an error after the ring is drained.
    pub fn reap_tx(&mut self) -> Result<usize, NetError> {
        if self.stopped {
            return Err(NetError::Stopped);
        }
        let mut freed = 0;
        let mut first_err = None;
        // Bounded: the ring refuses more responses than requests in flight.
        loop {
            let rsp = match self.tx.pop_response() {
                Err(e) => {
                    self.stopped = true;
                    return Err(e.into());
                }
                Ok(Some(r)) => r,
                Ok(None) => match self.tx.final_check_for_responses() {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        self.stopped = true;
                        return Err(e.into());
                    }
                },
            };
            let id = rsp.id;
            let b = usize::from(id);
            if b >= self.ntx || !self.tx_busy[b] {
                self.stats.tx_bad_responses += 1;
                first_err.get_or_insert(NetError::BadTxId { id });
                continue;
            }
            match rsp.status {
                NETIF_RSP_OKAY => {}
                NETIF_RSP_ERROR | NETIF_RSP_DROPPED => self.stats.tx_errors += 1,
                status => {
                    self.stats.tx_errors += 1;
                    self.stats.tx_bad_responses += 1;
                    first_err.get_or_insert(NetError::BadTxStatus { id, status });
                }
            }
            self.tx_busy[b] = false;
            freed += 1;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(freed),
        }
    }

    /// Sends one Ethernet frame (copied into TX pages now). Reaps TX completions first; hostile TX
    /// responses met there are counted in [`NetStats::tx_bad_responses`] and do not stop the send.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        let reaped = self.reap_tx();
        if let Err(NetError::Stopped | NetError::Ring(_)) = reaped {
            return reaped.map(|_| ());
        }
        let len = frame.len();
        let max = self.max_frame();
        if len < usize::from(ETH_HLEN) || len > max {
            return Err(NetError::BadFrame { len, max });
        }
        let needed = len.div_ceil(XEN_PAGE_SIZE);
        let free_bufs = self.tx_busy[..self.ntx].iter().filter(|b| !**b).count();
        let free = free_bufs.min(self.tx.free_requests() as usize);
        if needed > free {
            return Err(NetError::TxFull { needed, free });
        }
        let mut bufs = [0u16; MAX_SLOTS_PER_PACKET];
        let mut found = 0;
        for b in 0..self.ntx {
            if found == needed {
                break;
            }
            if !self.tx_busy[b] {
                bufs[found] = b as u16;
                found += 1;
            }
        }
        for (i, chunk) in frame.chunks(XEN_PAGE_SIZE).enumerate() {
            let b = usize::from(bufs[i]);
            shmem::write(&self.pool, self.tx_page(b), chunk);
            let more = i + 1 < needed;
            let flags = if more {
                NetTxFlags::MORE_DATA
            } else {
                NetTxFlags::empty()
            };
            // The first slot carries the whole packet's size; the others their fragment's.
            let size = if i == 0 { len } else { chunk.len() } as u16;
            let req = NetifTxRequest::new(self.tx_grefs[b], 0, flags, b as u16, size);
            self.tx.put_request(&req)?;
            self.tx_busy[b] = true;
        }
        if self.tx.push_requests_and_check_notify() {
            self.platform.notify(self.port)?;
        }
        self.stats.tx_packets += 1;
        Ok(())
    }

    fn drop_packet(&mut self, e: NetError) {
        if self.dropping.is_none() {
            self.dropping = Some(e);
        }
    }

    /// Receives one packet into `buf`: `Ok(Some(len))`, or `Ok(None)` when no complete packet is waiting.
    /// A packet the back-end got wrong (or that does not fit `buf`) is dropped and its error returned; call
    /// again for the next one.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        if self.stopped {
            return Err(NetError::Stopped);
        }
        // Bounded: each round consumes one response, and the ring refuses more than were posted.
        loop {
            let slot = self.rx.rsp_cons() as usize % NET_RX_RING_SIZE;
            let rsp = match self.rx.pop_response() {
                Err(e) => {
                    self.stopped = true;
                    return Err(e.into());
                }
                Ok(Some(r)) => r,
                Ok(None) => match self.rx.final_check_for_responses() {
                    Ok(true) => continue,
                    Ok(false) => return Ok(None),
                    Err(e) => {
                        self.stopped = true;
                        return Err(e.into());
                    }
                },
            };
            // The response answers the buffer posted in its slot, whatever it says.
            let posted = self.rx_slot_buf[slot];
            let done = self.rx_slot(posted, &rsp, buf);
            self.refill()?;
            if let Some(done) = done {
                return done;
            }
        }
    }

    /// Gives the buffers of the packet being assembled back for posting.
    fn release_frags(&mut self) {
        for f in &self.frags[..self.nfrags] {
            if let Some(p) = self.rx_posted.get_mut(usize::from(f.buf)) {
                *p = false;
            }
        }
        self.nfrags = 0;
    }

    /// Handles one RX response; `Some` when a packet ended (delivered or dropped). The buffer of the slot
    /// is kept while it holds a fragment of the packet, and given back otherwise.
    fn rx_slot(
        &mut self,
        posted: u16,
        rsp: &NetifRxResponse,
        buf: &mut [u8],
    ) -> Option<Result<Option<usize>, NetError>> {
        let mut held = false;
        let more;
        if self.expect_extra {
            let extra: NetifExtraInfo = zerocopy::transmute!(*rsp);
            if extra.r#type == 0 || extra.r#type >= XEN_NETIF_EXTRA_TYPE_MAX {
                self.drop_packet(NetError::BadRxExtra {
                    extra_type: extra.r#type,
                });
            }
            self.expect_extra = extra.flags & XEN_NETIF_EXTRA_FLAG_MORE != 0;
            // The data fragments follow the extras.
            more = true;
        } else {
            let first = !self.in_packet;
            self.in_packet = true;
            let flags = NetRxFlags::from_bits_retain(rsp.flags);
            more = flags.contains(NetRxFlags::MORE_DATA);
            if first && flags.contains(NetRxFlags::EXTRA_INFO) {
                self.expect_extra = true;
            }
            if rsp.id != posted {
                self.drop_packet(NetError::BadRxId {
                    want: posted,
                    got: rsp.id,
                });
            } else if rsp.status < 0 {
                self.drop_packet(NetError::RxStatus { status: rsp.status });
            } else if usize::from(rsp.offset) + rsp.status as usize > XEN_PAGE_SIZE {
                self.drop_packet(NetError::BadRxFragment {
                    offset: rsp.offset,
                    size: rsp.status as u16,
                });
            } else if self.nfrags == MAX_SLOTS_PER_PACKET {
                self.drop_packet(NetError::RxTooManySlots {
                    max: MAX_SLOTS_PER_PACKET,
                });
            } else if self.dropping.is_none() {
                self.frags[self.nfrags] = Frag {
                    buf: posted,
                    offset: rsp.offset,
                    size: rsp.status as u16,
                };
                self.nfrags += 1;
                held = true;
            }
        }
        if self.dropping.is_some() {
            // A dropped packet holds no buffer: a chain that never ends only cycles the buffers.
            self.release_frags();
        }
        if !held && let Some(p) = self.rx_posted.get_mut(usize::from(posted)) {
            *p = false;
        }
        if more || self.expect_extra {
            return None;
        }
        self.in_packet = false;
        if let Some(e) = self.dropping.take() {
            self.release_frags();
            self.stats.rx_dropped += 1;
            return Some(Err(e));
        }
        let nfrags = self.nfrags;
        let len: usize = self.frags[..nfrags]
            .iter()
            .map(|f| usize::from(f.size))
            .sum();
        let result = if len < usize::from(ETH_HLEN) {
            Err(NetError::RxRunt { len })
        } else if len > buf.len() {
            Err(NetError::BufferTooSmall {
                len,
                available: buf.len(),
            })
        } else {
            let mut at = 0;
            for f in &self.frags[..nfrags] {
                let size = usize::from(f.size);
                let off = self.rx_page(usize::from(f.buf)) + usize::from(f.offset);
                shmem::read(&self.pool, off, &mut buf[at..at + size]);
                at += size;
            }
            Ok(Some(len))
        };
        self.release_frags();
        match result {
            Ok(_) => self.stats.rx_packets += 1,
            Err(_) => self.stats.rx_dropped += 1,
        }
        Some(result)
    }

    /// Waits up to the timeout for a packet and receives it as [`recv`](Self::recv) does.
    pub fn recv_wait(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        let deadline = self.platform.now_ns().saturating_add(self.timeout_ns);
        // Bounded by the deadline.
        loop {
            if let Some(n) = self.recv(buf)? {
                return Ok(Some(n));
            }
            let now = self.platform.now_ns();
            if now >= deadline {
                return Ok(None);
            }
            self.platform.wait(self.port, deadline - now)?;
        }
    }

    /// Sends a frame, waiting (up to the timeout) for TX room if the ring or the buffers are full.
    pub fn send_wait(&mut self, frame: &[u8]) -> Result<(), NetError> {
        let deadline = self.platform.now_ns().saturating_add(self.timeout_ns);
        loop {
            match self.send(frame) {
                Err(NetError::TxFull { needed, free }) => {
                    let now = self.platform.now_ns();
                    if now >= deadline {
                        return Err(NetError::TxFull { needed, free });
                    }
                    self.platform.wait(self.port, deadline - now)?;
                }
                other => return other,
            }
        }
    }

    /// Closes the interface: `state` Closing, the back-end followed to Closing or Closed (within the
    /// timeout), `state` Closed, the event channel closed, and every grant ended. A grant the back-end still
    /// maps is reported ([`PlatformError::GrantInUse`]) after the others are ended; its page must not be
    /// reused.
    pub fn close<XM: RingMemory>(mut self, xb: &mut XenBus<P, XM>) -> Result<(), NetError> {
        self.device
            .switch_state(xb, XBT_NIL, XenbusState::Closing)?;
        let _ = self.device.wait_for_backend(
            xb,
            |s| s.is_closing_or_closed(),
            |_| false,
            self.timeout_ns,
        );
        self.device.switch_state(xb, XBT_NIL, XenbusState::Closed)?;
        self.platform.close(self.port)?;
        let mut first = Ok(());
        let pages = self.rx_grefs[..self.nrx]
            .iter()
            .chain(&self.tx_grefs[..self.ntx])
            .chain([&self.tx_ref, &self.rx_ref]);
        for gref in pages {
            if let Err(e) = self.platform.end_access(*gref)
                && first.is_ok()
            {
                first = Err(e.into());
            }
        }
        first
    }

    /// TX slots in flight.
    pub fn tx_in_flight(&self) -> usize {
        self.tx_busy[..self.ntx].iter().filter(|b| **b).count()
    }
}
