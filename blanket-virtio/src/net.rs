//! A virtio-net driver (virtio 1.2, section 5.1) over any [`Transport`]: queue pairs
//! (`VIRTIO_NET_F_MQ`), the control queue (receive modes, MAC, number of pairs), mergeable
//! receive buffers, and (with [`NetOptions::offloads`]) checksum and TCP segmentation offload
//! headers both ways. Control commands complete one at a time; the ack is validated.
//!
//! Every frame carries a 12-byte `virtio_net_hdr_v1` in front, whose offload fields are a
//! [`NetHdr`]. Transmit copies the frame into a per-descriptor slot in shared memory, or, for a
//! GSO frame above the MTU, into one of [`GSO_TX_SLOTS`] 64 KiB slots; the header the caller
//! gives is checked against the negotiated features first (5.1.6.2.1). What the device writes
//! in a receive header is checked the same way (5.1.6.4.1): flags, GSO type and checksum offsets
//! it may not use, or that point outside the frame, are typed errors. Receive keeps the receive queue filled with fixed-size buffers; with
//! `VIRTIO_NET_F_MRG_RXBUF` a frame may span `num_buffers` of them. What the device writes is
//! validated: a used length of at least the header and at most the buffer (checked by the
//! queue), `num_buffers` between 1 and the buffers it may use, the buffers of a frame all
//! published together, and a frame no longer than the MTU allows.

