//! netback's ring side: one queue's TX and RX rings (`io/netif.h`) served to a [`NetDevice`].
//!
//! - **TX** (guest to device): each request slot is copied off the ring once and fed to
//!   [`TxPacketParser`], which validates the slot chain and its extras (bounded by the slots the ring
//!   holds). The packet's fragments are then copied out of their granted pages (mapped read-only,
//!   once each) into one frame, its offload metadata is taken from `NETTXF_csum_blank` /
//!   `NETTXF_data_validated` and the GSO extra, and the frame goes to the device. Every slot gets
//!   its response (extras `NETIF_RSP_NULL`, as Linux). A chain the parser refuses is answered with
//!   `NETIF_RSP_ERROR` for every slot it consumed and the queue is disconnected (Linux netback's
//!   `xenvif_fatal_tx_err`); a fragment whose grant does not map is answered with an error and the
//!   queue goes on. Multicast control requests update a bounded [`MulticastFilter`].
//! - **RX** (device to guest, `feature-rx-copy`): frames from the device wait in a queue bounded in
//!   frames ([`NetQueueConfig::rx_queue_frames`]). A frame starts only when the front end has posted
//!   all the slots it needs ([`rx_slots_needed`]); each 4096-byte piece is copied into a granted
//!   page, with `NETRXF_more_data` chaining and a GSO extra after the first response. A front end
//!   that keeps the RX ring short for ever (XSA-392) holds at most the bounded queue, and frames that
//!   waited longer than [`NetQueueConfig::rx_drain_timeout`] are dropped (Linux's
//!   `rx_drain_timeout`).
//!
//! Notifications follow the ring's event indices both ways (`push_responses_and_check_notify`, and
//! the final checks before sleeping). The XenBus handshake that creates a queue (reading
//! `tx-ring-ref`, `rx-ring-ref`, `event-channel`, publishing `feature-*`) is not here yet: a
//! [`NetQueue`] is built from already-mapped rings and event channels, the seam where a
//! `XenbusDevice` for netback will plug in.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::warn;
use xen_abi::DomId;
use xen_abi::XEN_PAGE_SIZE;
use xen_abi::netif::{
    ExtraFlags, GsoType, HashType, MulticastFilter, NetRxFlags, NetTxFlags, NetifError,
    NetifExtraInfo, NetifExtraInfoGso, NetifExtraInfoHash, NetifRspStatus, NetifRx,
    NetifRxResponse, NetifTx, NetifTxRequest, NetifTxResponse, TxConfig, TxPacket, TxPacketParser,
    TxParsed, XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ, XEN_NETIF_GSO_TYPE_TCPV4,
    XEN_NETIF_GSO_TYPE_TCPV6, rx_slots_needed,
};
use xen_abi::ring::{BackRing, RingError, RingMemory};

use super::ctrl::{CtrlRing, HashConfig};
use super::gso;
use super::{Checksum, ETH_HLEN, FrameMeta, Gso, NetDevice, NetError, is_multicast};
use crate::backend::{EventChannel, GrantAccess, GrantAccessMode};

/// The most slots the parser consumes for one TX packet: 18 data slots (`XEN_NETIF_NR_SLOTS_MIN`), one
/// extra of each of the 4 types, and the slot that shows a chain is too long.
const MAX_PACKET_SLOTS: usize =
    xen_abi::netif::XEN_NETIF_NR_SLOTS_MIN + xen_abi::netif::MAX_TX_EXTRAS + 1;

/// How a queue behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetQueueConfig {
    /// What TX packets may be.
    pub tx: TxConfig,
    /// TX packets handled per [`NetQueue::process_tx`] call, so one busy queue cannot hold a thread.
    pub tx_budget: usize,
    /// The most frames waiting for RX ring slots.
    pub rx_queue_frames: usize,
    /// Frames that waited this long for RX slots are dropped (Linux: 10 s).
    pub rx_drain_timeout: Duration,
    /// What the front end takes on RX besides complete frames (from `feature-no-csum-offload`,
    /// `feature-ipv6-csum-offload` and `feature-gso-tcpv4`/`-tcpv6` in its directory); what it does
    /// not take is finished in software first.
    pub rx: RxOffloads,
    /// The front end asked for multicast control (`request-multicast-control`): multicast frames
    /// reach it only for addresses it added.
    pub multicast_control: bool,
}

impl Default for NetQueueConfig {
    fn default() -> Self {
        Self {
            tx: TxConfig::DEFAULT,
            tx_budget: 64,
            rx_queue_frames: 256,
            rx_drain_timeout: Duration::from_secs(10),
            rx: RxOffloads::ALL,
            multicast_control: false,
        }
    }
}

