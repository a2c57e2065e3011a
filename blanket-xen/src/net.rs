//! netfront: the guest side of a Xen virtual network interface (`io/netif.h`): up to `Q` queues, receive
//! by copy (`feature-rx-copy`), scatter-gather on both rings when the back-end offers `feature-sg`, split
//! event channels, checksum offload and TCP segmentation offload (GSO) both ways.
//!
//! [`NetFront::connect_with`] reads `<node>/mac`, waits for the back-end's InitWait, reads
//! `feature-rx-copy` (required), `feature-sg`, `feature-gso-tcpv4`, `feature-gso-tcpv6`,
//! `feature-no-csum-offload`, `feature-ipv6-csum-offload`, `feature-split-event-channels` and
//! `multi-queue-max-queues`, and uses `min(Q, multi-queue-max-queues)` queues. For each queue it grants a
//! TX and an RX ring and allocates one event channel, or two (TX and RX) when the back-end offers split
//! event channels and [`NetFeatures::split_event_channels`] asks for them. Then, as Linux's xen-netfront
//! does, it writes in one transaction:
//!
//! - with one queue, `tx-ring-ref`, `rx-ring-ref` and `event-channel` (or `event-channel-tx` and
//!   `event-channel-rx`) in the device's own directory; with more, `multi-queue-num-queues` and those
//!   keys under `queue-0` .. `queue-N-1`;
//! - `request-rx-copy` = 1, `feature-rx-notify` = 1, `feature-sg`, `feature-gso-tcpv4`,
//!   `feature-gso-tcpv6` (1 when GSO is asked for and the back-end offers it), `feature-no-csum-offload`
//!   (1 unless checksum offload is asked for) and `feature-ipv6-csum-offload`;
//!
//! then Initialised, the back-end's Connected, and Connected.
//!
//! Buffers are driver-owned pages (the `pool`), each granted once for the driver's lifetime: for queue
//! `q`, pages `q * (rx + tx)` on, RX pages (writable) first, then TX pages (read-only). A frame to send is
//! copied into TX pages (one slot per 4096 bytes, at most 18 slots, `NETTXF_more_data` on all but the
//! last; a GSO frame has its GSO extra in the slot after the first); received data is copied out of RX
//! pages once, into the caller's buffer, and the pages are posted again.
//!
//! **Queues.** A frame goes to the TX queue its flow hashes to (the Toeplitz hash, with the RSS key, of
//! its IPv4 or IPv6 addresses and its TCP or UDP ports, scaled to the queue count; frames that are not IP
//! use queue 0), so a flow's frames stay in order. [`NetFront::recv`] looks at every queue's RX ring,
//! round robin from the queue after the one that delivered last.
//!
//! **Offloads.** [`TxOffload`] asks for a partial checksum (`NETTXF_csum_blank`: the frame's TCP or UDP
//! checksum field holds the pseudo-header sum, as Linux's `CHECKSUM_PARTIAL`) or GSO (a GSO extra with
//! the segment size, which implies the partial checksum). A partial checksum the back-end does not take
//! for that IP version is completed here before sending; GSO that was not negotiated is refused
//! ([`NetError::BadOffload`]). Received frames come with their `NETRXF_*` checksum flags and GSO extra
//! ([`RxMeta`]); when checksum offload was not negotiated, a `NETRXF_csum_blank` frame's checksum is
//! completed here (a back-end may ignore `feature-no-csum-offload`).
//!
//! Everything the back-end writes is checked: a TX response must name a TX buffer in flight and carry a
//! `NETIF_RSP_*` status (`NETIF_RSP_NULL` only while a GSO extra is unanswered); an RX response must
//! answer the request posted in the same ring slot (as netback does), fit its page
//! (`offset + size <= 4096`), and a packet must end within 18 slots; extra-info slots must have a known
//! type, and a GSO extra a known GSO type and a size above 0. A hostile response is a typed [`NetError`]
//! and the packet it belongs to is dropped; a ring whose `rsp_prod` overflows stops the device.

use xen_abi::DomId;
use xen_abi::XEN_PAGE_SIZE;
use xen_abi::event_channel::EvtchnPort;
use xen_abi::grant_table::GrantRef;
use xen_abi::netif::{
    CtrlOp, CtrlStatus, ETH_HLEN, ExtraFlags, GsoType, HashAlgorithm, HashTypes, MacAddr,
    NETIF_RSP_DROPPED, NETIF_RSP_ERROR, NETIF_RSP_NULL, NETIF_RSP_OKAY, NetRxFlags, NetTxFlags,
    NetifCtrl, NetifExtraInfo, NetifExtraInfoGso, NetifRx, NetifRxRequest, NetifRxResponse,
    NetifTx, NetifTxRequest, XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_GSO,
    XEN_NETIF_EXTRA_TYPE_MAX, XEN_NETIF_MAX_TX_SIZE, XEN_NETIF_NR_SLOTS_MIN,
};
use xen_abi::ring::{FrontRing, RingMemory, ring_entries};
use xen_abi::xenbus::XenbusState;
use xen_abi::xs_wire::XsErrno;

use crate::front::{self, FrontError, backend_flag, backend_max_queues};
use crate::netpkt;
use crate::platform::{Platform, PlatformError};
use crate::shmem;
use crate::xenbus::{FrontendDevice, TxId, XBT_NIL, XenBus, XenBusError, XsPath, fmt_decimal};

/// Slots of the one-page TX ring: 256.
pub const NET_TX_RING_SIZE: usize = ring_entries::<NetifTx>(XEN_PAGE_SIZE) as usize;
/// Slots of the one-page RX ring: 256.
pub const NET_RX_RING_SIZE: usize = ring_entries::<NetifRx>(XEN_PAGE_SIZE) as usize;
/// The most slots one packet takes on either ring (`XEN_NETIF_NR_SLOTS_MIN`).
pub const MAX_SLOTS_PER_PACKET: usize = XEN_NETIF_NR_SLOTS_MIN;