use std::mem::{offset_of, size_of};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::{
    VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED, VIRTIO_F_RING_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLMULTI,
    VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_ERR, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_MAC_ADDR,
    VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_OK,
    VIRTIO_NET_S_ANNOUNCE, VIRTIO_NET_S_LINK_UP, virtio_net_config, virtio_net_hdr_v1,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::memory::DmaMemory;
use crate::queue::VirtQueue;
use crate::queue::packed::PackedQueue;
use crate::queue::split::{self, QueueFeatures, Segment, SplitQueue};
use crate::transport::{self, Attempt, Transport};

/// Bytes of the header in front of every frame (`virtio_net_hdr_v1`).
pub const HDR_BYTES: usize = size_of::<virtio_net_hdr_v1>();
/// Bytes of each receive buffer.
pub const RX_BUFFER_BYTES: u32 = 2048;
/// The smallest Ethernet frame accepted (the header alone).
pub const MIN_FRAME: usize = 14;
/// The longest frame with segmentation offload: a 64 KiB IP datagram behind an Ethernet header.
pub const MAX_GSO_FRAME: usize = MIN_FRAME + 65535;
/// How many GSO frames above the MTU may be in flight on the transmit queue at once.
pub const GSO_TX_SLOTS: usize = 16;
/// Bytes of config space read: up to and with `mtu`.
pub const CONFIG_BYTES: usize = offset_of!(virtio_net_config, speed);

/// Errors of the virtio-net driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] transport::Error),
    /// The queue failed, or the device misbehaved on it.
    #[error(transparent)]
    Queue(#[from] split::Error),
    /// Shared memory allocation failed.
    #[error("cannot allocate shared memory")]
    Memory(#[from] crate::memory::Error),
    /// Shared memory access failed.
    #[error("cannot access shared memory")]
    Access(#[source] vm_memory::GuestMemoryError),
    /// The device does not offer `VIRTIO_F_VERSION_1`.
    #[error("the device does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NotVersion1(u64),
    /// The config space holds an impossible value.
    #[error("invalid config space: {field} = {value}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A frame to send shorter than an Ethernet header or longer than the MTU allows.
    #[error("frame of {len} bytes outside {min}..={max}")]
    BadFrameLength {
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
        /// The maximum.
        max: usize,
    },
    /// A receive completion shorter than the header.
    #[error(
        "receive buffer {head} completed with {len} bytes, less than the {HDR_BYTES}-byte header"
    )]
    ShortRxBuffer {
        /// Its head.
        head: u16,
        /// Its length.
        len: u32,
    },
    /// A `num_buffers` of 0, above what was posted, or not all published with the frame.
    #[error("num_buffers {num_buffers} invalid ({available} buffers completed)")]
    BadNumBuffers {
        /// What the device wrote.
        num_buffers: u16,
        /// Completions available.
        available: usize,
    },
    /// A received frame longer than the MTU allows.
    #[error("received frame of {len} bytes above the maximum of {max}")]
    FrameTooLong {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The transmit queue is full.
    #[error("transmit queue full")]
    TxFull,
    /// A header to send that the negotiated features do not allow, or that does not fit the
    /// frame (5.1.6.2.1).
    #[error("transmit header {hdr:?} refused for a {len}-byte frame: {why}")]
    BadTxHeader {
        /// The header.
        hdr: NetHdr,
        /// The frame's length.
        len: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// A queue pair that is not set up.
    #[error("queue pair {pair} is not set up ({pairs} pairs)")]
    NoSuchPair {
        /// The pair asked for.
        pair: u16,
        /// Pairs set up.
        pairs: u16,
    },
    /// A control command without a control queue (`VIRTIO_NET_F_CTRL_VQ` not negotiated, or
    /// no config space: a vhost-user back-end, whose front-end owns the control queue).
    #[error("no control queue: VIRTIO_NET_F_CTRL_VQ not negotiated")]
    NoControlQueue,
    /// A control command whose feature was not negotiated.
    #[error("{0} was not negotiated")]
    NotNegotiated(&'static str),
    /// A multicast MAC address given to [`NetDriver::set_mac`].
    #[error("{0:02x?} is a multicast address, not a station's")]
    MulticastMac([u8; 6]),
    /// The device answered a control command with `VIRTIO_NET_ERR`.
    #[error("the device refused control command class {class} command {command}")]
    CommandFailed {
        /// The command's class.
        class: u8,
        /// The command.
        command: u8,
    },
    /// The device completed a control command with an ack that is neither `VIRTIO_NET_OK`
    /// nor `VIRTIO_NET_ERR`, or a used length other than the one ack byte.
    #[error(
        "control command class {class} command {command}: ack {ack:#x}, used length {len} (want 0 or 1, length 1)"
    )]
    BadAck {
        /// The command's class.
        class: u8,
        /// The command.
        command: u8,
        /// The ack byte read.
        ack: u8,
        /// The used length.
        len: u32,
    },
    /// A receive header the device may not write under the negotiated features, or that does
    /// not fit the frame (5.1.6.4.1).
    #[error("device wrote receive header {hdr:?} for a {len}-byte frame: {why}")]
    BadRxHeader {
        /// The header (its copy).
        hdr: NetHdr,
        /// The frame's length.
        len: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// [`NetDriver::reconnect`] with a transport over other memory.
    #[error("the new transport does not share the driver's memory")]
    DifferentMemory,
    /// [`NetDriver::reconnect`] to a device that lost a feature, queue pairs, queue size or
    /// its config space.
    #[error("the device changed across the reconnection: {0}")]
    DeviceChanged(&'static str),
    /// The device went away and could not be reconnected to within
    /// [`NetOptions::reconnect`].
    #[error(
        "the device went away and no reconnection succeeded within {after:?} (is the back-end running?)"
    )]
    ReconnectFailed {
        /// How long reconnecting was tried.
        after: Duration,
        /// Why the last attempt failed.
        #[source]
        source: Box<Error>,
    },
}

/// The offload fields of `virtio_net_hdr_v1` (5.1.6): everything but `num_buffers`.
///
/// To send a frame whose TCP or UDP checksum the device completes, set
/// [`NetHdr::NEEDS_CSUM`] with `csum_start` (where checksumming starts, the transport header)
/// and `csum_offset` (where in it the checksum goes), the checksum field holding the
/// pseudo-header sum. For segmentation, also set `gso_type` and `gso_size` (the MSS) and
/// `hdr_len` (the headers' length).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers (Ethernet, IP, TCP) in a GSO frame.
    pub hdr_len: u16,
    /// The MSS of a GSO frame.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

impl NetHdr {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum is partial, to be completed.
    pub const NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    /// `VIRTIO_NET_HDR_F_DATA_VALID`: the device checked the checksum (receive only).
    pub const DATA_VALID: u8 = VIRTIO_NET_HDR_F_DATA_VALID as u8;
    /// `VIRTIO_NET_HDR_GSO_NONE`.
    pub const GSO_NONE: u8 = VIRTIO_NET_HDR_GSO_NONE as u8;
    /// `VIRTIO_NET_HDR_GSO_TCPV4`.
    pub const GSO_TCPV4: u8 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    /// `VIRTIO_NET_HDR_GSO_TCPV6`.
    pub const GSO_TCPV6: u8 = VIRTIO_NET_HDR_GSO_TCPV6 as u8;
    /// `VIRTIO_NET_HDR_GSO_ECN`, or-ed into `gso_type`.
    pub const GSO_ECN: u8 = VIRTIO_NET_HDR_GSO_ECN as u8;

    /// A header asking the device to complete a checksum.
    pub fn partial_csum(csum_start: u16, csum_offset: u16) -> Self {
        NetHdr {
            flags: Self::NEEDS_CSUM,
            csum_start,
            csum_offset,
            ..NetHdr::default()
        }
    }

    /// The header as the device sees it (`num_buffers` 0).
    pub fn to_bytes(&self) -> [u8; HDR_BYTES] {
        let mut b = [0u8; HDR_BYTES];
        b[offset_of!(virtio_net_hdr_v1, flags)] = self.flags;
        b[offset_of!(virtio_net_hdr_v1, gso_type)] = self.gso_type;
        let mut put = |off: usize, v: u16| b[off..off + 2].copy_from_slice(&v.to_le_bytes());
        put(offset_of!(virtio_net_hdr_v1, hdr_len), self.hdr_len);
        put(offset_of!(virtio_net_hdr_v1, gso_size), self.gso_size);
        put(
            offset_of!(virtio_net_hdr_v1, __bindgen_anon_1),
            self.csum_start,
        );
        put(
            offset_of!(virtio_net_hdr_v1, __bindgen_anon_1) + 2,
            self.csum_offset,
        );
        b
    }

    /// The offload fields of a header copy.
    pub fn from_bytes(b: &[u8; HDR_BYTES]) -> Self {
        let get = |off: usize| u16::from_le_bytes([b[off], b[off + 1]]);
        NetHdr {
            flags: b[offset_of!(virtio_net_hdr_v1, flags)],
            gso_type: b[offset_of!(virtio_net_hdr_v1, gso_type)],
            hdr_len: get(offset_of!(virtio_net_hdr_v1, hdr_len)),
            gso_size: get(offset_of!(virtio_net_hdr_v1, gso_size)),
            csum_start: get(offset_of!(virtio_net_hdr_v1, __bindgen_anon_1)),
            csum_offset: get(offset_of!(virtio_net_hdr_v1, __bindgen_anon_1) + 2),
        }
    }

    /// Whether the checksum field (two bytes at `csum_start + csum_offset`) lies in a frame of
    /// `len` bytes.
    fn csum_fits(&self, len: usize) -> bool {
        usize::from(self.csum_start) + usize::from(self.csum_offset) + 2 <= len
    }
}

/// The offloads negotiated, as the header checks need them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Offloads {
    csum: bool,
    guest_csum: bool,
    host_tso4: bool,
    host_tso6: bool,
    guest_tso4: bool,
    guest_tso6: bool,
}

impl Offloads {
    fn new(features: u64) -> Self {
        Offloads {
            csum: bit(features, VIRTIO_NET_F_CSUM),
            guest_csum: bit(features, VIRTIO_NET_F_GUEST_CSUM),
            host_tso4: bit(features, VIRTIO_NET_F_HOST_TSO4),
            host_tso6: bit(features, VIRTIO_NET_F_HOST_TSO6),
            guest_tso4: bit(features, VIRTIO_NET_F_GUEST_TSO4),
            guest_tso6: bit(features, VIRTIO_NET_F_GUEST_TSO6),
        }
    }

    /// Checks a header the driver is to send with a `len`-byte frame (5.1.6.2.1).
    fn check_tx(&self, hdr: &NetHdr, len: usize, max_frame: usize) -> Result<(), Error> {
        let refuse = |why| Error::BadTxHeader {
            hdr: *hdr,
            len,
            why,
        };
        if hdr.flags & !NetHdr::NEEDS_CSUM != 0 {
            return Err(refuse("only NEEDS_CSUM may be set by the driver"));
        }
        if hdr.flags & NetHdr::NEEDS_CSUM != 0 {
            if !self.csum {
                return Err(refuse("VIRTIO_NET_F_CSUM was not negotiated"));
            }
            if !hdr.csum_fits(len) {
                return Err(refuse("the checksum field is outside the frame"));
            }
        }
        match hdr.gso_type {
            NetHdr::GSO_NONE => {
                if len > max_frame {
                    return Err(Error::BadFrameLength {
                        len,
                        min: MIN_FRAME,
                        max: max_frame,
                    });
                }
                return Ok(());
            }
            NetHdr::GSO_TCPV4 if !self.host_tso4 => {
                return Err(refuse("VIRTIO_NET_F_HOST_TSO4 was not negotiated"));
            }
            NetHdr::GSO_TCPV6 if !self.host_tso6 => {
                return Err(refuse("VIRTIO_NET_F_HOST_TSO6 was not negotiated"));
            }
            NetHdr::GSO_TCPV4 | NetHdr::GSO_TCPV6 => {}
            _ => {
                return Err(refuse(
                    "GSO type not negotiated (UDP, ECN and others are not)",
                ));
            }
        }
        if hdr.flags & NetHdr::NEEDS_CSUM == 0 {
            return Err(refuse("a GSO frame needs NEEDS_CSUM"));
        }
        if hdr.gso_size == 0 {
            return Err(refuse("a GSO frame needs a gso_size (the MSS)"));
        }
        if usize::from(hdr.hdr_len) > len {
            return Err(refuse("hdr_len is longer than the frame"));
        }
        if len > MAX_GSO_FRAME {
            return Err(Error::BadFrameLength {
                len,
                min: MIN_FRAME,
                max: MAX_GSO_FRAME,
            });
        }
        Ok(())
    }

    /// Checks a header the device wrote for a received `len`-byte frame (5.1.6.4.1).
    fn check_rx(&self, hdr: &NetHdr, len: usize) -> Result<(), Error> {
        let bad = |why| Error::BadRxHeader {
            hdr: *hdr,
            len,
            why,
        };
        if hdr.flags & !(NetHdr::NEEDS_CSUM | NetHdr::DATA_VALID) != 0 {
            return Err(bad("unknown or unnegotiated flags"));
        }
        if hdr.flags != 0 && !self.guest_csum {
            return Err(bad("checksum flags without VIRTIO_NET_F_GUEST_CSUM"));
        }
        if hdr.flags & NetHdr::NEEDS_CSUM != 0 && !hdr.csum_fits(len) {
            return Err(bad("the checksum field is outside the frame"));
        }
        let allowed = match hdr.gso_type {
            NetHdr::GSO_NONE => return Ok(()),
            NetHdr::GSO_TCPV4 => self.guest_tso4,
            NetHdr::GSO_TCPV6 => self.guest_tso6,
            _ => false,
        };
        if !allowed {
            return Err(bad("GSO type not negotiated"));
        }
        if hdr.flags & NetHdr::NEEDS_CSUM == 0 {
            return Err(bad("a GSO frame without NEEDS_CSUM"));
        }
        if hdr.gso_size == 0 {
            return Err(bad("a GSO frame with gso_size 0"));
        }
        Ok(())
    }
}

/// The validated config of a virtio-net device (section 5.1.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Its MAC address (`VIRTIO_NET_F_MAC`).
    pub mac: Option<[u8; 6]>,
    /// Link up (`VIRTIO_NET_F_STATUS`; `true` without it).
    pub link_up: bool,
    /// The MTU (`VIRTIO_NET_F_MTU`; 1500 without it).
    pub mtu: u16,
    /// `max_virtqueue_pairs` (`VIRTIO_NET_F_MQ`; 1 without it).
    pub max_queue_pairs: u16,
}

