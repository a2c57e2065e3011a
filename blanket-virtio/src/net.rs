//! A minimal virtio-net driver (virtio 1.2, section 5.1) over any [`Transport`]: one receive and
//! one transmit queue, mergeable receive buffers, no offloads.
//!
//! Every frame carries a 12-byte `virtio_net_hdr_v1` in front. Transmit copies the frame into a
//! per-descriptor slot in shared memory (header zeroed: no checksum or GSO offload is
//! negotiated). Receive keeps the receive queue filled with fixed-size buffers; with
//! `VIRTIO_NET_F_MRG_RXBUF` a frame may span `num_buffers` of them. What the device writes is
//! validated: a used length of at least the header and at most the buffer (checked by the
//! queue), `num_buffers` between 1 and the buffers it may use, the buffers of a frame all
//! published together, and a frame no longer than the MTU allows.

use std::mem::{offset_of, size_of};
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_config::{VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_ANNOUNCE, VIRTIO_NET_S_LINK_UP, virtio_net_config, virtio_net_hdr_v1,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::memory::DmaMemory;
use crate::queue::VirtQueue;
use crate::queue::packed::PackedQueue;
use crate::queue::split::{self, QueueFeatures, Segment, SplitQueue};
use crate::transport::{self, Transport};

/// Bytes of the header in front of every frame (`virtio_net_hdr_v1`).
pub const HDR_BYTES: usize = size_of::<virtio_net_hdr_v1>();
/// Bytes of each receive buffer.
pub const RX_BUFFER_BYTES: u32 = 2048;
/// The smallest Ethernet frame accepted (the header alone).
pub const MIN_FRAME: usize = 14;
/// Bytes of config space read: up to and with `mtu`.
pub const CONFIG_BYTES: usize = offset_of!(virtio_net_config, speed);

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;

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
        Ok(NetConfig { mac, link_up, mtu })
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
    /// How long [`NetDriver::recv_wait`] waits.
    pub timeout: Duration,
    /// Use packed rings when offered.
    pub packed_ring: bool,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            queue_size: 256,
            timeout: Duration::from_secs(5),
            packed_ring: true,
        }
    }
}

/// A virtio-net driver with one queue pair.
#[derive(Debug)]
pub struct NetDriver<T: Transport> {
    transport: T,
    mem: Arc<DmaMemory>,
    features: u64,
    config: NetConfig,
    rx: Box<dyn VirtQueue>,
    tx: Box<dyn VirtQueue>,
    rx_buffers: GuestAddress,
    tx_slots: GuestAddress,
    tx_slot_bytes: u64,
    mergeable: bool,
    timeout: Duration,
}