/// What can go wrong in netfront.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The handshake or a shared ring failed (XenStore, the platform, a ring, a node, the back-end's
    /// state); an overflowing `rsp_prod` stops the device.
    #[error(transparent)]
    Front(#[from] FrontError),
    /// The back-end lacks a feature this driver needs.
    #[error("the back-end does not offer {feature}, which netfront needs")]
    NotOffered {
        /// The feature node.
        feature: &'static str,
    },
    /// A configuration or pool that cannot work (the pool holds `Q * (rx + tx)` pages).
    #[error(
        "{rx} RX and {tx} TX buffers need {need} pool pages, {pages} were given (each count 1 to 256, Q queues at least 1)"
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
    /// A frame's offload that cannot be sent: GSO that was not negotiated for its type, or on a frame
    /// that is not TCP over IPv4 or IPv6 of that type, or a GSO size of 0.
    #[error("offload cannot be sent: {what}")]
    BadOffload {
        /// What is wrong.
        what: &'static str,
    },
    /// Hostile back-end: a GSO extra with an unknown GSO type or a size of 0.
    #[error("back-end's RX GSO extra has type {gso_type} and size {size}")]
    BadRxGso {
        /// The GSO type.
        gso_type: u8,
        /// The segment size.
        size: u16,
    },
    /// The back-end refused a control-ring request (or answered it with an unknown status).
    #[error("back-end answered control request type {ctrl_type} with status {status}")]
    CtrlRefused {
        /// `XEN_NETIF_CTRL_TYPE_*` of the request.
        ctrl_type: u16,
        /// `XEN_NETIF_CTRL_STATUS_*` answered.
        status: u32,
    },
    /// Hostile back-end: a control response naming another request than the one in flight.
    #[error("back-end answered control request {want} with id {got}")]
    BadCtrlId {
        /// The request in flight.
        want: u16,
        /// The id answered.
        got: u16,
    },
    /// The back-end did not answer a control-ring request within the timeout.
    #[error("back-end did not answer control request type {ctrl_type} in time")]
    CtrlTimeout {
        /// `XEN_NETIF_CTRL_TYPE_*` of the request.
        ctrl_type: u16,
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

front::from_front_causes!(NetError);

/// How the driver is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// RX buffers (pages) kept posted, per queue: 1 to 256.
    pub rx_buffers: usize,
    /// TX buffers (pages), per queue: 1 to 256.
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

/// What netfront asks the back-end for, when the back-end offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetFeatures {
    /// Separate TX and RX event channels per queue (`feature-split-event-channels`).
    pub split_event_channels: bool,
    /// Checksum offload both ways: `feature-no-csum-offload` = 0 and `feature-ipv6-csum-offload` = 1, so
    /// the back-end may deliver `NETRXF_csum_blank` frames, and [`TxOffload::csum_blank`] frames are sent
    /// as they are (to a back-end that takes them).
    pub csum_offload: bool,
    /// GSO both ways (`feature-gso-tcpv4`, `feature-gso-tcpv6`): the back-end may deliver 64 KiB TCP
    /// frames with a GSO extra, and [`TxOffload::gso`] frames may be sent.
    pub gso: bool,
    /// With more than one queue, and ring memory for it in [`NetRings::ctrl`]: the control ring
    /// (`feature-ctrl-ring`), on which netfront sets the receive-side hash (Toeplitz over IPv4 and IPv6
    /// addresses and TCP ports, the RSS key, a 128-entry table mapping to the queues in turn), so that the
    /// back-end spreads received flows over the queues.
    pub ctrl_ring: bool,
}

impl NetFeatures {
    /// What [`NetFront::connect`] asks for: split event channels, no offloads (received frames are whole,
    /// with checksums complete).
    pub const BASIC: Self = Self {
        split_event_channels: true,
        csum_offload: false,
        gso: false,
        ctrl_ring: false,
    };
    /// Everything: split event channels, checksum offload and GSO, as Linux's xen-netfront asks, and the
    /// control ring (which Linux's netfront does not use).
    pub const ALL: Self = Self {
        split_event_channels: true,
        csum_offload: true,
        gso: true,
        ctrl_ring: true,
    };
}

impl Default for NetFeatures {
    fn default() -> Self {
        Self::BASIC
    }
}

/// What the back-end offers, what the toolstack set, and what was negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetInfo {
    /// The interface's MAC address (`<node>/mac`).
    pub mac: MacAddr,
    /// `feature-sg`.
    pub sg: bool,
    /// `feature-gso-tcpv4` offered.
    pub gso_tcpv4: bool,
    /// `feature-gso-tcpv6` offered.
    pub gso_tcpv6: bool,
    /// The back-end takes partial IPv4 checksums (`feature-no-csum-offload` absent or 0).
    pub csum_ipv4: bool,
    /// The back-end takes partial IPv6 checksums (`feature-ipv6-csum-offload`).
    pub csum_ipv6: bool,
    /// `feature-split-event-channels` offered.
    pub split_event_channels: bool,
    /// `feature-ctrl-ring` offered.
    pub ctrl_ring: bool,
    /// `multi-queue-max-queues` (1 when absent).
    pub max_queues: u32,
    /// The queues in use: `min(Q, max_queues)`.
    pub queues: usize,
    /// What was negotiated: what was asked for and offered.
    pub negotiated: NetFeatures,
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
    /// Partial checksums completed by the driver (TX to a back-end without checksum offload for that IP
    /// version, and RX when checksum offload was not negotiated).
    pub csum_completed: u64,
}

impl NetStats {
    fn add(&mut self, o: &Self) {
        self.tx_packets += o.tx_packets;
        self.tx_errors += o.tx_errors;
        self.rx_packets += o.rx_packets;
        self.rx_dropped += o.rx_dropped;
        self.tx_bad_responses += o.tx_bad_responses;
        self.csum_completed += o.csum_completed;
    }
}

/// GSO of a TCP super-frame: the protocol and the largest TCP payload per segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetGso {
    /// TCP over IPv4 or IPv6.
    pub gso_type: GsoType,
    /// The segment size (the MSS), above 0.
    pub size: u16,
}

/// The offloads of a frame to send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxOffload {
    /// The TCP or UDP checksum is partial: its field holds the pseudo-header sum (`NETTXF_csum_blank`).
    pub csum_blank: bool,
    /// The checksum is known to be good (`NETTXF_data_validated`).
    pub data_validated: bool,
    /// GSO: the back-end (or whoever receives it) segments the frame. Implies `csum_blank`.
    pub gso: Option<NetGso>,
}

/// A received packet: its length, queue and offload flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxMeta {
    /// Its length in the caller's buffer.
    pub len: usize,
    /// The queue it came on.
    pub queue: usize,
    /// `NETRXF_csum_blank`: the checksum field holds the pseudo-header sum (only when checksum offload
    /// was negotiated, or when the driver could not complete it: not TCP or UDP over IP).
    pub csum_blank: bool,
    /// `NETRXF_data_validated`.
    pub data_validated: bool,
    /// The GSO extra, for a super-frame (only when GSO was negotiated).
    pub gso: Option<NetGso>,
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

/// What every queue needs to know of the negotiation.
#[derive(Debug, Clone, Copy)]
struct Shape {
    nrx: usize,
    ntx: usize,
    backend: DomId,
    /// Complete `NETRXF_csum_blank` checksums (checksum offload not negotiated).
    rx_complete_csum: bool,
    /// GSO extras may arrive.
    rx_gso: bool,
}

/// How one frame goes on the TX ring.
#[derive(Debug, Clone, Copy)]
struct TxPlan {
    /// The first slot's checksum flags.
    flags: NetTxFlags,
    /// The GSO extra, after the first slot.
    gso: Option<NetGso>,
    /// A checksum completed here: its field's offset in the frame and its value.
    csum_patch: Option<(usize, [u8; 2])>,
}