/// The offloads a front end takes on its RX ring (`io/netif.h`). A frame that needs one the front
/// end does not take is finished by netback before it goes on the ring: a GSO frame is segmented
/// ([`gso::segment`], each segment with its full checksum), a partial checksum is completed (and the
/// frame is not marked `NETRXF_csum_blank`). As in Linux, GSO of a family needs checksum offload of
/// that family too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxOffloads {
    /// Partial TCP/UDP checksums over IPv4 (`NETRXF_csum_blank`): on unless the front end writes
    /// `feature-no-csum-offload` = 1.
    pub csum_ipv4: bool,
    /// Partial TCP/UDP checksums over IPv6: off unless the front end writes
    /// `feature-ipv6-csum-offload` = 1.
    pub csum_ipv6: bool,
    /// TCPv4 GSO frames (`feature-gso-tcpv4`).
    pub gso_tcpv4: bool,
    /// TCPv6 GSO frames (`feature-gso-tcpv6`).
    pub gso_tcpv6: bool,
}

impl RxOffloads {
    /// Every offload.
    pub const ALL: Self = Self {
        csum_ipv4: true,
        csum_ipv6: true,
        gso_tcpv4: true,
        gso_tcpv6: true,
    };
    /// None: every frame arrives complete, with its full checksum.
    pub const NONE: Self = Self {
        csum_ipv4: false,
        csum_ipv6: false,
        gso_tcpv4: false,
        gso_tcpv6: false,
    };

    /// Whether a GSO frame of `ty` may go on the ring as it is.
    pub fn takes_gso(&self, ty: GsoType) -> bool {
        match ty {
            GsoType::TcpV4 => self.gso_tcpv4 && self.csum_ipv4,
            GsoType::TcpV6 => self.gso_tcpv6 && self.csum_ipv6,
            _ => false,
        }
    }

    /// Whether `frame`, whose checksum is partial, may go on the ring as it is: only TCP/UDP over
    /// an IP version whose checksum offload the front end takes (anything else is completed).
    fn takes_partial(&self, frame: &[u8]) -> bool {
        match super::ip::l3(frame).map(|(ethertype, _)| ethertype) {
            Some(super::ip::ETHERTYPE_IPV4) => self.csum_ipv4,
            Some(super::ip::ETHERTYPE_IPV6) => self.csum_ipv6,
            _ => false,
        }
    }
}

/// Counters of one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetQueueStats {
    /// Frames sent to the device.
    pub tx_packets: u64,
    /// TX packets answered with an error.
    pub tx_errors: u64,
    /// Multicast filter updates.
    pub tx_multicast: u64,
    /// Frames put into the guest's RX ring.
    pub rx_packets: u64,
    /// Frames dropped on the RX side (queue full, drained, filtered, or not deliverable).
    pub rx_dropped: u64,
    /// Notifications sent for TX responses.
    pub tx_notifies: u64,
    /// Notifications sent for RX responses.
    pub rx_notifies: u64,
}

/// What can go wrong serving a queue.
#[derive(Debug, thiserror::Error)]
pub enum NetbackError {
    /// The front end broke the ring protocol (its indices); the queue is disconnected.
    #[error("domain {domid}: {ring} ring: {source}; the queue is disconnected")]
    Ring {
        /// The domain.
        domid: DomId,
        /// `"tx"` or `"rx"`.
        ring: &'static str,
        /// The check that failed.
        #[source]
        source: RingError,
    },
    /// The front end sent a malformed TX packet; the queue is disconnected.
    #[error("domain {domid}: malformed TX packet ({source}); the queue is disconnected")]
    Protocol {
        /// The domain.
        domid: DomId,
        /// What was wrong.
        #[source]
        source: NetifError,
    },
    /// The queue was disconnected earlier.
    #[error("domain {domid}: the queue is disconnected")]
    Disconnected {
        /// The domain.
        domid: DomId,
    },
    /// The device failed.
    #[error("domain {domid}: the network device failed")]
    Device {
        /// The domain.
        domid: DomId,
        /// The error.
        #[source]
        source: NetError,
    },
}

/// A frame waiting for RX slots.
#[derive(Debug)]
struct RxFrame {
    data: Vec<u8>,
    meta: FrameMeta,
    since: Instant,
}

/// A TX frame the device could not take yet, with the responses owed for it.
#[derive(Debug)]
struct StalledTx {
    frame: Vec<u8>,
    meta: FrameMeta,
    responses: Vec<NetifTxResponse>,
    /// Segments still to send after `frame` (a GSO frame segmented in software).
    rest: VecDeque<Vec<u8>>,
}