impl<T: Transport> NetDriver<T> {
    /// Negotiates features, validates the config, sets up the queues and fills the receive
    /// queue.
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
        // MAC, STATUS and MTU are fields of the config space: without one (a vhost-user
        // back-end without CONFIG) they are the front-end's, and not negotiated.
        let config_space = transport.has_config_space();
        if config_space {
            wanted |= 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS | 1 << VIRTIO_NET_F_MTU;
        }
        if options.packed_ring {
            wanted |= 1 << VIRTIO_F_RING_PACKED;
        }
        let features = offered & wanted;
        transport.set_driver_features(features)?;
        let mut raw = [0u8; CONFIG_BYTES];
        if config_space {
            transport.read_config(0, &mut raw)?;
        }
        let config = NetConfig::parse(&raw, features)?;
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
        };
        let mut queues = Vec::new();
        for i in [RX_QUEUE, TX_QUEUE] {
            let q: Box<dyn VirtQueue> = if bit(features, VIRTIO_F_RING_PACKED) {
                Box::new(PackedQueue::allocate(&mem, size, qf)?)
            } else {
                Box::new(SplitQueue::allocate(&mem, size, qf)?)
            };
            transport.setup_queue(i, &q.layout())?;
            queues.push(q);
        }
        let tx = queues.pop().ok_or(split::Error::EmptyChain)?;
        let rx = queues.pop().ok_or(split::Error::EmptyChain)?;
        let rx_buffers = mem.alloc(u64::from(size) * u64::from(RX_BUFFER_BYTES))?;
        let tx_slot_bytes = ((config.max_frame() + HDR_BYTES) as u64).next_multiple_of(64);
        let tx_slots = mem.alloc(u64::from(size) * tx_slot_bytes)?;
        transport.activate()?;
        let mut d = NetDriver {
            transport,
            mem,
            features,
            config,
            rx,
            tx,
            rx_buffers,
            tx_slots,
            tx_slot_bytes,
            mergeable,
            timeout: options.timeout,
        };
        d.refill()?;
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

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    fn rx_buffer(&self, head: u16) -> GuestAddress {
        self.rx_buffers
            .unchecked_add(u64::from(head) * u64::from(RX_BUFFER_BYTES))
    }

    /// Posts receive buffers into every free slot of the receive queue.
    fn refill(&mut self) -> Result<(), Error> {
        while let Some(head) = self.rx.next_head() {
            if !self.rx.has_room_for(1) {
                break;
            }
            let seg = Segment {
                addr: self.rx_buffer(head),
                len: RX_BUFFER_BYTES,
                device_writable: true,
            };
            self.rx.add(&[seg])?;
        }
        if self.rx.publish()? {
            self.transport.notify(RX_QUEUE)?;
        }
        Ok(())
    }

    /// Sends one Ethernet frame (without the virtio-net header).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), Error> {
        let max = self.config.max_frame();
        if frame.len() < MIN_FRAME || frame.len() > max {
            return Err(Error::BadFrameLength {
                len: frame.len(),
                min: MIN_FRAME,
                max,
            });
        }
        // Reclaim finished transmissions first (their length is validated by the queue).
        while self.tx.pop_used()?.is_some() {}
        let head = match self.tx.next_head() {
            Some(h) if self.tx.has_room_for(1) => h,
            _ => return Err(Error::TxFull),
        };
        let slot = self
            .tx_slots
            .unchecked_add(u64::from(head) * self.tx_slot_bytes);
        let mut bytes = vec![0u8; HDR_BYTES + frame.len()];
        bytes[HDR_BYTES..].copy_from_slice(frame);
        self.mem
            .guest_memory()
            .write_slice(&bytes, slot)
            .map_err(Error::Access)?;
        self.tx.add(&[Segment {
            addr: slot,
            len: bytes.len() as u32,
            device_writable: false,
        }])?;
        if self.tx.publish()? {
            self.transport.notify(TX_QUEUE)?;
        }
        Ok(())
    }

    /// The next received frame, if one is complete.
    pub fn recv(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let Some(first) = self.rx.pop_used()? else {
            return Ok(None);
        };
        let len = first.len as usize;
        if len < HDR_BYTES {
            return Err(Error::ShortRxBuffer {
                head: first.head,
                len: first.len,
            });
        }
        let mut hdr = [0u8; HDR_BYTES];
        self.mem
            .guest_memory()
            .read_slice(&mut hdr, self.rx_buffer(first.head))
            .map_err(Error::Access)?;
        let off = offset_of!(virtio_net_hdr_v1, num_buffers);
        let num_buffers = u16::from_le_bytes([hdr[off], hdr[off + 1]]);
        let num_buffers = if self.mergeable { num_buffers } else { 1 };
        let size = self.rx.layout().size;
        if num_buffers == 0 || num_buffers > size {
            return Err(Error::BadNumBuffers {
                num_buffers,
                available: 1,
            });
        }
        let max = self.config.max_frame();
        let mut frame = vec![0u8; len - HDR_BYTES];
        self.mem
            .guest_memory()
            .read_slice(
                &mut frame,
                self.rx_buffer(first.head).unchecked_add(HDR_BYTES as u64),
            )
            .map_err(Error::Access)?;
        for got in 1..num_buffers {
            // The device publishes a frame's buffers together (5.1.6.4): a missing one is an
            // error, not something to wait for.
            let Some(c) = self.rx.pop_used()? else {
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
            self.mem
                .guest_memory()
                .read_slice(&mut frame[start..], self.rx_buffer(c.head))
                .map_err(Error::Access)?;
        }
        if frame.len() > max {
            return Err(Error::FrameTooLong {
                len: frame.len(),
                max,
            });
        }
        self.refill()?;
        Ok(Some(frame))
    }

    /// Waits (up to the timeout) for a received frame.
    pub fn recv_wait(&mut self) -> Result<Vec<u8>, Error> {
        loop {
            if let Some(f) = self.recv()? {
                return Ok(f);
            }
            if self.rx.enable_notifications()? {
                continue;
            }
            self.transport.wait(RX_QUEUE, self.timeout)?;
        }
    }
}
