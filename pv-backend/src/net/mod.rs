//! The bottom of netback: [`NetDevice`], a device that sends and receives Ethernet frames with
//! their offload metadata, and two of them:
//!
//! - [`tap::Tap`]: a Linux TAP device (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`, and `IFF_VNET_HDR`
//!   when offloads are used), the way to the host's network stack;
//! - [`switch::SwitchPort`]: a port on an in-process virtual L2 switch ([`switch::Switch`]) with
//!   MAC learning and ageing, flooding, and bounded per-port queues, so that guests reach each
//!   other.
//!
//! [`back::NetQueue`] is netback's ring side: a guest's TX and RX rings served to a `NetDevice`;
//! [`xenbus::NetBack`] connects it through the XenBus handshake and serves it on a thread.
//!
//! Offload metadata ([`FrameMeta`]) follows what both ends of netback speak: a frame's checksum
//! may still be needed ([`Checksum::Partial`], netif's `NETTXF_csum_blank`, virtio's
//! `NEEDS_CSUM`), or already validated ([`Checksum::Validated`], `NETRXF_data_validated`,
//! `DATA_VALID`), and a frame may be a GSO super-frame of TCP over IPv4 or IPv6 ([`Gso`], netif's
//! GSO extra) that the receiver segments.

pub mod back;
pub mod ctrl;
pub mod gso;
mod ip;
pub mod mq;
pub mod switch;
pub mod tap;
pub mod xenbus;

use std::io;
use std::sync::Arc;
use std::time::Duration;

pub use xen_abi::netif::{GsoType, MacAddr};

/// The Ethernet header's length: a frame is at least this long.
pub const ETH_HLEN: usize = 14;

/// The largest frame a device carries: a 64 KiB GSO super-frame and its Ethernet header.
pub const MAX_FRAME_LEN: usize = 65535 + ETH_HLEN;

/// The state of a frame's layer-4 checksum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Checksum {
    /// Nothing is known: the checksum in the frame is whatever the sender put there, and the
    /// receiver verifies it.
    #[default]
    None,
    /// The checksum still has to be computed: over the bytes from `start` to the end of the
    /// frame, stored as 16 bits at `start + offset` (which holds the pseudo-header sum).
    Partial {
        /// Where the checksummed data begins (the L4 header).
        start: u16,
        /// Where the checksum field is, from `start`.
        offset: u16,
    },
    /// The checksum is known to be good (the sender computed or verified it).
    Validated,
}

/// Segmentation offload of a GSO super-frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gso {
    /// The protocol.
    pub gso_type: GsoType,
    /// The largest L4 payload per segment (never 0).
    pub size: u16,
    /// The length of the headers up to and including the TCP header, if known (0 if not).
    pub hdr_len: u16,
}

/// What a frame carries besides its bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrameMeta {
    /// The L4 checksum's state.
    pub checksum: Checksum,
    /// Segmentation, for a GSO super-frame (which then also has [`Checksum::Partial`]).
    pub gso: Option<Gso>,
}

impl FrameMeta {
    /// Checks the metadata against a frame of `len` bytes: the checksum field must lie inside the
    /// frame, and a GSO frame must have a segment size and a partial checksum.
    pub fn validate(&self, len: usize) -> Result<(), NetError> {
        if let Checksum::Partial { start, offset } = self.checksum {
            let field_end = usize::from(start) + usize::from(offset) + 2;
            if usize::from(start) < ETH_HLEN || field_end > len {
                return Err(NetError::BadMeta {
                    what: format!(
                        "partial checksum at start {start} + offset {offset} does not fit a frame of \
                         {len} bytes after its Ethernet header"
                    ),
                });
            }
        }
        if let Some(gso) = self.gso {
            if gso.size == 0 {
                return Err(NetError::BadMeta {
                    what: "GSO segment size 0".into(),
                });
            }
            if !matches!(self.checksum, Checksum::Partial { .. }) {
                return Err(NetError::BadMeta {
                    what: format!(
                        "GSO frame with checksum {:?}: a GSO frame's checksum must be Partial",
                        self.checksum
                    ),
                });
            }
        }
        Ok(())
    }
}

/// The offloads a device accepts on [`NetDevice::send`]; frames whose metadata asks for more are
/// refused with [`NetError::Unsupported`], and the caller must finish them (compute the checksum,
/// segment) first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Offloads {
    /// [`Checksum::Partial`] frames.
    pub csum: bool,
    /// GSO of TCP over IPv4.
    pub tso4: bool,
    /// GSO of TCP over IPv6.
    pub tso6: bool,
}

impl Offloads {
    /// No offloads.
    pub const NONE: Self = Self {
        csum: false,
        tso4: false,
        tso6: false,
    };
    /// Checksum offload and TSO for IPv4 and IPv6.
    pub const ALL: Self = Self {
        csum: true,
        tso4: true,
        tso6: true,
    };

    /// Whether a frame with `meta` can be sent as it is.
    pub fn allows(&self, meta: &FrameMeta) -> Result<(), NetError> {
        if matches!(meta.checksum, Checksum::Partial { .. }) && !self.csum {
            return Err(NetError::Unsupported {
                what: "partial checksums (checksum offload is off)",
            });
        }
        match meta.gso.map(|g| g.gso_type) {
            Some(GsoType::TcpV4) if !self.tso4 => Err(NetError::Unsupported {
                what: "TCPv4 segmentation offload",
            }),
            Some(GsoType::TcpV6) if !self.tso6 => Err(NetError::Unsupported {
                what: "TCPv6 segmentation offload",
            }),
            _ => Ok(()),
        }
    }
}