/// One netback queue: a TX ring, an RX ring, and the device below.
pub struct NetQueue<M: RingMemory, D> {
    domid: DomId,
    grants: Arc<dyn GrantAccess>,
    tx: BackRing<M, NetifTx>,
    rx: BackRing<M, NetifRx>,
    tx_evtchn: Arc<dyn EventChannel>,
    rx_evtchn: Arc<dyn EventChannel>,
    device: D,
    config: NetQueueConfig,
    rx_queue: VecDeque<RxFrame>,
    rx_buf: Vec<u8>,
    stalled: Option<StalledTx>,
    mcast: MulticastFilter,
    ctrl: Option<CtrlRing<M>>,
    hash: Option<Arc<RwLock<HashConfig>>>,
    stats: NetQueueStats,
    disconnected: bool,
}

impl<M: RingMemory, D> std::fmt::Debug for NetQueue<M, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetQueue")
            .field("domid", &self.domid)
            .field("config", &self.config)
            .field("stats", &self.stats)
            .field("disconnected", &self.disconnected)
            .finish_non_exhaustive()
    }
}

fn ring_err(domid: DomId, ring: &'static str) -> impl FnOnce(RingError) -> NetbackError {
    move |source| NetbackError::Ring {
        domid,
        ring,
        source,
    }
}