fn bit(features: u64, b: u32) -> bool {
    features & (1u64 << b) != 0
}

impl NetConfig {
    /// Parses and validates a config space copy under the negotiated `features`.
    pub fn parse(c: &[u8; CONFIG_BYTES], features: u64) -> Result<Self, Error> {
        let invalid = |field, value: u64| Error::InvalidConfig { field, value };
        let u16_at = |off: usize| u16::from_le_bytes([c[off], c[off + 1]]);
        let mac = if bit(features, VIRTIO_NET_F_MAC) {
            let mut m = [0u8; 6];
            m.copy_from_slice(&c[offset_of!(virtio_net_config, mac)..][..6]);
            if m[0] & 1 != 0 {
                // A multicast address cannot be a station's.
                return Err(invalid("mac", u64::from(m[0])));
            }
            Some(m)
        } else {
            None
        };
        let link_up = if bit(features, VIRTIO_NET_F_STATUS) {
            let s = u16_at(offset_of!(virtio_net_config, status));
            if u32::from(s) & !(VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE) != 0 {
                return Err(invalid("status", s.into()));
            }
            u32::from(s) & VIRTIO_NET_S_LINK_UP != 0
        } else {
            true
        };
        let mtu = if bit(features, VIRTIO_NET_F_MTU) {
            let m = u16_at(offset_of!(virtio_net_config, mtu));
            // 68 is IPv4's minimum MTU (RFC 791).
            if m < 68 {
                return Err(invalid("mtu", m.into()));
            }
            m
        } else {
            1500
        };
        let max_queue_pairs = if bit(features, VIRTIO_NET_F_MQ) {
            let n = u16_at(offset_of!(virtio_net_config, max_virtqueue_pairs));
            if !(VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN..=VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX)
                .contains(&u32::from(n))
            {
                return Err(invalid("max_virtqueue_pairs", n.into()));
            }
            n
        } else {
            1
        };
        Ok(NetConfig {
            mac,
            link_up,
            mtu,
            max_queue_pairs,
        })
    }

    /// The longest frame (without the virtio-net header): MTU plus the Ethernet header.
    pub fn max_frame(&self) -> usize {
        usize::from(self.mtu) + MIN_FRAME
    }
}

