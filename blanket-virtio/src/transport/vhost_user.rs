//! A vhost-user frontend transport, over the `vhost` crate's `Frontend` (the control plane).
//!
//! Set-up follows the vhost-user spec: `SET_OWNER`, `GET_FEATURES`, and when the back-end offers
//! `VHOST_USER_F_PROTOCOL_FEATURES`, `GET_PROTOCOL_FEATURES` / `SET_PROTOCOL_FEATURES` (the driver
//! takes `MQ`, `REPLY_ACK` and `CONFIG` when offered). `SET_FEATURES` carries the virtio features
//! the driver acknowledged. `SET_MEM_TABLE` shares the driver's memfd; each queue gets
//! `SET_VRING_NUM`, `SET_VRING_ADDR` (addresses in this process, as the spec wants),
//! `SET_VRING_BASE`, and a kick and a call eventfd; `SET_VRING_ENABLE` starts the rings.
//!
//! With `REPLY_ACK`, every message asks for a reply, so a back-end error comes back at the call
//! that caused it. Waiting for a completion waits on the call eventfd *and* the socket, both
//! in one epoll set per queue (registered once, so a wait is one `epoll_wait` and no `read`):
//! a back-end that dies or closes the socket ends the wait with [`super::Error::DeviceGone`],
//! never a hang.
//!
//! [`Transport::set_call_fd`] replaces a queue's call eventfd with the caller's (sent with
//! `SET_VRING_CALL` at once if the queue is set up, and at every later set-up), so that the
//! back-end wakes whoever sleeps on it with no thread in between; the wait set then holds it.
//!
//! One queue is reset alone ([`Transport::reset_queue`]) with the protocol's own ring stop:
//! `SET_VRING_ENABLE` 0, then `GET_VRING_BASE`, which stops the ring; the back-end answers once
//! it no longer processes it. [`Transport::setup_queue`] then gives the rings again
//! (`SET_VRING_NUM`, `_ADDR`, `_BASE`, `_CALL`, `_KICK`, which starts the ring) and
//! [`Transport::enable_queue`] sends `SET_VRING_ENABLE` 1. vhost-user has no message for a
//! per-queue reset as such (`RESET_DEVICE` resets them all), and the virtio feature
//! `VIRTIO_F_RING_RESET` is the front-end's to offer, not the back-end's: the stop and restart
//! are the front-end's part of a queue reset, as a VMM does for a guest. Whether a back-end
//! finishes the requests it has in flight before it answers `GET_VRING_BASE` is up to it; the
//! driver treats them as lost.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::Transport;
use crate::memory::DmaMemory;
use crate::queue::split::QueueLayout;

/// The `SET_VRING_BASE` value for a fresh queue: the next available index, 0. For a packed
/// ring, bit 15 also carries the driver's wrap counter, which starts at 1 (virtio 1.2, 2.8.1):
/// a 0 there makes the back-end wait for descriptors of the wrong lap, and nothing moves.
fn vring_base(layout: &QueueLayout) -> u16 {
    if layout.packed { 1 << 15 } else { 0 }
}

const CALL_TOKEN: u64 = 0;
const SOCKET_TOKEN: u64 = 1;

/// The queue size limit assumed for a vhost-user back-end (QEMU's and libvhost-user's maximum).
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// Errors of the vhost-user transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting to the back-end's socket failed.
    #[error("cannot connect to the vhost-user socket {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: vhost::Error,
    },
    /// A vhost-user message failed (socket error, back-end error reply, invalid reply).
    #[error("vhost-user {op} failed")]
    Protocol {
        /// The message.
        op: &'static str,
        /// The cause.
        #[source]
        source: vhost::Error,
    },
    /// The back-end does not offer `VHOST_USER_F_PROTOCOL_FEATURES` or the `CONFIG` protocol
    /// feature, without which the config space cannot be read.
    #[error("the back-end does not offer the CONFIG protocol feature")]
    NoConfig,
    /// Creating, writing or polling an eventfd failed.
    #[error("eventfd {op} failed")]
    EventFd {
        /// What was done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A queue index above what the back-end offers.
    #[error("queue {index} above the back-end's {max} queues")]
    NoSuchQueue {
        /// The index.
        index: u16,
        /// Queues offered.
        max: u16,
    },
    /// A ring address that is not in the shared memory.
    #[error("ring address {0:#x} is not in shared memory")]
    BadRingAddress(u64),
}

fn protocol(op: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::Protocol { op, source }
}