impl<M: RingMemory, D: NetDevice> NetQueue<M, D> {
    /// Serves domain `domid`'s rings `tx` and `rx` (already mapped, initialised by the front end)
    /// to `device`. With a single event channel, pass the same one twice (`feature-split-event-channels`
    /// gives two).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        domid: DomId,
        grants: Arc<dyn GrantAccess>,
        tx: M,
        rx: M,
        tx_evtchn: Arc<dyn EventChannel>,
        rx_evtchn: Arc<dyn EventChannel>,
        device: D,
        config: NetQueueConfig,
    ) -> Result<Self, NetbackError> {
        let tx = BackRing::new(tx).map_err(ring_err(domid, "tx"))?;
        let rx = BackRing::new(rx).map_err(ring_err(domid, "rx"))?;
        Ok(Self::from_rings(
            domid, grants, tx, rx, tx_evtchn, rx_evtchn, device, config,
        ))
    }

    /// As [`new`](Self::new), for rings already in use: our private indices start at `tx_idx`
    /// and `rx_idx` (`BACK_RING_ATTACH`), as after a live migration or a back-end restart.
    #[allow(clippy::too_many_arguments)]
    pub fn attach(
        domid: DomId,
        grants: Arc<dyn GrantAccess>,
        (tx, tx_idx): (M, u32),
        (rx, rx_idx): (M, u32),
        tx_evtchn: Arc<dyn EventChannel>,
        rx_evtchn: Arc<dyn EventChannel>,
        device: D,
        config: NetQueueConfig,
    ) -> Result<Self, NetbackError> {
        let tx = BackRing::attach(tx, tx_idx).map_err(ring_err(domid, "tx"))?;
        let rx = BackRing::attach(rx, rx_idx).map_err(ring_err(domid, "rx"))?;
        Ok(Self::from_rings(
            domid, grants, tx, rx, tx_evtchn, rx_evtchn, device, config,
        ))
    }

    /// Our private ring positions: (TX `req_cons`, TX `rsp_prod_pvt`, RX `req_cons`, RX
    /// `rsp_prod_pvt`), what a migration record carries.
    pub fn ring_positions(&self) -> (u32, u32, u32, u32) {
        (
            self.tx.req_cons(),
            self.tx.rsp_prod_pvt(),
            self.rx.req_cons(),
            self.rx.rsp_prod_pvt(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn from_rings(
        domid: DomId,
        grants: Arc<dyn GrantAccess>,
        tx: BackRing<M, NetifTx>,
        rx: BackRing<M, NetifRx>,
        tx_evtchn: Arc<dyn EventChannel>,
        rx_evtchn: Arc<dyn EventChannel>,
        device: D,
        config: NetQueueConfig,
    ) -> Self {
        let max = device.max_frame_len();
        Self {
            domid,
            grants,
            tx,
            rx,
            tx_evtchn,
            rx_evtchn,
            device,
            config,
            rx_queue: VecDeque::new(),
            rx_buf: vec![0; max],
            stalled: None,
            mcast: MulticastFilter::new(),
            ctrl: None,
            hash: None,
            stats: NetQueueStats::default(),
            disconnected: false,
        }
    }

    /// Serves the front end's control ring too (`feature-ctrl-ring`): its hash settings add a hash
    /// extra to every received frame they apply to.
    pub fn attach_ctrl(&mut self, ctrl: CtrlRing<M>) {
        self.ctrl = Some(ctrl);
    }

    /// For a queue without the control ring (multi-queue: the ring is served by queue 0): the hash
    /// settings it published ([`CtrlRing::share_hash`]), for the hash extra of received frames.
    pub fn set_hash_source(&mut self, hash: Arc<RwLock<HashConfig>>) {
        self.hash = Some(hash);
    }

    /// The control ring, if one is attached.
    pub fn ctrl(&self) -> Option<&CtrlRing<M>> {
        self.ctrl.as_ref()
    }

    /// The counters.
    pub fn stats(&self) -> NetQueueStats {
        self.stats
    }

    /// Whether the queue was disconnected for a protocol error.
    pub fn is_disconnected(&self) -> bool {
        self.disconnected
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Ends the queue and gives the device back.
    pub fn into_device(self) -> D {
        self.device
    }

    /// The multicast addresses the front end added.
    pub fn multicast_filter(&self) -> &MulticastFilter {
        &self.mcast
    }

    /// Whether a TX frame waits for the device to take it.
    pub fn tx_stalled(&self) -> bool {
        self.stalled.is_some()
    }

    /// Frames waiting for RX slots.
    pub fn rx_queued(&self) -> usize {
        self.rx_queue.len()
    }

    /// Whether the queue takes more frames from the device ([`rx_queued`](Self::rx_queued) is below
    /// [`NetQueueConfig::rx_queue_frames`]); while it does not, there is no point waking for the
    /// device.
    pub fn rx_has_room(&self) -> bool {
        self.rx_queue.len() < self.config.rx_queue_frames
    }

    fn check(&self) -> Result<(), NetbackError> {
        if self.disconnected {
            Err(NetbackError::Disconnected { domid: self.domid })
        } else {
            Ok(())
        }
    }

    /// A ring or protocol error disconnects the queue.
    fn fatal<T>(&mut self, r: Result<T, NetbackError>) -> Result<T, NetbackError> {
        if let Err(e @ (NetbackError::Ring { .. } | NetbackError::Protocol { .. })) = &r
            && !self.disconnected
        {
            warn!(domid = self.domid, err = %e, "netback queue disconnected");
            self.disconnected = true;
        }
        r
    }

    fn disconnect(&mut self, err: NetbackError) -> NetbackError {
        warn!(domid = self.domid, %err, "netback queue disconnected");
        self.disconnected = true;
        err
    }

    /// Serves both rings once: TX packets to the device (up to the budget), device frames to the RX
    /// ring. Returns whether anything moved. Call it when either event channel fires or the device
    /// has frames, and again while it returns `true`.
    pub fn process(&mut self, now: Instant) -> Result<bool, NetbackError> {
        let c = self.process_ctrl()?;
        let tx = self.process_tx()?;
        let rx = self.process_rx(now)?;
        Ok(c + tx + rx > 0)
    }

    /// Answers the control ring's requests, if one is attached; returns how many.
    pub fn process_ctrl(&mut self) -> Result<usize, NetbackError> {
        self.check()?;
        let d = self.domid;
        let r = match &mut self.ctrl {
            None => Ok(0),
            Some(c) => c.process().map_err(ring_err(d, "ctrl")),
        };
        self.fatal(r)
    }

    /// The hash extra a frame gets, if the control ring enabled hashing for its type.
    fn rx_hash(&self, data: &[u8]) -> Option<(u32, HashType)> {
        match (&self.ctrl, &self.hash) {
            (Some(c), _) => c.hash().hash(data),
            (None, Some(h)) => h.read().unwrap_or_else(|e| e.into_inner()).hash(data),
            (None, None) => None,
        }
    }

    /// Whether there is nothing to do: no TX requests (the event index is set, so the front end's
    /// next request notifies) and no frame that could go into the RX ring now. Call it before
    /// sleeping (while [`tx_stalled`](Self::tx_stalled), sleep only briefly: the device will not
    /// say when it has room).
    pub fn idle(&mut self) -> Result<bool, NetbackError> {
        let r = self.idle_inner();
        self.fatal(r)
    }

    fn idle_inner(&mut self) -> Result<bool, NetbackError> {
        self.check()?;
        let d = self.domid;
        let tx = self
            .tx
            .final_check_for_requests()
            .map_err(ring_err(d, "tx"))?;
        let need = self.rx_queue.front().map(|f| {
            let hash = self.rx_hash(&f.data).is_some();
            rx_slots_needed(f.data.len(), f.meta.gso.is_some(), hash)
        });
        let rx_ready = match need {
            None => false,
            Some(need) => {
                // Ask for an event when the front end posts buffers, then look again.
                self.rx
                    .final_check_for_requests()
                    .map_err(ring_err(d, "rx"))?;
                self.rx.unconsumed_requests().map_err(ring_err(d, "rx"))? as usize >= need
            }
        };
        Ok(!tx && !rx_ready)
    }

    /// Handles up to [`NetQueueConfig::tx_budget`] TX packets; returns how many.
    pub fn process_tx(&mut self) -> Result<usize, NetbackError> {
        let r = self.process_tx_inner();
        self.fatal(r)
    }

    fn process_tx_inner(&mut self) -> Result<usize, NetbackError> {
        self.check()?;
        let mut done = 0;
        if let Some(st) = self.stalled.take() {
            if !self.send_frame(st)? {
                return Ok(0);
            }
            done += 1;
        }
        while done < self.config.tx_budget {
            let d = self.domid;
            let avail = self.tx.unconsumed_requests().map_err(ring_err(d, "tx"))?;
            if avail == 0 {
                break;
            }
            let mut parser: TxPacketParser = TxPacketParser::with_config(self.config.tx, avail);
            let mut slots: [NetifTxRequest; MAX_PACKET_SLOTS] =
                [NetifTxRequest::new(0, 0, NetTxFlags::empty(), 0, 0); MAX_PACKET_SLOTS];
            let mut nslots = 0;
            let parsed = loop {
                let slot = match self.tx.pop_request() {
                    Ok(Some(s)) => s,
                    Ok(None) => {
                        break Err(NetifError::MissingFinalFragment {
                            slots: parser.slots_consumed(),
                            available: avail,
                        });
                    }
                    Err(e) => return Err(self.disconnect(ring_err(d, "tx")(e))),
                };
                if let Some(s) = slots.get_mut(nslots) {
                    *s = slot;
                }
                nslots += 1;
                match parser.push(slot) {
                    Ok(None) => continue,
                    Ok(Some(p)) => break Ok(p),
                    Err(e) => break Err(e),
                }
            };
            match parsed {
                Ok(TxParsed::Packet(p)) => {
                    if !self.transmit(&p)? {
                        break;
                    }
                }
                Ok(TxParsed::Multicast(m)) => {
                    let status = if self.mcast.apply(m.op()).is_ok() {
                        NetifRspStatus::Okay
                    } else {
                        NetifRspStatus::Error
                    };
                    self.stats.tx_multicast += 1;
                    for r in m.responses(status) {
                        self.put_tx_response(r)?;
                    }
                }
                Err(source) => {
                    // Every consumed slot is answered with an error (extras too: their ids are
                    // whatever the guest wrote), then the queue is closed.
                    for s in slots.iter().take(nslots.min(MAX_PACKET_SLOTS)) {
                        self.put_tx_response(NetifTxResponse::from_status(
                            s.id,
                            NetifRspStatus::Error,
                        ))?;
                    }
                    self.stats.tx_errors += 1;
                    self.notify_tx();
                    let domid = self.domid;
                    return Err(self.disconnect(NetbackError::Protocol { domid, source }));
                }
            }
            done += 1;
        }
        self.notify_tx();
        Ok(done)
    }

    fn put_tx_response(&mut self, r: NetifTxResponse) -> Result<(), NetbackError> {
        let d = self.domid;
        self.tx.put_response(&r).map_err(ring_err(d, "tx"))
    }

    fn notify_tx(&mut self) {
        if self.tx.push_responses_and_check_notify() {
            self.stats.tx_notifies += 1;
            self.tx_evtchn.notify();
        }
    }

    /// Copies a packet out of its granted pages and sends it. Returns `false` if the device is full
    /// (the frame is kept and retried first on the next call).
    fn transmit(&mut self, p: &TxPacket) -> Result<bool, NetbackError> {
        let mut frame = vec![0u8; usize::from(p.size())];
        let mut pos = 0;
        let mut ok = true;
        for f in p.fragments() {
            let size = usize::from(f.size);
            match self
                .grants
                .map(self.domid, f.gref, GrantAccessMode::ReadOnly)
            {
                Ok(m) => {
                    let dst = &mut frame[pos..pos + size];
                    if m.read_into(usize::from(f.offset), dst) != size {
                        ok = false;
                    }
                }
                Err(e) => {
                    warn!(domid = self.domid, gref = f.gref, %e, "TX grant did not map");
                    ok = false;
                }
            }
            pos += size;
            if !ok {
                break;
            }
        }
        let meta = if ok { tx_meta(p, &mut frame) } else { None };
        let Some(meta) = meta else {
            self.stats.tx_errors += 1;
            for r in p.responses(NetifRspStatus::Error) {
                self.put_tx_response(r)?;
            }
            return Ok(true);
        };
        let responses = p.responses(NetifRspStatus::Okay).collect();
        self.send_frame(StalledTx {
            frame,
            meta,
            responses,
            rest: VecDeque::new(),
        })
    }

    /// Finishes in software what the device cannot: a GSO frame is segmented, a partial checksum
    /// completed. `Err` if the GSO frame's headers do not allow it.
    fn finish_for_device(&self, st: &mut StalledTx) -> Result<(), gso::GsoError> {
        if self.device.offloads().allows(&st.meta).is_ok() {
            return Ok(());
        }
        if st.meta.gso.is_some() {
            let mut segs: VecDeque<Vec<u8>> = gso::segment(&st.frame, &st.meta)?.into();
            if let Some(first) = segs.pop_front() {
                st.frame = first;
            }
            st.rest = segs;
            st.meta = gso::SEGMENT_META;
        } else if let Checksum::Partial { start, offset } = st.meta.checksum {
            // `parse_l4` put the field inside the datagram, so this completes it.
            let done = super::ip::complete_checksum(&mut st.frame, start, offset);
            debug_assert!(done, "a TX checksum field outside the datagram");
            st.meta.checksum = Checksum::Validated;
        }
        Ok(())
    }

    fn send_frame(&mut self, mut st: StalledTx) -> Result<bool, NetbackError> {
        let mut status = NetifRspStatus::Okay;
        if let Err(e) = self.finish_for_device(&mut st) {
            warn!(domid = self.domid, %e, "a GSO frame could not be segmented for the device");
            self.stats.tx_errors += 1;
            status = NetifRspStatus::Error;
        }
        while status == NetifRspStatus::Okay {
            match self.device.send(&st.frame, &st.meta) {
                Ok(()) => match st.rest.pop_front() {
                    Some(next) => st.frame = next,
                    None => {
                        self.stats.tx_packets += 1;
                        break;
                    }
                },
                Err(NetError::WouldBlock) => {
                    self.stalled = Some(st);
                    return Ok(false);
                }
                Err(NetError::Disconnected) => {
                    return Err(NetbackError::Device {
                        domid: self.domid,
                        source: NetError::Disconnected,
                    });
                }
                Err(e) => {
                    warn!(domid = self.domid, %e, "the device refused a TX frame");
                    self.stats.tx_errors += 1;
                    status = NetifRspStatus::Error;
                }
            }
        }
        for mut r in st.responses {
            if r.status == NetifRspStatus::Okay as i16 {
                r.status = status as i16;
            }
            self.put_tx_response(r)?;
        }
        Ok(true)
    }

    /// Takes frames from the device into the bounded RX queue and puts what fits into the guest's
    /// RX ring; returns how many frames went into the ring.
    pub fn process_rx(&mut self, now: Instant) -> Result<usize, NetbackError> {
        let r = self.process_rx_inner(now);
        self.fatal(r)
    }

    fn process_rx_inner(&mut self, now: Instant) -> Result<usize, NetbackError> {
        self.check()?;
        // Drain frames that waited too long for slots (XSA-392: detect lack of progress).
        while let Some(f) = self.rx_queue.front() {
            if now.saturating_duration_since(f.since) < self.config.rx_drain_timeout {
                break;
            }
            self.rx_queue.pop_front();
            self.stats.rx_dropped += 1;
        }
        while self.rx_queue.len() < self.config.rx_queue_frames {
            let info = match self.device.recv(&mut self.rx_buf) {
                Ok(Some(info)) => info,
                Ok(None) => break,
                Err(source) => {
                    return Err(NetbackError::Device {
                        domid: self.domid,
                        source,
                    });
                }
            };
            let mut data = self.rx_buf[..info.len].to_vec();
            if !self.rx_wanted(&data) {
                self.stats.rx_dropped += 1;
                continue;
            }
            let mut meta = info.meta;
            if let (None, Checksum::Partial { start, offset }) = (meta.gso, meta.checksum) {
                if !self.config.rx.takes_partial(&data) {
                    // The front end does not take partial checksums of this kind
                    // (`feature-no-csum-offload`, no `feature-ipv6-csum-offload`): complete it.
                    if !super::ip::complete_checksum(&mut data, start, offset) {
                        // The device's checksum offsets lie outside the frame's datagram.
                        self.stats.rx_dropped += 1;
                        continue;
                    }
                    meta.checksum = Checksum::Validated;
                }
            }
            if meta
                .gso
                .is_some_and(|g| !self.config.rx.takes_gso(g.gso_type))
            {
                // A front end without GSO gets the segments (the queue's bound holds for them too).
                match gso::segment(&data, &meta) {
                    Ok(segs) => {
                        for data in segs {
                            if self.rx_queue.len() >= self.config.rx_queue_frames {
                                self.stats.rx_dropped += 1;
                                continue;
                            }
                            self.rx_queue.push_back(RxFrame {
                                data,
                                meta: gso::SEGMENT_META,
                                since: now,
                            });
                        }
                    }
                    Err(e) => {
                        warn!(domid = self.domid, %e, "a received GSO frame could not be segmented");
                        self.stats.rx_dropped += 1;
                    }
                }
                continue;
            }
            self.rx_queue.push_back(RxFrame {
                data,
                meta,
                since: now,
            });
        }
        let mut done = 0;
        let d = self.domid;
        while let Some(f) = self.rx_queue.front() {
            let hash = self.rx_hash(&f.data).is_some();
            let need = rx_slots_needed(f.data.len(), f.meta.gso.is_some(), hash);
            let avail = self.rx.unconsumed_requests().map_err(ring_err(d, "rx"))? as usize;
            if avail < need {
                break;
            }
            let Some(f) = self.rx_queue.pop_front() else {
                break;
            };
            self.deliver(&f)?;
            done += 1;
        }
        if done > 0 && self.rx.push_responses_and_check_notify() {
            self.stats.rx_notifies += 1;
            self.rx_evtchn.notify();
        }
        Ok(done)
    }

    fn rx_wanted(&self, data: &[u8]) -> bool {
        if data.len() < ETH_HLEN {
            return false;
        }
        let dst: [u8; 6] = [data[0], data[1], data[2], data[3], data[4], data[5]];
        if self.config.multicast_control && is_multicast(&dst) && dst != [0xff; 6] {
            return self.mcast.contains(&dst);
        }
        true
    }

    /// Puts one frame into the RX ring; the caller checked that enough requests are posted.
    fn deliver(&mut self, f: &RxFrame) -> Result<(), NetbackError> {
        let d = self.domid;
        let pieces = f.data.len().div_ceil(XEN_PAGE_SIZE).max(1);
        let mut csum_flags = NetRxFlags::empty();
        match f.meta.checksum {
            Checksum::Partial { .. } => {
                csum_flags = NetRxFlags::CSUM_BLANK | NetRxFlags::DATA_VALIDATED;
            }
            Checksum::Validated => csum_flags = NetRxFlags::DATA_VALIDATED,
            Checksum::None => {}
        }
        let hash = self.rx_hash(&f.data);
        let mut extras: Vec<NetifExtraInfo> = Vec::with_capacity(2);
        if let Some(g) = f.meta.gso {
            let gso_type = match g.gso_type {
                GsoType::TcpV6 => XEN_NETIF_GSO_TYPE_TCPV6,
                _ => XEN_NETIF_GSO_TYPE_TCPV4,
            };
            extras.push(NetifExtraInfo::gso(
                NetifExtraInfoGso::new(g.size, gso_type, 0),
                ExtraFlags::empty(),
            ));
        }
        if let Some((value, ty)) = hash {
            extras.push(NetifExtraInfo::hash(
                NetifExtraInfoHash::new(
                    ty as u8,
                    XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ as u8,
                    value,
                ),
                ExtraFlags::empty(),
            ));
        }
        let nextras = extras.len();
        for (k, e) in extras.iter_mut().enumerate() {
            if k + 1 < nextras {
                e.flags |= ExtraFlags::MORE.bits();
            }
        }
        let mut failed = false;
        for i in 0..pieces {
            let Some(req) = self.rx.pop_request().map_err(ring_err(d, "rx"))? else {
                break;
            };
            let chunk = &f.data[i * XEN_PAGE_SIZE..f.data.len().min((i + 1) * XEN_PAGE_SIZE)];
            let mut flags = NetRxFlags::empty();
            if i == 0 {
                flags |= csum_flags;
                if !extras.is_empty() {
                    flags |= NetRxFlags::EXTRA_INFO;
                }
            }
            if i + 1 < pieces {
                flags |= NetRxFlags::MORE_DATA;
            }
            let copied = match req.validate() {
                Ok(buf) => match self.grants.map(d, buf.gref, GrantAccessMode::ReadWrite) {
                    Ok(m) => m.write_from(0, chunk) == chunk.len(),
                    Err(e) => {
                        warn!(domid = d, gref = buf.gref, %e, "RX grant did not map");
                        false
                    }
                },
                Err(_) => false,
            };
            let rsp = if copied && !failed {
                NetifRxResponse::data(req.id, 0, chunk.len() as u16, flags)
                    .unwrap_or(NetifRxResponse::error(req.id, NetifRspStatus::Error))
            } else {
                failed = true;
                NetifRxResponse::error(req.id, NetifRspStatus::Error)
            };
            self.rx.put_response(&rsp).map_err(ring_err(d, "rx"))?;
            if i == 0 {
                // The extras take the next slots (their requests' buffers are not used).
                for e in &extras {
                    let Some(_) = self.rx.pop_request().map_err(ring_err(d, "rx"))? else {
                        break;
                    };
                    self.rx
                        .put_response(&NetifRxResponse::from_extra_info(e))
                        .map_err(ring_err(d, "rx"))?;
                }
            }
        }
        if failed {
            self.stats.rx_dropped += 1;
        } else {
            self.stats.rx_packets += 1;
        }
        Ok(())
    }
}

/// The offload metadata of a TX packet, or `None` if its checksum cannot be set up (a
/// `csum_blank` packet whose headers are not TCP or UDP over IPv4 or IPv6).
fn tx_meta(p: &TxPacket, frame: &mut [u8]) -> Option<FrameMeta> {
    let flags = p.checksum_flags();
    let gso = p.extras().gso().map(|g| Gso {
        gso_type: g.gso_type,
        size: g.size,
        hdr_len: 0,
    });
    let checksum = if flags.contains(NetTxFlags::CSUM_BLANK) || gso.is_some() {
        let l4 = parse_l4(frame)?;
        if !flags.contains(NetTxFlags::CSUM_BLANK) {
            // A GSO packet without csum_blank (as some front ends send): its checksum field does not
            // hold the pseudo-header sum yet; put it there, as Linux netback's checksum fix-up does.
            let field = l4.start + l4.offset;
            frame[field..field + 2].copy_from_slice(&super::ip::csum_fold(l4.pseudo).to_be_bytes());
        }
        Checksum::Partial {
            start: l4.start as u16,
            offset: l4.offset as u16,
        }
    } else if flags.contains(NetTxFlags::DATA_VALIDATED) {
        Checksum::Validated
    } else {
        Checksum::None
    };
    Some(FrameMeta { checksum, gso })
}

/// Where a frame's layer-4 checksum is, and its pseudo-header sum.
struct L4 {
    start: usize,
    offset: usize,
    pseudo: u64,
}

/// Parses Ethernet (with one optional 802.1Q tag), IPv4 or IPv6 (with up to 8 extension headers)
/// and finds the TCP or UDP checksum. Bounded: a fixed number of steps, every access checked.
fn parse_l4(f: &[u8]) -> Option<L4> {
    let (ethertype, l3) = super::ip::l3(f)?;
    // `end`: where the datagram ends by its header (the checksum covers no padding after it).
    let (proto, start, pseudo, end) = match ethertype {
        super::ip::ETHERTYPE_IPV4 => {
            let h = super::ip::ipv4(f, l3).ok()?;
            if h.is_fragment() || h.total < h.ihl {
                return None; // a fragment has no whole L4 header
            }
            let l4_len = (h.total - h.ihl) as u64;
            let sum = super::ip::csum_add(f.get(l3 + 12..l3 + 20)?, u64::from(h.proto) + l4_len);
            (h.proto, l3 + h.ihl, sum, l3 + h.total)
        }
        super::ip::ETHERTYPE_IPV6 => {
            let h = super::ip::ipv6(f, l3).ok()?;
            // A fragment header (44) or more than 8 extension headers ends here too: neither is
            // TCP or UDP below.
            let ext_len = (h.l4 - (l3 + 40)) as u64;
            let l4_len = (h.payload as u64).checked_sub(ext_len)?;
            let sum = super::ip::csum_add(f.get(l3 + 8..l3 + 40)?, u64::from(h.next) + l4_len);
            (h.next, h.l4, sum, l3 + 40 + h.payload)
        }
        _ => return None,
    };
    let offset = match proto {
        super::ip::IPPROTO_TCP => 16,
        super::ip::IPPROTO_UDP => 6,
        _ => return None,
    };
    // Inside the datagram (the pseudo-header's length is the IP header's), which is inside the
    // frame: as `ip::datagram_end` bounds it, without walking the headers again.
    if start + offset + 2 > end.min(f.len()) {
        return None;
    }
    Some(L4 {
        start,
        offset,
        pseudo,
    })
}