/// Driver settings.
#[derive(Clone, Debug)]
pub struct NetOptions {
    /// Queue size wanted (clamped to the device's limit).
    pub queue_size: u16,
    /// How long [`NetDriver::recv_wait`] and control commands wait.
    pub timeout: Duration,
    /// Use packed rings when offered.
    pub packed_ring: bool,
    /// Use `VIRTIO_F_IN_ORDER` when offered: descriptors in ring order, and completions
    /// checked to come in the order buffers were made available (batches allowed).
    pub in_order: bool,
    /// Negotiate checksum and TCP segmentation offloads when offered: `CSUM`, `GUEST_CSUM`,
    /// `HOST_TSO4`/`6`, and `GUEST_TSO4`/`6` (those with mergeable receive buffers only).
    /// Received frames then carry a [`NetHdr`] to read with [`NetDriver::recv_with_hdr`].
    pub offloads: bool,
    /// Queue pairs wanted (clamped to the device's `max_virtqueue_pairs`, or without a config
    /// space to half the transport's queues). More than one needs `VIRTIO_NET_F_MQ`; with a
    /// control queue the driver then sends `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`.
    pub queue_pairs: u16,
    /// Transparent reconnection: when a wait for a frame ([`NetDriver::recv_wait`]) finds the
    /// device gone (a vhost-user back-end killed or restarted), keep trying to reconnect
    /// ([`Transport::reopen`], then [`NetDriver::reconnect`]) for up to this long, retrying
    /// from 5 ms and doubling to 100 ms, and go on waiting. Frames being sent, and frames
    /// received and not read, are lost, as on a link that went down; the receive mode, MAC
    /// address and queue pairs set through the control queue are set again. When the time
    /// runs out the wait fails with [`Error::ReconnectFailed`]. `None` (the default) reports
    /// the device gone at once.
    pub reconnect: Option<Duration>,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            queue_size: 256,
            timeout: Duration::from_secs(5),
            packed_ring: true,
            in_order: true,
            offloads: false,
            queue_pairs: 1,
            reconnect: None,
        }
    }
}

/// One receive and one transmit queue, with their buffers.
#[derive(Debug)]
struct QueuePair {
    rx: Box<dyn VirtQueue>,
    tx: Box<dyn VirtQueue>,
    rx_buffers: GuestAddress,
    tx_slots: GuestAddress,
    /// 64 KiB transmit slots for GSO frames above the MTU (none without `HOST_TSO*`).
    gso_slots: Vec<GuestAddress>,
    gso_free: Vec<usize>,
    /// Per transmit id, the GSO slot its frame is in.
    gso_of_id: Vec<Option<usize>>,
}

/// The control queue (5.1.6.5) and the slot its commands are built in.
#[derive(Debug)]
struct ControlQueue {
    vq: Box<dyn VirtQueue>,
    index: u16,
    slot: GuestAddress,
}

/// Bytes of the control command slot: class and command, up to 6 bytes of data, the ack.
const CTRL_SLOT_BYTES: u64 = 64;
const CTRL_ACK_OFFSET: u64 = 32;

/// A virtio-net driver: queue pairs, and the control queue when the device has one.
#[derive(Debug)]
pub struct NetDriver<T: Transport> {
    transport: T,
    mem: Arc<DmaMemory>,
    features: u64,
    config: NetConfig,
    pairs: Vec<QueuePair>,
    active_pairs: u16,
    ctrl: Option<ControlQueue>,
    tx_slot_bytes: u64,
    mergeable: bool,
    offloads: Offloads,
    timeout: Duration,
    /// Whether the device had a config space (and so a control queue it may have).
    config_space: bool,
    /// See [`NetOptions::reconnect`].
    reconnect: Option<Duration>,
    /// Reconnections made ([`NetDriver::reconnect`], by hand or transparently).
    reconnections: u64,
    /// When the device was first found gone since a frame last came in: the time allowed to
    /// reconnect counts from then, so a device that comes back and goes away again at once
    /// cannot keep a wait going for ever.
    gone_since: Option<Instant>,
    /// What the control queue set, to set again after a reconnection.
    promisc: Option<bool>,
    allmulti: Option<bool>,
    mac_set: Option<[u8; 6]>,
}