/// A frame to send: its bytes and metadata.
#[derive(Clone, Copy, Debug)]
pub struct TxFrame<'a> {
    /// The Ethernet frame.
    pub data: &'a [u8],
    /// Its metadata.
    pub meta: FrameMeta,
}

/// A received frame's length and metadata (its bytes are in the caller's buffer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxInfo {
    /// The frame's length in bytes.
    pub len: usize,
    /// Its metadata.
    pub meta: FrameMeta,
}

/// What can go wrong with a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A frame shorter than an Ethernet header.
    #[error("frame of {len} bytes is shorter than an Ethernet header (14 bytes)")]
    FrameTooShort {
        /// The length.
        len: usize,
    },
    /// A frame longer than the device carries.
    #[error("frame of {len} bytes is longer than the device's maximum of {max} bytes")]
    FrameTooLong {
        /// The length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The receive buffer is too small for the next frame, which stays queued.
    #[error(
        "receive buffer of {len} bytes is too small for the next frame of {need} bytes; pass a buffer of max_frame_len()"
    )]
    BufferTooSmall {
        /// The buffer's length.
        len: usize,
        /// The frame's length.
        need: usize,
    },
    /// Metadata that does not fit its frame.
    #[error("invalid frame metadata: {what}")]
    BadMeta {
        /// What is wrong.
        what: String,
    },
    /// An offload the device does not offer.
    #[error("the device does not offer {what}; finish the frame before sending it")]
    Unsupported {
        /// The offload.
        what: &'static str,
    },
    /// The device cannot take a frame now; try again when it is writable.
    #[error("the device is full; retry when it is writable")]
    WouldBlock,
    /// The device is gone (a switch port whose switch was dropped).
    #[error("the device is disconnected")]
    Disconnected,
    /// A system call failed.
    #[error("{op} failed")]
    Io {
        /// What was being done.
        op: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// An Ethernet device: the bottom half of netback.
///
/// Sending never waits: a device that cannot take a frame says [`NetError::WouldBlock`] (the
/// caller keeps the frame and retries), and a switch drops at full destination queues as a real
/// switch does. Receiving never waits either; [`wait_readable`](Self::wait_readable) sleeps until
/// a frame may be there.
pub trait NetDevice: Send {
    /// The offloads [`send`](Self::send) accepts.
    fn offloads(&self) -> Offloads;

    /// The longest frame the device carries, and the buffer size [`recv`](Self::recv) needs.
    fn max_frame_len(&self) -> usize;

    /// Sends one frame.
    fn send(&mut self, frame: &[u8], meta: &FrameMeta) -> Result<(), NetError>;

    /// Sends frames in order until one fails; returns how many were sent, or the first frame's
    /// error if none was. The default calls [`send`](Self::send) for each.
    fn send_batch(&mut self, frames: &[TxFrame<'_>]) -> Result<usize, NetError> {
        for (i, f) in frames.iter().enumerate() {
            if let Err(e) = self.send(f.data, &f.meta) {
                return if i == 0 { Err(e) } else { Ok(i) };
            }
        }
        Ok(frames.len())
    }

    /// Receives one frame into `buf` if one is waiting (`Ok(None)` if not).
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<RxInfo>, NetError>;

    /// Receives up to `bufs.len()` frames, one per buffer, and returns their descriptions in
    /// order (fewer when fewer are waiting). The default calls [`recv`](Self::recv) for each.
    fn recv_batch(&mut self, bufs: &mut [Vec<u8>]) -> Result<Vec<RxInfo>, NetError> {
        let mut out = Vec::with_capacity(bufs.len());
        for buf in bufs.iter_mut() {
            match self.recv(buf) {
                Ok(Some(info)) => out.push(info),
                Ok(None) => break,
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    /// Waits up to `timeout` for a frame to receive; returns whether one may be waiting.
    fn wait_readable(&self, timeout: Duration) -> Result<bool, NetError>;

    /// Asks the device to call `waker` whenever a frame arrives for [`recv`](Self::recv) (replacing
    /// any earlier waker), so that a back end can sleep on one doorbell for its rings and its device.
    /// Returns whether the device will; if not (the default), the caller must poll.
    fn set_rx_waker(&mut self, waker: Arc<dyn Fn() + Send + Sync>) -> bool {
        let _ = waker;
        false
    }

    /// A descriptor that is readable whenever [`recv`](Self::recv) has a frame (a TAP device's), for a
    /// device that cannot ring a waker: a back end sleeps on it together with its doorbell
    /// ([`Doorbell::wait_or_readable`](crate::backend::Doorbell::wait_or_readable)) instead of polling.
    /// `None` (the default) if there is none.
    fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// Whether `mac` is a multicast (or broadcast) address: the group bit of its first byte.
pub const fn is_multicast(mac: &MacAddr) -> bool {
    mac[0] & 1 != 0
}

/// The destination MAC of a frame (at least [`ETH_HLEN`] bytes).
fn dst_mac(frame: &[u8]) -> MacAddr {
    let mut m = [0; 6];
    m.copy_from_slice(&frame[0..6]);
    m
}

/// The source MAC of a frame (at least [`ETH_HLEN`] bytes).
fn src_mac(frame: &[u8]) -> MacAddr {
    let mut m = [0; 6];
    m.copy_from_slice(&frame[6..12]);
    m
}