/// A vhost-user back-end (such as `qemu-storage-daemon --export vhost-user-blk`) driven as a
/// virtio device.
pub struct VhostUserTransport {
    frontend: Frontend,
    path: PathBuf,
    mem: Arc<DmaMemory>,
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
    max_queues: u16,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    /// Per queue, an epoll set with its call eventfd (edge-triggered) and the socket.
    waits: Vec<Epoll>,
    ready: Vec<bool>,
    /// Rings stopped by [`Transport::reset_queue`] and not yet enabled again.
    stopped: Vec<bool>,
    /// Rings reset since the other rings were last re-announced (see `enable_queue`).
    reset_batch: Vec<bool>,
}

impl std::fmt::Debug for VhostUserTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserTransport")
            .field("path", &self.path)
            .field(
                "backend_features",
                &format_args!("{:#x}", self.backend_features),
            )
            .field("protocol", &self.protocol)
            .field("max_queues", &self.max_queues)
            .finish_non_exhaustive()
    }
}

impl VhostUserTransport {
    /// Connects to the back-end listening on `path`, negotiates the protocol features and shares
    /// `mem` with it.
    pub fn connect(path: impl AsRef<Path>, mem: Arc<DmaMemory>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let mut frontend = Frontend::connect(&path, 1).map_err(|source| Error::Connect {
            path: path.clone(),
            source,
        })?;
        frontend.set_owner().map_err(protocol("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(protocol("GET_FEATURES"))?;
        let mut protocol_acked = VhostUserProtocolFeatures::empty();
        let mut max_queues = 1u16;
        if backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(protocol("GET_PROTOCOL_FEATURES"))?;
            protocol_acked = offered
                & (VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::CONFIG);
            frontend
                .set_protocol_features(protocol_acked)
                .map_err(protocol("SET_PROTOCOL_FEATURES"))?;
            if protocol_acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if protocol_acked.contains(VhostUserProtocolFeatures::MQ) {
                let n = frontend
                    .get_queue_num()
                    .map_err(protocol("GET_QUEUE_NUM"))?;
                // The vhost crate bounds the reply; an answer of 0 still leaves one queue.
                max_queues = u16::try_from(n).unwrap_or(u16::MAX).max(1);
            }
        }
        Ok(VhostUserTransport {
            frontend,
            path,
            mem,
            backend_features,
            protocol: protocol_acked,
            max_queues,
            kicks: Vec::new(),
            calls: Vec::new(),
            waits: Vec::new(),
            ready: Vec::new(),
            stopped: Vec::new(),
            reset_batch: Vec::new(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The protocol features in use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// What to watch to learn of completions on queue `index` from another thread (a bridge
    /// that relays them, such as the `pv-backend` feature's): its call eventfd, readable once
    /// the back-end notified (read it to clear it), and the vhost-user socket, readable or hung
    /// up once the back-end went away. `None` for a queue not set up.
    ///
    /// Only reading the eventfd and polling both are meant: the socket carries the control
    /// plane, which stays this transport's.
    pub fn notification_fds(
        &self,
        index: u16,
    ) -> Option<(std::os::fd::BorrowedFd<'_>, std::os::fd::BorrowedFd<'_>)> {
        let call = self.calls.get(usize::from(index))?;
        // SAFETY: both descriptors are owned by this transport (the call eventfd and the
        // frontend's socket) and stay open for the lifetime of the borrow of `self`.
        let fds = unsafe {
            (
                std::os::fd::BorrowedFd::borrow_raw(call.as_raw_fd()),
                std::os::fd::BorrowedFd::borrow_raw(self.frontend.as_raw_fd()),
            )
        };
        Some(fds)
    }

    fn host_address(&self, addr: GuestAddress) -> Result<u64, Error> {
        self.mem
            .guest_memory()
            .get_host_address(addr)
            .map(|p| p as u64)
            .map_err(|_| Error::BadRingAddress(addr.0))
    }

    fn check_queue(&self, index: u16) -> Result<usize, Error> {
        if index >= self.max_queues {
            return Err(Error::NoSuchQueue {
                index,
                max: self.max_queues,
            });
        }
        Ok(usize::from(index))
    }

    /// An epoll set for waiting on queue `call`: the call eventfd edge-triggered (so a wake-up
    /// needs no `read` to re-arm it; the counter is never read, and at a notification per
    /// microsecond it would take half a million years to saturate), and the socket
    /// level-triggered, so that a back-end that closes it ends every wait.
    fn wait_set(&self, call: &EventFd) -> Result<Epoll, Error> {
        let fail = |op| move |source| Error::EventFd { op, source };
        let epoll = Epoll::new().map_err(fail("epoll_create"))?;
        epoll
            .ctl(
                ControlOperation::Add,
                call.as_raw_fd(),
                EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, CALL_TOKEN),
            )
            .map_err(fail("epoll_ctl (call)"))?;
        epoll
            .ctl(
                ControlOperation::Add,
                self.frontend.as_raw_fd(),
                EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, SOCKET_TOKEN),
            )
            .map_err(fail("epoll_ctl (socket)"))?;
        Ok(epoll)
    }

    fn eventfd() -> Result<EventFd, Error> {
        EventFd::new(EFD_NONBLOCK).map_err(|source| Error::EventFd {
            op: "create",
            source,
        })
    }
}

impl Transport for VhostUserTransport {
    fn memory(&self) -> &Arc<DmaMemory> {
        &self.mem
    }

    fn device_features(&mut self) -> Result<u64, super::Error> {
        // Bit 30 is the vhost-user protocol bit, not a virtio feature.
        Ok(self.backend_features & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
    }

    fn set_driver_features(&mut self, features: u64) -> Result<(), super::Error> {
        let protocol_bit =
            self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        self.frontend
            .set_features(features | protocol_bit)
            .map_err(protocol("SET_FEATURES"))?;
        let regions = self
            .mem
            .guest_memory()
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(protocol("SET_MEM_TABLE"))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(protocol("SET_MEM_TABLE"))?;
        Ok(())
    }

    fn read_config(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), super::Error> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(Error::NoConfig.into());
        }
        let request = vec![0u8; buf.len()];
        let (_, payload) = self
            .frontend
            .get_config(
                offset,
                buf.len() as u32,
                VhostUserConfigFlags::empty(),
                &request,
            )
            .map_err(protocol("GET_CONFIG"))?;
        // The vhost crate checks the reply size equals the request's.
        if payload.len() != buf.len() {
            return Err(Error::Protocol {
                op: "GET_CONFIG",
                source: vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::InvalidMessage),
            }
            .into());
        }
        buf.copy_from_slice(&payload);
        Ok(())
    }

    fn has_config_space(&self) -> bool {
        self.protocol.contains(VhostUserProtocolFeatures::CONFIG)
    }

    fn max_queues(&mut self) -> Result<u16, super::Error> {
        Ok(self.max_queues)
    }

    fn max_queue_size(&mut self) -> Result<u16, super::Error> {
        Ok(MAX_QUEUE_SIZE)
    }

    fn setup_queue(&mut self, index: u16, layout: &QueueLayout) -> Result<(), super::Error> {
        let i = self.check_queue(index)?;
        while self.kicks.len() <= i {
            let call = Self::eventfd()?;
            self.waits.push(self.wait_set(&call)?);
            self.kicks.push(Self::eventfd()?);
            self.calls.push(call);
            self.ready.push(false);
            self.stopped.push(false);
            self.reset_batch.push(false);
        }
        let config = VringConfigData {
            queue_max_size: layout.size,
            queue_size: layout.size,
            flags: 0,
            desc_table_addr: self.host_address(layout.desc_table)?,
            used_ring_addr: self.host_address(layout.used_ring)?,
            avail_ring_addr: self.host_address(layout.avail_ring)?,
            log_addr: None,
        };
        self.frontend
            .set_vring_num(i, layout.size)
            .map_err(protocol("SET_VRING_NUM"))?;
        self.frontend
            .set_vring_addr(i, &config)
            .map_err(protocol("SET_VRING_ADDR"))?;
        self.frontend
            .set_vring_base(i, vring_base(layout))
            .map_err(protocol("SET_VRING_BASE"))?;
        self.frontend
            .set_vring_call(i, &self.calls[i])
            .map_err(protocol("SET_VRING_CALL"))?;
        self.frontend
            .set_vring_kick(i, &self.kicks[i])
            .map_err(protocol("SET_VRING_KICK"))?;
        self.ready[i] = true;
        Ok(())
    }

    fn activate(&mut self) -> Result<(), super::Error> {
        if self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            for (i, ready) in self.ready.iter().enumerate() {
                if *ready {
                    self.frontend
                        .set_vring_enable(i, true)
                        .map_err(protocol("SET_VRING_ENABLE"))?;
                }
            }
        }
        Ok(())
    }