impl<T: Transport> NetDriver<T> {
    /// Negotiates features, validates the config, sets up the queues and fills the receive
    /// queues.
    pub fn new(mut transport: T, options: NetOptions) -> Result<Self, Error> {
        let mem = transport.memory().clone();
        let offered = transport.device_features()?;
        if !bit(offered, VIRTIO_F_VERSION_1) {
            return Err(Error::NotVersion1(offered));
        }
        let mut wanted = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_NET_F_MRG_RXBUF
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC;
        // MAC, STATUS, MTU and MQ's pair count are fields of the config space: without one (a
        // vhost-user back-end without CONFIG) they, and the control queue, are the
        // front-end's, as QEMU keeps them for vhost-user-net; only MQ is then told to the
        // back-end, when more than one pair is used.
        let config_space = transport.has_config_space();
        if config_space {
            wanted |= 1 << VIRTIO_NET_F_MAC
                | 1 << VIRTIO_NET_F_STATUS
                | 1 << VIRTIO_NET_F_MTU
                | 1 << VIRTIO_NET_F_CTRL_VQ
                | 1 << VIRTIO_NET_F_CTRL_RX
                | 1 << VIRTIO_NET_F_CTRL_MAC_ADDR
                | 1 << VIRTIO_NET_F_MQ;
        } else if options.queue_pairs > 1 {
            wanted |= 1 << VIRTIO_NET_F_MQ;
        }
        if options.packed_ring {
            wanted |= 1 << VIRTIO_F_RING_PACKED;
        }
        if options.in_order {
            wanted |= 1 << VIRTIO_F_IN_ORDER;
        }
        // Per-queue reset (NetDriver::reset_queue_pair), when the device has it.
        wanted |= 1 << VIRTIO_F_RING_RESET;
        if options.offloads {
            wanted |= 1 << VIRTIO_NET_F_CSUM
                | 1 << VIRTIO_NET_F_GUEST_CSUM
                | 1 << VIRTIO_NET_F_HOST_TSO4
                | 1 << VIRTIO_NET_F_HOST_TSO6;
            // 64 KiB frames need mergeable buffers (no "big packets" mode here).
            if bit(offered, VIRTIO_NET_F_MRG_RXBUF) {
                wanted |= 1 << VIRTIO_NET_F_GUEST_TSO4 | 1 << VIRTIO_NET_F_GUEST_TSO6;
            }
        }
        let mut features = offered & wanted;
        // Dependencies (5.1.3.1): TSO needs the checksum feature on the same side; the
        // control features and, with a config space, MQ need the control queue.
        if !bit(features, VIRTIO_NET_F_CSUM) {
            features &= !(1 << VIRTIO_NET_F_HOST_TSO4 | 1 << VIRTIO_NET_F_HOST_TSO6);
        }
        if !bit(features, VIRTIO_NET_F_GUEST_CSUM) {
            features &= !(1 << VIRTIO_NET_F_GUEST_TSO4 | 1 << VIRTIO_NET_F_GUEST_TSO6);
        }
        if config_space && !bit(features, VIRTIO_NET_F_CTRL_VQ) {
            features &= !(1 << VIRTIO_NET_F_CTRL_RX
                | 1 << VIRTIO_NET_F_CTRL_MAC_ADDR
                | 1 << VIRTIO_NET_F_MQ);
        }
        transport.set_driver_features(features)?;
        let mut raw = [0u8; CONFIG_BYTES];
        if config_space {
            transport.read_config(0, &mut raw)?;
        }
        let mut config = if config_space {
            NetConfig::parse(&raw, features)?
        } else {
            // Nothing to read: every field its default.
            NetConfig::parse(&raw, features & !(1 << VIRTIO_NET_F_MQ))?
        };
        if !config_space && bit(features, VIRTIO_NET_F_MQ) {
            // No config space: the transport's queue count is the limit (two per pair).
            config.max_queue_pairs = (transport.max_queues()? / 2).max(1);
        }
        let mergeable = bit(features, VIRTIO_NET_F_MRG_RXBUF);
        if !mergeable && config.max_frame() + HDR_BYTES > RX_BUFFER_BYTES as usize {
            // Without mergeable buffers a frame must fit one receive buffer.
            return Err(Error::InvalidConfig {
                field: "mtu",
                value: config.mtu.into(),
            });
        }
        let max_size = split::validate_queue_size(transport.max_queue_size()?)?;
        let size = split::validate_queue_size(options.queue_size.min(max_size))?;
        let qf = QueueFeatures {
            event_idx: bit(features, VIRTIO_RING_F_EVENT_IDX),
            indirect_desc: bit(features, VIRTIO_RING_F_INDIRECT_DESC),
            in_order: bit(features, VIRTIO_F_IN_ORDER),
        };
        let packed = bit(features, VIRTIO_F_RING_PACKED);
        let new_queue = |index: u16, transport: &mut T| -> Result<Box<dyn VirtQueue>, Error> {
            let q: Box<dyn VirtQueue> = if packed {
                Box::new(PackedQueue::allocate(&mem, size, qf)?)
            } else {
                Box::new(SplitQueue::allocate(&mem, size, qf)?)
            };
            transport.setup_queue(index, &q.layout())?;
            Ok(q)
        };
        let npairs = options.queue_pairs.clamp(1, config.max_queue_pairs);
        let offloads = Offloads::new(features);
        let tx_slot_bytes = ((config.max_frame() + HDR_BYTES) as u64).next_multiple_of(64);
        let gso_bytes = ((MAX_GSO_FRAME + HDR_BYTES) as u64).next_multiple_of(4096);
        let mut pairs = Vec::with_capacity(usize::from(npairs));
        for p in 0..npairs {
            let rx = new_queue(2 * p, &mut transport)?;
            let tx = new_queue(2 * p + 1, &mut transport)?;
            let rx_buffers = mem.alloc(u64::from(size) * u64::from(RX_BUFFER_BYTES))?;
            let tx_slots = mem.alloc(u64::from(size) * tx_slot_bytes)?;
            let gso_slots: Vec<GuestAddress> = if offloads.host_tso4 || offloads.host_tso6 {
                let base = mem.alloc(GSO_TX_SLOTS as u64 * gso_bytes)?;
                (0..GSO_TX_SLOTS as u64)
                    .map(|i| base.unchecked_add(i * gso_bytes))
                    .collect()
            } else {
                Vec::new()
            };
            pairs.push(QueuePair {
                rx,
                tx,
                rx_buffers,
                tx_slots,
                gso_free: (0..gso_slots.len()).rev().collect(),
                gso_slots,
                gso_of_id: vec![None; usize::from(size)],
            });
        }
        let ctrl = if bit(features, VIRTIO_NET_F_CTRL_VQ) && config_space {
            // The control queue follows the last possible pair (5.1.2).
            let pairs_max = if bit(features, VIRTIO_NET_F_MQ) {
                config.max_queue_pairs
            } else {
                1
            };
            let index = 2 * pairs_max;
            Some(ControlQueue {
                vq: new_queue(index, &mut transport)?,
                index,
                slot: mem.alloc(CTRL_SLOT_BYTES)?,
            })
        } else {
            None
        };
        transport.activate()?;
        let mut d = NetDriver {
            transport,
            mem,
            features,
            config,
            pairs,
            active_pairs: 1,
            ctrl,
            tx_slot_bytes,
            mergeable,
            offloads,
            timeout: options.timeout,
            config_space,
            reconnect: options.reconnect,
            reconnections: 0,
            gone_since: None,
            promisc: None,
            allmulti: None,
            mac_set: None,
        };
        for p in 0..npairs {
            d.refill(p)?;
        }
        if npairs > 1 {
            if d.ctrl.is_some() {
                d.set_queue_pairs(npairs)?;
            } else {
                // No control queue: the front-end enabled the pairs (vhost-user).
                d.active_pairs = npairs;
            }
        }
        Ok(d)
    }

    /// The validated config.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Queue pairs set up.
    pub fn queue_pairs(&self) -> u16 {
        self.pairs.len() as u16
    }

    /// Queue pairs the device uses now (after `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`).
    pub fn active_queue_pairs(&self) -> u16 {
        self.active_pairs
    }