/// One queue: its two rings, their grants and ports, its buffers and its RX packet in assembly.
struct Queue<M> {
    tx: FrontRing<M, NetifTx>,
    rx: FrontRing<M, NetifRx>,
    /// The rings' grants (`tx-ring-ref`, `rx-ring-ref`); `ngranted_rings` of them are live.
    ring_refs: [GrantRef; 2],
    ngranted_rings: usize,
    tx_port: Option<EvtchnPort>,
    /// `None` without split event channels: RX uses `tx_port`.
    rx_port: Option<EvtchnPort>,
    /// The first pool page of this queue.
    base: usize,
    rx_grefs: [GrantRef; NET_RX_RING_SIZE],
    nrx_granted: usize,
    tx_grefs: [GrantRef; NET_TX_RING_SIZE],
    ntx_granted: usize,
    rx_posted: [bool; NET_RX_RING_SIZE],
    /// The buffer posted in each RX ring slot.
    rx_slot_buf: [u16; NET_RX_RING_SIZE],
    tx_busy: [bool; NET_TX_RING_SIZE],
    /// GSO extras sent and not yet answered (with `NETIF_RSP_NULL`).
    tx_extras: usize,
    frags: [Frag; MAX_SLOTS_PER_PACKET],
    nfrags: usize,
    in_packet: bool,
    expect_extra: bool,
    /// The first slot's flags of the packet being assembled.
    first_flags: NetRxFlags,
    /// The GSO extra of the packet being assembled.
    gso: Option<NetGso>,
    /// The packet being assembled is dropped, with this error.
    dropping: Option<NetError>,
    stats: NetStats,
    stopped: bool,
}

impl<M: RingMemory> Queue<M> {
    fn new(tx: FrontRing<M, NetifTx>, rx: FrontRing<M, NetifRx>, base: usize) -> Self {
        Self {
            tx,
            rx,
            ring_refs: [0; 2],
            ngranted_rings: 0,
            tx_port: None,
            rx_port: None,
            base,
            rx_grefs: [0; NET_RX_RING_SIZE],
            nrx_granted: 0,
            tx_grefs: [0; NET_TX_RING_SIZE],
            ntx_granted: 0,
            rx_posted: [false; NET_RX_RING_SIZE],
            rx_slot_buf: [0; NET_RX_RING_SIZE],
            tx_busy: [false; NET_TX_RING_SIZE],
            tx_extras: 0,
            frags: [Frag::default(); MAX_SLOTS_PER_PACKET],
            nfrags: 0,
            in_packet: false,
            expect_extra: false,
            first_flags: NetRxFlags::empty(),
            gso: None,
            dropping: None,
            stats: NetStats::default(),
            stopped: false,
        }
    }

    fn tx_port(&self) -> EvtchnPort {
        self.tx_port.unwrap_or(0)
    }

    fn rx_port(&self) -> EvtchnPort {
        self.rx_port.unwrap_or(self.tx_port())
    }

    /// Grants the rings and this queue's pool pages to the back-end and allocates its port(s). What was
    /// done is recorded, for [`release`](Self::release).
    fn setup<P: Platform>(
        &mut self,
        platform: &P,
        pool_addr: usize,
        shape: &Shape,
        split: bool,
    ) -> Result<(), NetError> {
        for mem in [
            self.tx.memory().as_ptr() as usize,
            self.rx.memory().as_ptr() as usize,
        ] {
            let f = platform.frame_of(mem)?;
            self.ring_refs[self.ngranted_rings] = platform.grant_access(shape.backend, f, false)?;
            self.ngranted_rings += 1;
        }
        for b in 0..shape.nrx + shape.ntx {
            let page = pool_addr + (self.base + b) * XEN_PAGE_SIZE;
            let f = platform.frame_of(page)?;
            // RX pages are written by the back-end, TX pages only read.
            if b < shape.nrx {
                self.rx_grefs[b] = platform.grant_access(shape.backend, f, false)?;
                self.nrx_granted += 1;
            } else {
                self.tx_grefs[b - shape.nrx] = platform.grant_access(shape.backend, f, true)?;
                self.ntx_granted += 1;
            }
        }
        self.tx_port = Some(platform.alloc_unbound(shape.backend)?);
        if split {
            self.rx_port = Some(platform.alloc_unbound(shape.backend)?);
        }
        Ok(())
    }