    fn notify(&mut self, index: u16) -> Result<(), super::Error> {
        let i = self.check_queue(index)?;
        let kick = self.kicks.get(i).ok_or(Error::NoSuchQueue {
            index,
            max: self.kicks.len() as u16,
        })?;
        kick.write(1).map_err(|source| Error::EventFd {
            op: "write (kick)",
            source,
        })?;
        Ok(())
    }

    fn set_call_fd(&mut self, index: u16, fd: Option<OwnedFd>) -> Result<bool, super::Error> {
        let i = self.check_queue(index)?;
        if i >= self.calls.len() {
            return Err(Error::NoSuchQueue {
                index,
                max: self.calls.len() as u16,
            }
            .into());
        }
        let call = match fd {
            // SAFETY: `fd` is an open descriptor that this transport now owns alone (it was
            // moved in); an `EventFd` only reads, writes and duplicates it, and on a descriptor
            // that is not an eventfd those calls fail with an error, nothing worse.
            Some(fd) => unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) },
            None => Self::eventfd()?,
        };
        let wait = self.wait_set(&call)?;
        if self.ready[i] {
            self.frontend
                .set_vring_call(i, &call)
                .map_err(protocol("SET_VRING_CALL"))?;
        }
        self.calls[i] = call;
        self.waits[i] = wait;
        Ok(true)
    }

    fn can_reset_queue(&self) -> bool {
        true
    }

    /// Connects to the socket path again, over the same memory. Each queue's call eventfd is
    /// carried over (a duplicate of the same eventfd, so one given with
    /// [`Transport::set_call_fd`] stays the one signalled); kick eventfds are new.
    fn reopen(&self) -> Result<Self, super::Error> {
        let mut new = Self::connect(&self.path, self.mem.clone())?;
        for call in &self.calls {
            let call = call.try_clone().map_err(|source| Error::EventFd {
                op: "dup (call)",
                source,
            })?;
            new.waits.push(new.wait_set(&call)?);
            new.kicks.push(Self::eventfd()?);
            new.calls.push(call);
            new.ready.push(false);
            new.stopped.push(false);
            new.reset_batch.push(false);
        }
        Ok(new)
    }

    fn reset_queue(&mut self, index: u16) -> Result<(), super::Error> {
        let i = self.check_queue(index)?;
        if !self.ready.get(i).copied().unwrap_or(false) {
            return Err(Error::NoSuchQueue {
                index,
                max: self.ready.len() as u16,
            }
            .into());
        }
        if self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            self.frontend
                .set_vring_enable(i, false)
                .map_err(protocol("SET_VRING_ENABLE"))?;
        }
        // Stops the ring: the back-end replies when it no longer processes it.
        self.frontend
            .get_vring_base(i)
            .map_err(protocol("GET_VRING_BASE"))?;
        self.ready[i] = false;
        self.stopped[i] = true;
        self.reset_batch[i] = true;
        Ok(())
    }

    fn enable_queue(&mut self, index: u16) -> Result<(), super::Error> {
        let i = self.check_queue(index)?;
        if !self.ready.get(i).copied().unwrap_or(false) {
            return Err(Error::NoSuchQueue {
                index,
                max: self.ready.len() as u16,
            }
            .into());
        }
        self.stopped[i] = false;
        // Without protocol features a ring starts enabled at SET_VRING_KICK.
        if self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Ok(());
        }
        self.frontend
            .set_vring_enable(i, true)
            .map_err(protocol("SET_VRING_ENABLE"))?;
        if self.stopped.iter().any(|&s| s) {
            // More rings of this reset to come back first.
            return Ok(());
        }
        // The rings that were not reset are disabled and enabled again, then kicked. For the
        // vhost-user protocol this changes nothing (a disabled ring keeps its state, and a
        // spurious kick is harmless), but DPDK's vhost PMD (testpmd's `net_vhost`) forgets
        // whether every ring is enabled when one is stopped, and learns it again only from a
        // ring whose readiness changes: without this, the other queues stay stopped there.
        let others: Vec<usize> = (0..self.ready.len())
            .filter(|&j| self.ready[j] && !self.reset_batch[j])
            .collect();
        self.reset_batch.fill(false);
        for &j in &others {
            for enable in [false, true] {
                self.frontend
                    .set_vring_enable(j, enable)
                    .map_err(protocol("SET_VRING_ENABLE"))?;
            }
        }
        for j in others {
            self.notify(j as u16)?;
        }
        Ok(())
    }

    fn wait(&mut self, index: u16, timeout: Duration) -> Result<(), super::Error> {
        let i = self.check_queue(index)?;
        let epoll = self.waits.get(i).ok_or(Error::NoSuchQueue {
            index,
            max: self.waits.len() as u16,
        })?;
        // A timeout epoll cannot express (`Duration::MAX`, or anything from about 24 days on)
        // is no timeout: the wait arms no timer, and still ends when the socket hangs up.
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(-1);
        let mut events = [EpollEvent::default(); 2];
        let n = loop {
            match epoll.wait(ms, &mut events) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::EventFd {
                        op: "epoll_wait",
                        source,
                    }
                    .into());
                }
            }
        };
        if n == 0 {
            return Err(super::Error::Timeout {
                queue: index,
                timeout,
            });
        }
        // No message is expected from the back-end between requests: the socket becoming
        // readable or hanging up means it closed (daemon killed, restarted, or broken).
        if events[..n].iter().any(|e| e.data() == SOCKET_TOKEN) {
            return Err(super::Error::DeviceGone(format!(
                "vhost-user socket {} closed",
                self.path.display()
            )));
        }
        // The call eventfd is edge-triggered: no read is needed to wait again. A stale edge
        // (from a completion already polled) only makes the caller poll the ring once more.
        Ok(())
    }
}