    /// Whether the device has a control queue (`VIRTIO_NET_F_CTRL_VQ`).
    pub fn has_control_queue(&self) -> bool {
        self.ctrl.is_some()
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    fn pair(&mut self, pair: u16) -> Result<&mut QueuePair, Error> {
        let pairs = self.pairs.len() as u16;
        self.pairs
            .get_mut(usize::from(pair))
            .ok_or(Error::NoSuchPair { pair, pairs })
    }

    fn rx_buffer(p: &QueuePair, head: u16) -> GuestAddress {
        p.rx_buffers
            .unchecked_add(u64::from(head) * u64::from(RX_BUFFER_BYTES))
    }

    /// Resets the receive and transmit queues of pair `pair` alone and starts them again
    /// while the other pairs (and the control queue) keep running (virtio 1.2, 2.6.1; over
    /// vhost-user the rings are stopped with `GET_VRING_BASE` and given again): frames being
    /// transmitted on the pair, and frames received into it and not yet read, are lost. The
    /// receive queue is filled again. This is how a pair that a device error broke is made
    /// usable without resetting the device. Fails with
    /// [`transport::Error::QueueResetUnsupported`] when the transport or the device cannot
    /// reset one queue.
    pub fn reset_queue_pair(&mut self, pair: u16) -> Result<(), Error> {
        if !self.transport.can_reset_queue() {
            return Err(transport::Error::QueueResetUnsupported(2 * pair).into());
        }
        self.pair(pair)?;
        for index in [2 * pair, 2 * pair + 1] {
            self.transport.reset_queue(index)?;
        }
        let p = self.pair(pair)?;
        p.rx.reset()?;
        p.tx.reset()?;
        p.gso_free = (0..p.gso_slots.len()).rev().collect();
        p.gso_of_id.fill(None);
        let (rx, tx) = (p.rx.layout(), p.tx.layout());
        self.transport.setup_queue(2 * pair, &rx)?;
        self.transport.setup_queue(2 * pair + 1, &tx)?;
        self.transport.enable_queue(2 * pair)?;
        self.transport.enable_queue(2 * pair + 1)?;
        self.refill(pair)
    }

    /// Carries on with `transport`, a new connection to the same device after the old one
    /// went away (a restarted vhost-user back-end), sharing the same memory: the same features
    /// are negotiated, every ring is reset and given to the device again, the receive queues
    /// are filled, and what was set through the control queue (receive modes, MAC address,
    /// queue pairs) is set again. Frames being sent and frames received but not read are lost.
    ///
    /// The old device must no longer use the rings: with vhost-user, its socket closed.
    pub fn reconnect(&mut self, mut transport: T) -> Result<(), Error> {
        if !Arc::ptr_eq(transport.memory(), &self.mem) {
            return Err(Error::DifferentMemory);
        }
        let offered = transport.device_features()?;
        if offered & self.features != self.features {
            return Err(Error::DeviceChanged("features"));
        }
        if transport.has_config_space() != self.config_space {
            return Err(Error::DeviceChanged("config space"));
        }
        transport.set_driver_features(self.features)?;
        let npairs = self.queue_pairs();
        let mut config = self.config.clone();
        if self.config_space {
            let mut raw = [0u8; CONFIG_BYTES];
            transport.read_config(0, &mut raw)?;
            config = NetConfig::parse(&raw, self.features)?;
            if config.max_queue_pairs < npairs {
                return Err(Error::DeviceChanged("queue pairs"));
            }
            if config.max_frame() > self.config.max_frame() {
                // The transmit slots were sized for the old MTU.
                return Err(Error::DeviceChanged("mtu"));
            }
        } else if bit(self.features, VIRTIO_NET_F_MQ) && transport.max_queues()? / 2 < npairs {
            return Err(Error::DeviceChanged("queue pairs"));
        }
        let size = self.pairs.first().map_or(0, |p| p.rx.layout().size);
        if transport.max_queue_size()? < size {
            return Err(Error::DeviceChanged("queue size"));
        }
        for (i, p) in self.pairs.iter_mut().enumerate() {
            p.rx.reset()?;
            p.tx.reset()?;
            p.gso_free = (0..p.gso_slots.len()).rev().collect();
            p.gso_of_id.fill(None);
            transport.setup_queue(2 * i as u16, &p.rx.layout())?;
            transport.setup_queue(2 * i as u16 + 1, &p.tx.layout())?;
        }
        if let Some(c) = self.ctrl.as_mut() {
            c.vq.reset()?;
            transport.setup_queue(c.index, &c.vq.layout())?;
        }
        transport.activate()?;
        self.transport = transport;
        self.config = config;
        for p in 0..npairs {
            self.refill(p)?;
        }
        if let Some(on) = self.promisc {
            self.set_promisc(on)?;
        }
        if let Some(on) = self.allmulti {
            self.set_allmulti(on)?;
        }
        if let Some(mac) = self.mac_set {
            self.set_mac(mac)?;
        }
        if self.ctrl.is_some() && self.active_pairs > 1 {
            self.set_queue_pairs(self.active_pairs)?;
        }
        self.reconnections += 1;
        Ok(())
    }

    /// The memory shared with the device (a new transport for [`Self::reconnect`] is made
    /// over it).
    pub fn memory(&self) -> &Arc<DmaMemory> {
        &self.mem
    }

    /// How many times the driver reconnected ([`Self::reconnect`], or by itself with
    /// [`NetOptions::reconnect`]).
    pub fn reconnections(&self) -> u64 {
        self.reconnections
    }

    /// After the device went away (`gone`), with [`NetOptions::reconnect`]: reopens the
    /// transport and reconnects within the time allowed; without it, returns `gone`.
    fn recover_from(&mut self, gone: Error) -> Result<(), Error> {
        let Some(limit) = self.reconnect else {
            return Err(gone);
        };
        let mut gone_since = self.gone_since.take();
        let timed_out = |e| Error::ReconnectFailed {
            after: limit,
            source: Box::new(e),
        };
        let r = transport::reconnect_within(
            "virtio-net device",
            limit,
            &mut gone_since,
            gone,
            timed_out,
            || match self.transport.reopen() {
                Ok(t) => match self.reconnect(t) {
                    Ok(()) => Attempt::Done,
                    Err(
                        e @ (Error::DeviceChanged(_)
                        | Error::DifferentMemory
                        | Error::InvalidConfig { .. }),
                    ) => Attempt::Fail(e),
                    Err(e) => Attempt::Again(e),
                },
                Err(transport::Error::ReconnectUnsupported) => Attempt::Unsupported,
                Err(e) => Attempt::Again(e.into()),
            },
        );
        self.gone_since = gone_since;
        r.map(|_| ())
    }

    /// Posts receive buffers into every free slot of pair `pair`'s receive queue.
    fn refill(&mut self, pair: u16) -> Result<(), Error> {
        let p = self.pair(pair)?;
        while let Some(head) = p.rx.next_head() {
            if !p.rx.has_room_for(1) {
                break;
            }
            let seg = Segment {
                addr: Self::rx_buffer(p, head),
                len: RX_BUFFER_BYTES,
                device_writable: true,
            };
            p.rx.add(&[seg])?;
        }
        if p.rx.publish()? {
            self.transport.notify(2 * pair)?;
        }
        Ok(())
    }

    /// Sends one Ethernet frame (without the virtio-net header), with no offload, on pair 0.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), Error> {
        self.send_on(0, frame, &NetHdr::default())
    }

    /// Sends one Ethernet frame with offload header `hdr` (a partial checksum for the device to
    /// complete, a GSO frame for it to segment) on pair 0.
    pub fn send_with_hdr(&mut self, frame: &[u8], hdr: &NetHdr) -> Result<(), Error> {
        self.send_on(0, frame, hdr)
    }