    /// Closes the ports and ends every grant made; the first failure is returned after the rest are
    /// done (a grant the back-end still maps stays granted).
    fn release<P: Platform>(&mut self, platform: &P) -> Result<(), PlatformError> {
        let mut first = Ok(());
        for port in [self.tx_port.take(), self.rx_port.take()]
            .into_iter()
            .flatten()
        {
            if let Err(e) = platform.close(port)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        let grants = self.rx_grefs[..self.nrx_granted]
            .iter()
            .chain(&self.tx_grefs[..self.ntx_granted])
            .chain(&self.ring_refs[..self.ngranted_rings]);
        for gref in grants {
            if let Err(e) = platform.end_access(*gref)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        self.nrx_granted = 0;
        self.ntx_granted = 0;
        self.ngranted_rings = 0;
        first
    }

    /// Writes this queue's keys (`tx-ring-ref`, `rx-ring-ref`, the event channel or channels) under
    /// `dir` in transaction `t`.
    fn write_keys<P: Platform, XM: RingMemory>(
        &self,
        xb: &mut XenBus<P, XM>,
        t: TxId,
        dir: &XsPath,
    ) -> Result<(), XenBusError> {
        let mut num = [0u8; 20];
        let [tx_ref, rx_ref] = self.ring_refs;
        xb.write(
            t,
            dir.join(b"tx-ring-ref")?.as_bytes(),
            fmt_decimal(u64::from(tx_ref), &mut num),
        )?;
        xb.write(
            t,
            dir.join(b"rx-ring-ref")?.as_bytes(),
            fmt_decimal(u64::from(rx_ref), &mut num),
        )?;
        match self.rx_port {
            None => xb.write(
                t,
                dir.join(b"event-channel")?.as_bytes(),
                fmt_decimal(u64::from(self.tx_port()), &mut num),
            ),
            Some(rx) => {
                xb.write(
                    t,
                    dir.join(b"event-channel-tx")?.as_bytes(),
                    fmt_decimal(u64::from(self.tx_port()), &mut num),
                )?;
                xb.write(
                    t,
                    dir.join(b"event-channel-rx")?.as_bytes(),
                    fmt_decimal(u64::from(rx), &mut num),
                )
            }
        }
    }

    fn rx_page(&self, buf: usize) -> usize {
        (self.base + buf) * XEN_PAGE_SIZE
    }

    fn tx_page(&self, shape: &Shape, buf: usize) -> usize {
        (self.base + shape.nrx + buf) * XEN_PAGE_SIZE
    }

    /// Posts every RX buffer that is not posted.
    fn refill<P: Platform>(&mut self, platform: &P, shape: &Shape) -> Result<(), NetError> {
        let mut posted = false;
        for b in 0..shape.nrx {
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
            platform.notify(self.rx_port())?;
        }
        Ok(())
    }

    fn reap_tx(&mut self, shape: &Shape) -> Result<usize, NetError> {
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
            if rsp.status == NETIF_RSP_NULL && self.tx_extras > 0 {
                // The answer to a GSO extra's slot (its id is not meaningful: Linux leaves it unset).
                self.tx_extras -= 1;
                continue;
            }
            let b = usize::from(id);
            if b >= shape.ntx || !self.tx_busy[b] {
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

    /// Puts one frame on this queue's TX ring: `flags` on the first slot, the GSO extra after it.
    fn send<P: Platform, B: RingMemory>(
        &mut self,
        platform: &P,
        pool: &B,
        shape: &Shape,
        frame: &[u8],
        plan: TxPlan,
    ) -> Result<(), NetError> {
        let TxPlan {
            flags,
            gso,
            csum_patch,
        } = plan;
        let len = frame.len();
        let needed = len.div_ceil(XEN_PAGE_SIZE);
        let slots = needed + usize::from(gso.is_some());
        let free_bufs = self.tx_busy[..shape.ntx].iter().filter(|b| !**b).count();
        let free_slots = self.tx.free_requests() as usize;
        if needed > free_bufs || slots > free_slots {
            return Err(NetError::TxFull {
                needed: slots,
                free: free_bufs.min(free_slots),
            });
        }
        let mut bufs = [0u16; MAX_SLOTS_PER_PACKET];
        let mut found = 0;
        for b in 0..shape.ntx {
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
            let page = self.tx_page(shape, b);
            shmem::write(pool, page, chunk);
            if let Some((field, csum)) = csum_patch {
                // The completed checksum goes into the copy, whichever page its field falls in.
                let start = i * XEN_PAGE_SIZE;
                for (k, byte) in csum.iter().enumerate() {
                    if let Some(at) = (field + k).checked_sub(start)
                        && at < chunk.len()
                    {
                        shmem::write(pool, page + at, &[*byte]);
                    }
                }
            }
            let mut slot_flags = if i == 0 { flags } else { NetTxFlags::empty() };
            if i + 1 < needed {
                slot_flags |= NetTxFlags::MORE_DATA;
            }
            if i == 0 && gso.is_some() {
                slot_flags |= NetTxFlags::EXTRA_INFO;
            }
            // The first slot carries the whole packet's size; the others their fragment's.
            let size = if i == 0 { len } else { chunk.len() } as u16;
            let req = NetifTxRequest::new(self.tx_grefs[b], 0, slot_flags, b as u16, size);
            self.tx.put_request(&req)?;
            self.tx_busy[b] = true;
            if i == 0
                && let Some(g) = gso
            {
                let extra = NetifExtraInfo::gso(
                    NetifExtraInfoGso::new(g.size, g.gso_type as u8, 0),
                    ExtraFlags::empty(),
                );
                self.tx
                    .put_request(&NetifTxRequest::from_extra_info(&extra))?;
                self.tx_extras += 1;
            }
        }
        if self.tx.push_requests_and_check_notify() {
            platform.notify(self.tx_port())?;
        }
        self.stats.tx_packets += 1;
        Ok(())
    }

    fn drop_packet(&mut self, e: NetError) {
        if self.dropping.is_none() {
            self.dropping = Some(e);
        }
    }

    /// Receives one packet of this queue into `buf`, as [`NetFront::recv_meta`].
    fn recv<P: Platform, B: RingMemory>(
        &mut self,
        platform: &P,
        pool: &B,
        shape: &Shape,
        buf: &mut [u8],
    ) -> Result<Option<RxMeta>, NetError> {
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
            let done = self.rx_slot(pool, shape, posted, &rsp, buf);
            self.refill(platform, shape)?;
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

    /// Reads one extra-info slot of the packet being assembled.
    fn rx_extra(&mut self, shape: &Shape, rsp: &NetifRxResponse) {
        let extra: NetifExtraInfo = zerocopy::transmute!(*rsp);
        if extra.r#type == 0 || extra.r#type >= XEN_NETIF_EXTRA_TYPE_MAX {
            self.drop_packet(NetError::BadRxExtra {
                extra_type: extra.r#type,
            });
        } else if extra.r#type == XEN_NETIF_EXTRA_TYPE_GSO {
            let g = extra.u.gso();
            match GsoType::try_from(g.r#type) {
                Ok(gso_type) if g.size > 0 => {
                    if shape.rx_gso {
                        self.gso = Some(NetGso {
                            gso_type,
                            size: g.size,
                        });
                    }
                }
                _ => self.drop_packet(NetError::BadRxGso {
                    gso_type: g.r#type,
                    size: g.size,
                }),
            }
        }
        self.expect_extra = extra.flags & XEN_NETIF_EXTRA_FLAG_MORE != 0;
    }

    /// Handles one RX response; `Some` when a packet ended (delivered or dropped). The buffer of the slot
    /// is kept while it holds a fragment of the packet, and given back otherwise.
    fn rx_slot<B: RingMemory>(
        &mut self,
        pool: &B,
        shape: &Shape,
        posted: u16,
        rsp: &NetifRxResponse,
        buf: &mut [u8],
    ) -> Option<Result<Option<RxMeta>, NetError>> {
        let mut held = false;
        let more;
        if self.expect_extra {
            self.rx_extra(shape, rsp);
            // The extras follow the first data slot; more data follows them if that slot said so.
            more = self.first_flags.contains(NetRxFlags::MORE_DATA);
        } else {
            let first = !self.in_packet;
            self.in_packet = true;
            let flags = NetRxFlags::from_bits_retain(rsp.flags);
            more = flags.contains(NetRxFlags::MORE_DATA);
            if first {
                self.first_flags = flags;
                self.gso = None;
                if flags.contains(NetRxFlags::EXTRA_INFO) {
                    self.expect_extra = true;
                }
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
        let result = self.deliver(pool, shape, buf);
        self.release_frags();
        match result {
            Ok(_) => self.stats.rx_packets += 1,
            Err(_) => self.stats.rx_dropped += 1,
        }
        Some(result)
    }

    /// Copies the assembled packet into `buf` and completes its checksum if the driver must.
    fn deliver<B: RingMemory>(
        &mut self,
        pool: &B,
        shape: &Shape,
        buf: &mut [u8],
    ) -> Result<Option<RxMeta>, NetError> {
        let nfrags = self.nfrags;
        let len: usize = self.frags[..nfrags]
            .iter()
            .map(|f| usize::from(f.size))
            .sum();
        if len < usize::from(ETH_HLEN) {
            return Err(NetError::RxRunt { len });
        }
        let Some(out) = buf.get_mut(..len) else {
            return Err(NetError::BufferTooSmall {
                len,
                available: buf.len(),
            });
        };
        let mut at = 0;
        for f in &self.frags[..nfrags] {
            let size = usize::from(f.size);
            let off = self.rx_page(usize::from(f.buf)) + usize::from(f.offset);
            shmem::read(pool, off, &mut out[at..at + size]);
            at += size;
        }
        let flags = self.first_flags;
        let mut csum_blank = flags.contains(NetRxFlags::CSUM_BLANK);
        if csum_blank
            && shape.rx_complete_csum
            && self.gso.is_none()
            && let Some((field, csum)) = netpkt::complete_checksum(out)
        {
            out[field..field + 2].copy_from_slice(&csum);
            csum_blank = false;
            self.stats.csum_completed += 1;
        }
        Ok(Some(RxMeta {
            len,
            queue: 0,
            csum_blank,
            data_validated: flags.contains(NetRxFlags::DATA_VALIDATED),
            gso: self.gso.take(),
        }))
    }
}

/// The shared pages a netfront of up to `Q` queues needs, one page each: every queue's TX and RX rings,
/// and optionally the control ring and a page it sends the hash key and mapping table in.
#[derive(Debug)]
pub struct NetRings<M, const Q: usize> {
    /// Each queue's TX and RX ring pages.
    pub queues: [(M, M); Q],
    /// The control ring's page and its data page, for [`NetFeatures::ctrl_ring`].
    pub ctrl: Option<(M, M)>,
}

impl<M, const Q: usize> NetRings<M, Q> {
    /// The queues' rings, no control ring.
    pub fn new(queues: [(M, M); Q]) -> Self {
        Self { queues, ctrl: None }
    }

    /// The same, with `ring` as the control ring and `data` as its data page.
    pub fn with_ctrl(mut self, ring: M, data: M) -> Self {
        self.ctrl = Some((ring, data));
        self
    }
}

/// The control ring, its data page, their grants and its port.
struct Ctrl<M> {
    ring: FrontRing<M, NetifCtrl>,
    data: M,
    /// The ring's and the data page's grants; `ngranted` of them are live.
    refs: [GrantRef; 2],
    ngranted: usize,
    port: Option<EvtchnPort>,
    next_id: u16,
}

/// The entries of the hash mapping table netfront sets (Linux netback's largest).
const HASH_MAPPING_SIZE: u32 = 128;

impl<M: RingMemory> Ctrl<M> {
    fn setup<P: Platform>(&mut self, platform: &P, backend: DomId) -> Result<(), NetError> {
        for (mem, readonly) in [
            (self.ring.memory().as_ptr() as usize, false),
            (self.data.as_ptr() as usize, true),
        ] {
            let f = platform.frame_of(mem)?;
            self.refs[self.ngranted] = platform.grant_access(backend, f, readonly)?;
            self.ngranted += 1;
        }
        self.port = Some(platform.alloc_unbound(backend)?);
        Ok(())
    }

    fn release<P: Platform>(&mut self, platform: &P) -> Result<(), PlatformError> {
        let mut first = Ok(());
        if let Some(port) = self.port.take()
            && let Err(e) = platform.close(port)
        {
            first = Err(e);
        }
        for gref in &self.refs[..self.ngranted] {
            if let Err(e) = platform.end_access(*gref)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        self.ngranted = 0;
        first
    }

    /// Sends one request and waits (up to `timeout_ns`) for its answer, which must be a success.
    fn request<P: Platform>(
        &mut self,
        platform: &P,
        op: CtrlOp,
        timeout_ns: u64,
    ) -> Result<u32, NetError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let req = op.to_request(id);
        let port = self.port.unwrap_or(0);
        self.ring.put_request(&req)?;
        if self.ring.push_requests_and_check_notify() {
            platform.notify(port)?;
        }
        let deadline = platform.now_ns().saturating_add(timeout_ns);
        // Bounded by the deadline; the ring refuses more responses than requests.
        loop {
            if let Some(rsp) = self.ring.pop_response()? {
                if rsp.id != id {
                    return Err(NetError::BadCtrlId {
                        want: id,
                        got: rsp.id,
                    });
                }
                return match rsp.ctrl_status() {
                    Ok(CtrlStatus::Success) => Ok(rsp.data),
                    _ => Err(NetError::CtrlRefused {
                        ctrl_type: req.r#type,
                        status: rsp.status,
                    }),
                };
            }
            if self.ring.final_check_for_responses()? {
                continue;
            }
            let now = platform.now_ns();
            if now >= deadline {
                return Err(NetError::CtrlTimeout {
                    ctrl_type: req.r#type,
                });
            }
            platform.wait(port, deadline - now)?;
        }
    }

    /// Sets the receive-side hash: Toeplitz with the RSS key over IPv4 and IPv6 addresses and TCP ports,
    /// and a table mapping hash values to the `queues` in turn.
    fn set_hash<P: Platform>(
        &mut self,
        platform: &P,
        queues: usize,
        timeout_ns: u64,
    ) -> Result<(), NetError> {
        self.request(
            platform,
            CtrlOp::SetHashAlgorithm {
                algorithm: HashAlgorithm::Toeplitz,
            },
            timeout_ns,
        )?;
        shmem::write(&self.data, 0, &netpkt::RSS_KEY);
        self.request(
            platform,
            CtrlOp::SetHashKey {
                gref: self.refs[1],
                len: netpkt::RSS_KEY.len() as u32,
            },
            timeout_ns,
        )?;
        self.request(
            platform,
            CtrlOp::SetHashMappingSize {
                size: HASH_MAPPING_SIZE,
            },
            timeout_ns,
        )?;
        for i in 0..HASH_MAPPING_SIZE as usize {
            let queue = (i % queues.max(1)) as u32;
            shmem::write(&self.data, i * 4, &queue.to_ne_bytes());
        }
        self.request(
            platform,
            CtrlOp::SetHashMapping {
                gref: self.refs[1],
                len: HASH_MAPPING_SIZE,
                off: 0,
            },
            timeout_ns,
        )?;
        self.request(
            platform,
            CtrlOp::SetHashFlags {
                flags: HashTypes::IPV4
                    | HashTypes::IPV4_TCP
                    | HashTypes::IPV6
                    | HashTypes::IPV6_TCP,
            },
            timeout_ns,
        )?;
        Ok(())
    }
}

/// A connected netfront of up to `Q` queues (one by default).
pub struct NetFront<P, M, B, const Q: usize = 1> {
    platform: P,
    queues: [Option<Queue<M>>; Q],
    nq: usize,
    ctrl: Option<Ctrl<M>>,
    device: FrontendDevice,
    info: NetInfo,
    shape: Shape,
    pool: B,
    /// The queue [`NetFront::recv`] looks at first.
    rx_next: usize,
    timeout_ns: u64,
}

impl<P, M, B, const Q: usize> core::fmt::Debug for NetFront<P, M, B, Q> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NetFront")
            .field("device", &self.device)
            .field("info", &self.info)
            .field("queues", &self.nq)
            .finish_non_exhaustive()
    }
}

impl<P: Platform, M: RingMemory, B: RingMemory> NetFront<P, M, B, 1> {
    /// Connects one queue to the back-end of the vif at `node` (for example `device/vif/0`), with
    /// `tx_page` and `rx_page` as the rings and `pool` (page-aligned memory of this domain) holding
    /// `rx_buffers + tx_buffers` pages; asks for [`NetFeatures::BASIC`]. See
    /// [`connect_with`](Self::connect_with).
    pub fn connect<XM: RingMemory>(
        platform: P,
        xb: &mut XenBus<P, XM>,
        node: &[u8],
        tx_page: M,
        rx_page: M,
        pool: B,
        config: NetConfig,
    ) -> Result<Self, NetError> {
        Self::connect_with(
            platform,
            xb,
            node,
            NetRings::new([(tx_page, rx_page)]),
            pool,
            config,
            NetFeatures::BASIC,
        )
    }
}

impl<P: Platform, M: RingMemory, B: RingMemory, const Q: usize> NetFront<P, M, B, Q> {
    /// Connects to the back-end of the vif at `node` with up to `Q` queues: `rings` are each queue's TX
    /// and RX ring pages (and the control ring's, if any), and `pool` (page-aligned memory of this domain) holds
    /// `Q * (rx_buffers + tx_buffers)` pages. Uses `min(Q, multi-queue-max-queues)` queues (the rest of
    /// `rings` and `pool` stay unused) and asks for `features` where the back-end offers them.
    ///
    /// On an error after the rings were published, the grants are ended where the back-end let go; a page
    /// it still maps stays granted and must not be reused (the error does not say which: treat the ring and
    /// pool memory as lost to the back-end).
    pub fn connect_with<XM: RingMemory>(
        platform: P,
        xb: &mut XenBus<P, XM>,
        node: &[u8],
        rings: NetRings<M, Q>,
        pool: B,
        config: NetConfig,
        features: NetFeatures,
    ) -> Result<Self, NetError> {
        let pages = pool.len() / XEN_PAGE_SIZE;
        let per_queue = config.rx_buffers + config.tx_buffers;
        let need = per_queue * Q;
        if Q == 0
            || !(1..=NET_RX_RING_SIZE).contains(&config.rx_buffers)
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
        let bad_mac = NetError::Front(FrontError::BadNode {
            key: "mac",
            what: "not a MAC address aa:bb:cc:dd:ee:ff",
        });
        let mac = match xb.read(XBT_NIL, dev.node().join(b"mac")?.as_bytes(), &mut macbuf) {
            Ok(n) => parse_mac(&macbuf[..n]).ok_or(bad_mac)?,
            Err(XenBusError::Xs(XsErrno::ENOENT)) => {
                return Err(FrontError::BadNode {
                    key: "mac",
                    what: "missing",
                }
                .into());
            }
            Err(XenBusError::BufferTooSmall { .. }) => return Err(bad_mac),
            Err(e) => return Err(e.into()),
        };
        let backend: DomId = dev.backend_id();
        front::wait_for_backend_features(xb, &mut dev, timeout)?;
        if !backend_flag(xb, &dev, "feature-rx-copy")? {
            return Err(NetError::NotOffered {
                feature: "feature-rx-copy",
            });
        }
        let sg = backend_flag(xb, &dev, "feature-sg")?;
        let gso_tcpv4 = backend_flag(xb, &dev, "feature-gso-tcpv4")?;
        let gso_tcpv6 = backend_flag(xb, &dev, "feature-gso-tcpv6")?;
        let csum_ipv4 = !backend_flag(xb, &dev, "feature-no-csum-offload")?;
        let csum_ipv6 = backend_flag(xb, &dev, "feature-ipv6-csum-offload")?;
        let split = backend_flag(xb, &dev, "feature-split-event-channels")?;
        let ctrl_ring = backend_flag(xb, &dev, "feature-ctrl-ring")?;
        let max_queues = backend_max_queues(xb, &dev)?;
        let nq = Q.min(max_queues as usize);
        let negotiated = NetFeatures {
            split_event_channels: features.split_event_channels && split,
            csum_offload: features.csum_offload,
            // GSO needs scatter-gather: a super-frame takes up to 17 slots.
            gso: features.gso && sg && (gso_tcpv4 || gso_tcpv6),
            ctrl_ring: features.ctrl_ring && ctrl_ring && nq > 1 && rings.ctrl.is_some(),
        };
        let info = NetInfo {
            mac,
            sg,
            gso_tcpv4,
            gso_tcpv6,
            csum_ipv4,
            csum_ipv6,
            split_event_channels: split,
            ctrl_ring,
            max_queues,
            queues: nq,
            negotiated,
        };
        let shape = Shape {
            nrx: config.rx_buffers,
            ntx: config.tx_buffers,
            backend,
            rx_complete_csum: !negotiated.csum_offload,
            rx_gso: negotiated.gso,
        };

        // Rings, their grants, the event channels and the buffers' grants.
        let mut ring_error = None;
        let mut base = 0;
        let ctrl = match rings.ctrl {
            Some((ring, data)) if negotiated.ctrl_ring => {
                if data.len() < XEN_PAGE_SIZE || (data.as_ptr() as usize) % XEN_PAGE_SIZE != 0 {
                    return Err(NetError::BadPool {
                        rx: config.rx_buffers,
                        tx: config.tx_buffers,
                        need,
                        pages,
                    });
                }
                Some(Ctrl {
                    ring: FrontRing::new(ring)?,
                    data,
                    refs: [0; 2],
                    ngranted: 0,
                    port: None,
                    next_id: 0,
                })
            }
            _ => None,
        };
        let mut ctrl = ctrl;
        let mut queues = rings.queues.map(|(tx, rx)| {
            let q = match (FrontRing::new(tx), FrontRing::new(rx)) {
                (Ok(tx), Ok(rx)) => Some(Queue::new(tx, rx, base)),
                (Err(e), _) | (_, Err(e)) => {
                    ring_error.get_or_insert(e);
                    None
                }
            };
            base += per_queue;
            q
        });
        if let Some(e) = ring_error {
            return Err(e.into());
        }
        let pool_addr = pool.as_ptr() as usize;
        let mut result = Ok(());
        for q in queues.iter_mut().take(nq).flatten() {
            result = q.setup(
                &platform,
                pool_addr,
                &shape,
                negotiated.split_event_channels,
            );
            if result.is_err() {
                break;
            }
        }
        if result.is_ok()
            && let Some(c) = &mut ctrl
        {
            result = c.setup(&platform, backend);
        }
        let cleanup =
            |platform: &P, queues: &mut [Option<Queue<M>>; Q], ctrl: &mut Option<Ctrl<M>>| {
                for q in queues.iter_mut().flatten() {
                    let _ = q.release(platform);
                }
                if let Some(c) = ctrl {
                    let _ = c.release(platform);
                }
            };
        if let Err(e) = result {
            cleanup(&platform, &mut queues, &mut ctrl);
            return Err(e);
        }
        let publish = (|| -> Result<(), NetError> {
            Self::publish(xb, &dev, &queues[..nq], ctrl.as_ref(), &info)?;
            dev.switch_state(xb, XBT_NIL, XenbusState::Initialised)?;
            front::wait_for_backend_connected(xb, &mut dev, timeout)?;
            if let Some(c) = &mut ctrl {
                c.set_hash(&platform, nq, timeout)?;
            }
            dev.switch_state(xb, XBT_NIL, XenbusState::Connected)?;
            Ok(())
        })();
        if let Err(e) = publish {
            let _ = dev.switch_state(xb, XBT_NIL, XenbusState::Closing);
            cleanup(&platform, &mut queues, &mut ctrl);
            return Err(e);
        }
        let mut net = Self {
            platform,
            queues,
            nq,
            ctrl,
            device: dev,
            info,
            shape,
            pool,
            rx_next: 0,
            timeout_ns: timeout,
        };
        for q in net.queues.iter_mut().take(nq).flatten() {
            q.refill(&net.platform, &net.shape)?;
        }
        Ok(net)
    }

    fn publish<XM: RingMemory>(
        xb: &mut XenBus<P, XM>,
        dev: &FrontendDevice,
        queues: &[Option<Queue<M>>],
        ctrl: Option<&Ctrl<M>>,
        info: &NetInfo,
    ) -> Result<(), NetError> {
        let node = dev.node();
        let f = info.negotiated;
        let flag = |on: bool| -> &'static [u8] { if on { b"1" } else { b"0" } };
        let gso = f.gso;
        let values: [(&[u8], &[u8]); 7] = [
            (b"request-rx-copy", b"1"),
            (b"feature-rx-notify", b"1"),
            (b"feature-sg", flag(info.sg)),
            (b"feature-gso-tcpv4", flag(gso && info.gso_tcpv4)),
            (b"feature-gso-tcpv6", flag(gso && info.gso_tcpv6)),
            (b"feature-no-csum-offload", flag(!f.csum_offload)),
            (b"feature-ipv6-csum-offload", flag(f.csum_offload)),
        ];
        let write_all = |xb: &mut XenBus<P, XM>, t: TxId| -> Result<(), XenBusError> {
            if queues.len() == 1 {
                if let Some(q) = &queues[0] {
                    q.write_keys(xb, t, node)?;
                }
            } else {
                let mut num = [0u8; 20];
                xb.write(
                    t,
                    node.join(b"multi-queue-num-queues")?.as_bytes(),
                    fmt_decimal(queues.len() as u64, &mut num),
                )?;
                for (i, q) in queues.iter().enumerate() {
                    let mut name = [0u8; 26];
                    name[..6].copy_from_slice(b"queue-");
                    let digits = fmt_decimal(i as u64, &mut num);
                    let n = 6 + digits.len();
                    name[6..n].copy_from_slice(digits);
                    if let Some(q) = q {
                        q.write_keys(xb, t, &node.join(&name[..n])?)?;
                    }
                }
            }
            if let Some(c) = ctrl {
                let mut num = [0u8; 20];
                xb.write(
                    t,
                    node.join(b"ctrl-ring-ref")?.as_bytes(),
                    fmt_decimal(u64::from(c.refs[0]), &mut num),
                )?;
                xb.write(
                    t,
                    node.join(b"event-channel-ctrl")?.as_bytes(),
                    fmt_decimal(u64::from(c.port.unwrap_or(0)), &mut num),
                )?;
            }
            for (key, value) in values {
                xb.write(t, node.join(key)?.as_bytes(), value)?;
            }
            Ok(())
        };
        Ok(front::in_transaction(xb, write_all)?)
    }

    /// Sets the timeout of the blocking calls from now on, in nanoseconds.
    pub fn set_timeout_ns(&mut self, timeout_ns: u64) {
        self.timeout_ns = timeout_ns;
    }

    /// What the back-end offers and what was negotiated.
    pub fn info(&self) -> &NetInfo {
        &self.info
    }

    /// The counters, summed over the queues.
    pub fn stats(&self) -> NetStats {
        let mut s = NetStats::default();
        for q in self.active() {
            s.add(&q.stats);
        }
        s
    }

    /// The counters of queue `q` (`None` past the queues in use).
    pub fn queue_stats(&self, q: usize) -> Option<NetStats> {
        self.active().nth(q).map(|q| q.stats)
    }

    /// The queues in use.
    pub fn queues(&self) -> usize {
        self.nq
    }

    /// The xenbus device.
    pub fn device(&self) -> &FrontendDevice {
        &self.device
    }

    /// Queue 0's rings' grant references and its (TX) event channel.
    pub fn rings_and_port(&self) -> (GrantRef, GrantRef, EvtchnPort) {
        self.queue_rings_and_ports(0)
            .map_or((0, 0, 0), |(t, r, tp, _)| (t, r, tp))
    }

    /// Queue `q`'s TX and RX rings' grant references and its TX and RX event channels (the same port
    /// twice without split event channels).
    pub fn queue_rings_and_ports(
        &self,
        q: usize,
    ) -> Option<(GrantRef, GrantRef, EvtchnPort, EvtchnPort)> {
        self.active()
            .nth(q)
            .map(|q| (q.ring_refs[0], q.ring_refs[1], q.tx_port(), q.rx_port()))
    }

    /// The longest frame [`send`](Self::send) takes: 65535 bytes with `feature-sg`, a page without.
    pub fn max_frame(&self) -> usize {
        if self.info.sg {
            usize::from(XEN_NETIF_MAX_TX_SIZE)
        } else {
            XEN_PAGE_SIZE
        }
    }

    /// The TX queue a frame goes to (see the module's documentation).
    pub fn tx_queue_of(&self, frame: &[u8]) -> usize {
        netpkt::tx_queue(frame, self.nq)
    }

    fn active(&self) -> impl Iterator<Item = &Queue<M>> {
        self.queues.iter().take(self.nq).flatten()
    }

    /// Reaps TX completions of every queue; returns how many slots were freed. The first hostile
    /// response is returned as an error after the rings are drained.
    pub fn reap_tx(&mut self) -> Result<usize, NetError> {
        let mut freed = 0;
        let mut first_err = None;
        for q in self.queues.iter_mut().take(self.nq).flatten() {
            match q.reap_tx(&self.shape) {
                Ok(n) => freed += n,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(freed),
        }
    }

    /// Sends one Ethernet frame (copied into TX pages now) on its flow's queue. Reaps that queue's TX
    /// completions first; hostile TX responses met there are counted in [`NetStats::tx_bad_responses`]
    /// and do not stop the send.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.send_with(frame, TxOffload::default())
    }

    /// Sends one Ethernet frame with offloads, as [`send`](Self::send).
    pub fn send_with(&mut self, frame: &[u8], offload: TxOffload) -> Result<(), NetError> {
        let len = frame.len();
        let max = self.max_frame();
        if len < usize::from(ETH_HLEN) || len > max {
            return Err(NetError::BadFrame { len, max });
        }
        let mut flags = NetTxFlags::empty();
        let mut csum_patch = None;
        if let Some(g) = offload.gso {
            let offered = match g.gso_type {
                GsoType::TcpV4 => self.info.gso_tcpv4,
                GsoType::TcpV6 => self.info.gso_tcpv6,
                _ => false,
            };
            if !self.info.negotiated.gso || !offered {
                return Err(NetError::BadOffload {
                    what: "GSO of this type was not negotiated",
                });
            }
            if g.size == 0 {
                return Err(NetError::BadOffload { what: "GSO size 0" });
            }
            let tcp = netpkt::headers(frame).is_some_and(|h| {
                h.proto == 6 && h.l4.is_some() && h.v6 == matches!(g.gso_type, GsoType::TcpV6)
            });
            if !tcp {
                return Err(NetError::BadOffload {
                    what: "a GSO frame must be TCP over the IP version of its GSO type",
                });
            }
            // As Linux's netfront: a GSO frame's checksum is partial.
            flags |= NetTxFlags::CSUM_BLANK | NetTxFlags::DATA_VALIDATED;
        } else if offload.csum_blank {
            let takes = match netpkt::is_ipv6(frame) {
                Some(false) => self.info.csum_ipv4,
                Some(true) => self.info.csum_ipv6,
                None => false,
            };
            if takes {
                flags |= NetTxFlags::CSUM_BLANK | NetTxFlags::DATA_VALIDATED;
            } else {
                // The back-end cannot take it: complete it here (a frame that is not TCP or UDP over
                // IP is sent as it is).
                csum_patch = netpkt::complete_checksum(frame);
            }
        }
        if offload.data_validated {
            flags |= NetTxFlags::DATA_VALIDATED;
        }
        let qi = netpkt::tx_queue(frame, self.nq);
        let Some(q) = self.queues.iter_mut().take(self.nq).flatten().nth(qi) else {
            return Err(NetError::Stopped);
        };
        let reaped = q.reap_tx(&self.shape);
        if let Err(NetError::Stopped | NetError::Front(FrontError::Ring(_))) = reaped {
            return reaped.map(|_| ());
        }
        q.send(
            &self.platform,
            &self.pool,
            &self.shape,
            frame,
            TxPlan {
                flags,
                gso: offload.gso,
                csum_patch,
            },
        )?;
        if csum_patch.is_some() {
            q.stats.csum_completed += 1;
        }
        Ok(())
    }

    /// Receives one packet into `buf`: `Ok(Some(len))`, or `Ok(None)` when no complete packet is waiting
    /// on any queue. A packet the back-end got wrong (or that does not fit `buf`) is dropped and its error
    /// returned; call again for the next one. Offload flags are not returned: see
    /// [`recv_meta`](Self::recv_meta).
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        Ok(self.recv_meta(buf)?.map(|m| m.len))
    }

    /// Receives one packet into `buf`, with its queue and offload flags, looking at every queue in turn.
    pub fn recv_meta(&mut self, buf: &mut [u8]) -> Result<Option<RxMeta>, NetError> {
        let nq = self.nq;
        for k in 0..nq {
            let qi = (self.rx_next + k) % nq;
            let Some(Some(q)) = self.queues.get_mut(qi) else {
                continue;
            };
            if let Some(mut meta) = q.recv(&self.platform, &self.pool, &self.shape, buf)? {
                meta.queue = qi;
                self.rx_next = (qi + 1) % nq;
                return Ok(Some(meta));
            }
        }
        Ok(None)
    }

    /// Waits up to the timeout for a packet and receives it as [`recv`](Self::recv) does.
    pub fn recv_wait(&mut self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        Ok(self.recv_meta_wait(buf)?.map(|m| m.len))
    }

    /// Waits up to the timeout for a packet and receives it as [`recv_meta`](Self::recv_meta) does.
    pub fn recv_meta_wait(&mut self, buf: &mut [u8]) -> Result<Option<RxMeta>, NetError> {
        let deadline = self.platform.now_ns().saturating_add(self.timeout_ns);
        let mut ports = [0; Q];
        for (p, q) in ports.iter_mut().zip(self.active()) {
            *p = q.rx_port();
        }
        // Bounded by the deadline.
        loop {
            if let Some(m) = self.recv_meta(buf)? {
                return Ok(Some(m));
            }
            let now = self.platform.now_ns();
            if now >= deadline {
                return Ok(None);
            }
            self.platform.wait_any(&ports[..self.nq], deadline - now)?;
        }
    }

    /// Sends a frame, waiting (up to the timeout) for TX room if its queue's ring or buffers are full.
    pub fn send_wait(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.send_with_wait(frame, TxOffload::default())
    }

    /// Sends a frame with offloads, waiting as [`send_wait`](Self::send_wait) does.
    pub fn send_with_wait(&mut self, frame: &[u8], offload: TxOffload) -> Result<(), NetError> {
        let deadline = self.platform.now_ns().saturating_add(self.timeout_ns);
        let port = self
            .active()
            .nth(netpkt::tx_queue(frame, self.nq))
            .map_or(0, Queue::tx_port);
        loop {
            match self.send_with(frame, offload) {
                Err(NetError::TxFull { needed, free }) => {
                    let now = self.platform.now_ns();
                    if now >= deadline {
                        return Err(NetError::TxFull { needed, free });
                    }
                    self.platform.wait(port, deadline - now)?;
                }
                other => return other,
            }
        }
    }

    /// Closes the interface: `state` Closing, the back-end followed to Closing or Closed (within the
    /// timeout), `state` Closed, the event channels closed, and every grant ended. A grant the back-end
    /// still maps is reported ([`PlatformError::GrantInUse`]) after the others are ended; its page must not
    /// be reused.
    pub fn close<XM: RingMemory>(mut self, xb: &mut XenBus<P, XM>) -> Result<(), NetError> {
        front::close_device(xb, &mut self.device, self.timeout_ns)?;
        let mut first = Ok(());
        for q in self.queues.iter_mut().flatten() {
            if let Err(e) = q.release(&self.platform)
                && first.is_ok()
            {
                first = Err(e.into());
            }
        }
        if let Some(c) = &mut self.ctrl
            && let Err(e) = c.release(&self.platform)
            && first.is_ok()
        {
            first = Err(e.into());
        }
        first
    }

    /// TX slots in flight, over every queue.
    pub fn tx_in_flight(&self) -> usize {
        self.active()
            .map(|q| q.tx_busy[..self.shape.ntx].iter().filter(|b| **b).count())
            .sum()
    }
}