    /// Sends one Ethernet frame with offload header `hdr` on queue pair `pair`, the header
    /// checked against the negotiated features first.
    pub fn send_on(&mut self, pair: u16, frame: &[u8], hdr: &NetHdr) -> Result<(), Error> {
        let max = self.config.max_frame();
        if frame.len() < MIN_FRAME {
            return Err(Error::BadFrameLength {
                len: frame.len(),
                min: MIN_FRAME,
                max,
            });
        }
        self.offloads.check_tx(hdr, frame.len(), max)?;
        let slot_bytes = self.tx_slot_bytes;
        let mem = self.mem.clone();
        let p = self.pair(pair)?;
        // Reclaim finished transmissions first (their length is validated by the queue).
        while let Some(c) = p.tx.pop_used()? {
            if let Some(g) = p
                .gso_of_id
                .get_mut(usize::from(c.head))
                .and_then(Option::take)
            {
                p.gso_free.push(g);
            }
        }
        let head = match p.tx.next_head() {
            Some(h) if p.tx.has_room_for(1) => h,
            _ => return Err(Error::TxFull),
        };
        let (slot, gso) = if frame.len() > max {
            // A GSO frame above the MTU goes in a 64 KiB slot.
            let g = p.gso_free.pop().ok_or(Error::TxFull)?;
            (p.gso_slots[g], Some(g))
        } else {
            (p.tx_slots.unchecked_add(u64::from(head) * slot_bytes), None)
        };
        let mut bytes = Vec::with_capacity(HDR_BYTES + frame.len());
        bytes.extend_from_slice(&hdr.to_bytes());
        bytes.extend_from_slice(frame);
        let added = mem
            .guest_memory()
            .write_slice(&bytes, slot)
            .map_err(Error::Access)
            .and_then(|()| {
                p.tx.add(&[Segment {
                    addr: slot,
                    len: bytes.len() as u32,
                    device_writable: false,
                }])
                .map_err(Error::from)
            });
        match added {
            Ok(id) => p.gso_of_id[usize::from(id)] = gso,
            Err(e) => {
                if let Some(g) = gso {
                    p.gso_free.push(g);
                }
                return Err(e);
            }
        }
        if p.tx.publish()? {
            self.transport.notify(2 * pair + 1)?;
        }
        Ok(())
    }

    /// The next received frame on pair 0, if one is complete, without its header. With
    /// offloads negotiated, use [`Self::recv_with_hdr`]: a frame may carry a partial checksum.
    pub fn recv(&mut self) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.recv_on(0)?.map(|(_, f)| f))
    }

    /// The next received frame on pair 0 and its validated offload header.
    pub fn recv_with_hdr(&mut self) -> Result<Option<(NetHdr, Vec<u8>)>, Error> {
        self.recv_on(0)
    }

    /// The longest frame the device may deliver: the MTU's, or a GSO frame's with
    /// `GUEST_TSO4`/`6`.
    fn max_rx_frame(&self) -> usize {
        if self.offloads.guest_tso4 || self.offloads.guest_tso6 {
            MAX_GSO_FRAME
        } else {
            self.config.max_frame()
        }
    }

    /// The next received frame on queue pair `pair` and its validated offload header, if one
    /// is complete.
    pub fn recv_on(&mut self, pair: u16) -> Result<Option<(NetHdr, Vec<u8>)>, Error> {
        let max = self.max_rx_frame();
        let mtu_frame = self.config.max_frame();
        let mergeable = self.mergeable;
        let offloads = self.offloads;
        let mem = self.mem.clone();
        let mem = mem.guest_memory();
        let p = self.pair(pair)?;
        let Some(first) = p.rx.pop_used()? else {
            return Ok(None);
        };
        let len = first.len as usize;
        if len < HDR_BYTES {
            return Err(Error::ShortRxBuffer {
                head: first.head,
                len: first.len,
            });
        }
        // One copy of the header; only the copy is looked at.
        let mut raw = [0u8; HDR_BYTES];
        mem.read_slice(&mut raw, Self::rx_buffer(p, first.head))
            .map_err(Error::Access)?;
        let off = offset_of!(virtio_net_hdr_v1, num_buffers);
        let num_buffers = u16::from_le_bytes([raw[off], raw[off + 1]]);
        let num_buffers = if mergeable { num_buffers } else { 1 };
        let size = p.rx.layout().size;
        if num_buffers == 0 || num_buffers > size {
            return Err(Error::BadNumBuffers {
                num_buffers,
                available: 1,
            });
        }
        let mut frame = vec![0u8; len - HDR_BYTES];
        mem.read_slice(
            &mut frame,
            Self::rx_buffer(p, first.head).unchecked_add(HDR_BYTES as u64),
        )
        .map_err(Error::Access)?;
        for got in 1..num_buffers {
            // The device publishes a frame's buffers together (5.1.6.4): a missing one is an
            // error, not something to wait for.
            let Some(c) = p.rx.pop_used()? else {
                return Err(Error::BadNumBuffers {
                    num_buffers,
                    available: usize::from(got),
                });
            };
            let start = frame.len();
            if start + c.len as usize > max {
                return Err(Error::FrameTooLong {
                    len: start + c.len as usize,
                    max,
                });
            }
            frame.resize(start + c.len as usize, 0);
            mem.read_slice(&mut frame[start..], Self::rx_buffer(p, c.head))
                .map_err(Error::Access)?;
        }
        // A frame above the MTU is only allowed as a GSO frame.
        let hdr = NetHdr::from_bytes(&raw);
        let limit = if hdr.gso_type == NetHdr::GSO_NONE {
            mtu_frame
        } else {
            max
        };
        if frame.len() > limit {
            return Err(Error::FrameTooLong {
                len: frame.len(),
                max: limit,
            });
        }
        offloads.check_rx(&hdr, frame.len())?;
        self.refill(pair)?;
        Ok(Some((hdr, frame)))
    }

    /// Asks the device not to notify used buffers on queue pair `pair` (its receive and
    /// transmit queues), for a caller that busy-polls with [`Self::recv_on`] (a hint: the
    /// device may still notify). [`Self::recv_wait_on`] turns receive notifications on again
    /// when it has to sleep.
    pub fn disable_notifications(&mut self, pair: u16) -> Result<(), Error> {
        let p = self.pair(pair)?;
        p.rx.disable_notifications()?;
        p.tx.disable_notifications()?;
        Ok(())
    }

    /// Waits (up to the timeout) for a received frame on pair `pair` and its header.
    pub fn recv_wait_on(&mut self, pair: u16) -> Result<(NetHdr, Vec<u8>), Error> {
        loop {
            if let Some(f) = self.recv_on(pair)? {
                // The device works: a later loss gets the whole time to reconnect again.
                self.gone_since = None;
                return Ok(f);
            }
            if self.pair(pair)?.rx.enable_notifications()? {
                continue;
            }
            match self.transport.wait(2 * pair, self.timeout) {
                Err(e @ transport::Error::DeviceGone(_)) => self.recover_from(e.into())?,
                r => r?,
            }
        }
    }

    /// Waits (up to the timeout) for a received frame on pair 0 and its header.
    pub fn recv_wait_with_hdr(&mut self) -> Result<(NetHdr, Vec<u8>), Error> {
        self.recv_wait_on(0)
    }

    /// Waits (up to the timeout) for a received frame on pair 0, without its header.
    pub fn recv_wait(&mut self) -> Result<Vec<u8>, Error> {
        Ok(self.recv_wait_on(0)?.1)
    }

    /// Sends a control command (5.1.6.5): `class`, `command` and `data` for the device to
    /// read, one ack byte for it to write; waits for the completion.
    fn command(&mut self, class: u8, command: u8, data: &[u8]) -> Result<(), Error> {
        let timeout = self.timeout;
        let mem = self.mem.clone();
        let ctrl = self.ctrl.as_mut().ok_or(Error::NoControlQueue)?;
        debug_assert!(data.len() <= (CTRL_ACK_OFFSET - 2) as usize);
        // The slot is written whole: class, command, data, and an ack the device must
        // overwrite (VIRTIO_NET_OK is 0, so 0xff shows a device that did not).
        let mut bytes = [0u8; CTRL_SLOT_BYTES as usize];
        bytes[0] = class;
        bytes[1] = command;
        bytes[2..2 + data.len()].copy_from_slice(data);
        bytes[CTRL_ACK_OFFSET as usize] = 0xff;
        mem.guest_memory()
            .write_slice(&bytes, ctrl.slot)
            .map_err(Error::Access)?;
        let mut segs = vec![Segment {
            addr: ctrl.slot,
            len: 2,
            device_writable: false,
        }];
        if !data.is_empty() {
            segs.push(Segment {
                addr: ctrl.slot.unchecked_add(2),
                len: data.len() as u32,
                device_writable: false,
            });
        }
        segs.push(Segment {
            addr: ctrl.slot.unchecked_add(CTRL_ACK_OFFSET),
            len: 1,
            device_writable: true,
        });
        let id = ctrl.vq.add(&segs)?;
        if ctrl.vq.publish()? {
            self.transport.notify(ctrl.index)?;
        }
        let ctrl = self.ctrl.as_mut().ok_or(Error::NoControlQueue)?;
        let c = loop {
            if let Some(c) = ctrl.vq.pop_used()? {
                break c;
            }
            if ctrl.vq.enable_notifications()? {
                continue;
            }
            self.transport.wait(ctrl.index, timeout)?;
        };
        if c.head != id {
            // One command in flight at a time: another id cannot complete.
            return Err(split::Error::UsedIdNotOutstanding(c.head).into());
        }
        let ack: u8 = mem
            .guest_memory()
            .read_obj(ctrl.slot.unchecked_add(CTRL_ACK_OFFSET))
            .map_err(Error::Access)?;
        match u32::from(ack) {
            VIRTIO_NET_OK if c.len == 1 => Ok(()),
            VIRTIO_NET_ERR if c.len == 1 => Err(Error::CommandFailed { class, command }),
            _ => Err(Error::BadAck {
                class,
                command,
                ack,
                len: c.len,
            }),
        }
    }

    fn require(&self, feature: u32, name: &'static str) -> Result<(), Error> {
        if self.ctrl.is_none() {
            return Err(Error::NoControlQueue);
        }
        if !bit(self.features, feature) {
            return Err(Error::NotNegotiated(name));
        }
        Ok(())
    }

    /// Turns promiscuous receive on or off (`VIRTIO_NET_CTRL_RX_PROMISC`; needs `CTRL_RX`).
    pub fn set_promisc(&mut self, on: bool) -> Result<(), Error> {
        self.require(VIRTIO_NET_F_CTRL_RX, "VIRTIO_NET_F_CTRL_RX")?;
        self.command(
            VIRTIO_NET_CTRL_RX as u8,
            VIRTIO_NET_CTRL_RX_PROMISC as u8,
            &[u8::from(on)],
        )?;
        self.promisc = Some(on);
        Ok(())
    }

    /// Turns all-multicast receive on or off (`VIRTIO_NET_CTRL_RX_ALLMULTI`; needs
    /// `CTRL_RX`).
    pub fn set_allmulti(&mut self, on: bool) -> Result<(), Error> {
        self.require(VIRTIO_NET_F_CTRL_RX, "VIRTIO_NET_F_CTRL_RX")?;
        self.command(
            VIRTIO_NET_CTRL_RX as u8,
            VIRTIO_NET_CTRL_RX_ALLMULTI as u8,
            &[u8::from(on)],
        )?;
        self.allmulti = Some(on);
        Ok(())
    }

    /// Sets the device's MAC address (`VIRTIO_NET_CTRL_MAC_ADDR_SET`; needs `CTRL_MAC_ADDR`).
    /// A multicast address is refused before it reaches the device.
    pub fn set_mac(&mut self, mac: [u8; 6]) -> Result<(), Error> {
        self.require(VIRTIO_NET_F_CTRL_MAC_ADDR, "VIRTIO_NET_F_CTRL_MAC_ADDR")?;
        if mac[0] & 1 != 0 {
            return Err(Error::MulticastMac(mac));
        }
        self.command(
            VIRTIO_NET_CTRL_MAC as u8,
            VIRTIO_NET_CTRL_MAC_ADDR_SET as u8,
            &mac,
        )?;
        self.config.mac = Some(mac);
        self.mac_set = Some(mac);
        Ok(())
    }

    /// Tells the device how many queue pairs to use (`VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`;
    /// needs `MQ`), between 1 and the pairs set up.
    pub fn set_queue_pairs(&mut self, pairs: u16) -> Result<(), Error> {
        self.require(VIRTIO_NET_F_MQ, "VIRTIO_NET_F_MQ")?;
        let set_up = self.queue_pairs();
        if pairs == 0 || pairs > set_up {
            return Err(Error::NoSuchPair {
                pair: pairs,
                pairs: set_up,
            });
        }
        self.command(
            VIRTIO_NET_CTRL_MQ as u8,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8,
            &pairs.to_le_bytes(),
        )?;
        self.active_pairs = pairs;
        Ok(())
    }
}
