//! Transports: how the driver reaches a device's control plane (features, config space, queue
//! set-up) and its notifications (kick and call).
//!
//! The [`Transport`] trait is what a device driver such as [`crate::blk::BlkDriver`] needs, and
//! nothing more, so that vhost-user ([`vhost_user::VhostUserTransport`]), the in-process test
//! device ([`inproc::InProcessTransport`]) and later virtio-pci over VFIO or vhost-vdpa fit it.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::memory::DmaMemory;
use crate::queue::split::QueueLayout;

pub mod inproc;
pub mod vhost_user;

/// Errors of a transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The vhost-user transport failed.
    #[error(transparent)]
    VhostUser(#[from] vhost_user::Error),
    /// The in-process transport failed.
    #[error(transparent)]
    InProcess(#[from] inproc::Error),
    /// The device did not complete anything before the timeout.
    #[error("no notification from the device on queue {queue} within {timeout:?}")]
    Timeout {
        /// The queue waited on.
        queue: u16,
        /// How long.
        timeout: Duration,
    },
    /// The device went away (socket closed, daemon killed, device reset).
    #[error("the device is gone: {0}")]
    DeviceGone(String),
    /// The transport or the device cannot reset one queue alone (no `VIRTIO_F_RING_RESET`).
    #[error("queue {0} cannot be reset alone: the device or transport has no queue reset")]
    QueueResetUnsupported(u16),
    /// The transport cannot open a new connection to its device ([`Transport::reopen`]).
    #[error(
        "this transport cannot reconnect to its device: make a new transport and call the driver's reconnect"
    )]
    ReconnectUnsupported,
}

/// The control plane and notifications of one virtio device, as a driver uses them.
///
/// The call order is: [`Transport::device_features`], [`Transport::set_driver_features`],
/// [`Transport::read_config`] (any time after), [`Transport::setup_queue`] for each queue,
/// [`Transport::activate`], then [`Transport::notify`] and [`Transport::wait`] in the I/O path.
pub trait Transport {
    /// The memory shared with the device, where rings and buffers live.
    fn memory(&self) -> &Arc<DmaMemory>;

    /// The device's feature bits.
    fn device_features(&mut self) -> Result<u64, Error>;

    /// Acknowledges the features the driver uses (a subset of the device's).
    fn set_driver_features(&mut self, features: u64) -> Result<(), Error>;

    /// Reads `buf.len()` bytes of the device's config space at `offset`.
    fn read_config(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Error>;

    /// Whether the device has a config space the driver can read. A vhost-user back-end
    /// without the `CONFIG` protocol feature has none (DPDK's vhost-user-net, for one): its
    /// front-end owns the config, as QEMU does for vhost-user-net.
    fn has_config_space(&self) -> bool {
        true
    }

    /// How many queues the device offers (its own limit, before the device-specific config).
    fn max_queues(&mut self) -> Result<u16, Error>;

    /// The largest queue size the transport accepts (untrusted: validated by the queue).
    fn max_queue_size(&mut self) -> Result<u16, Error>;

    /// Gives queue `index`'s rings to the device.
    fn setup_queue(&mut self, index: u16, layout: &QueueLayout) -> Result<(), Error>;

    /// Starts the device (`DRIVER_OK`, or enabling the vhost-user rings).
    fn activate(&mut self) -> Result<(), Error>;

    /// Kicks queue `index`: new available buffers.
    fn notify(&mut self, index: u16) -> Result<(), Error>;

    /// Waits up to `timeout` for a used-buffer notification on queue `index`. Returns early if
    /// the device goes away. `Duration::MAX` means no timeout (the vhost-user transport then
    /// arms no timer for the wait, which a daemon that dies still ends through its socket).
    fn wait(&mut self, index: u16, timeout: Duration) -> Result<(), Error>;

    /// Makes `fd`, an eventfd, the descriptor the device signals when it uses buffers of queue
    /// `index` (vhost-user `SET_VRING_CALL`), in place of the transport's own, so that whoever
    /// sleeps on that eventfd is woken by the device itself, with no thread in between. `None`
    /// goes back to an eventfd of the transport's. [`Transport::wait`] on the queue then waits
    /// on the new descriptor (without reading it: its owner drains it), and a queue set up
    /// again after a reset keeps it.
    ///
    /// Returns `false` when the transport has no call descriptor to replace (the default).
    fn set_call_fd(&mut self, index: u16, fd: Option<OwnedFd>) -> Result<bool, Error> {
        let _ = (index, fd);
        Ok(false)
    }

    /// Whether one queue can be reset and re-enabled while the others run
    /// ([`Transport::reset_queue`]). Asked after [`Transport::set_driver_features`]: for a
    /// virtio device this is `VIRTIO_F_RING_RESET` negotiated (virtio 1.2, 2.6.1).
    fn can_reset_queue(&self) -> bool {
        false
    }

    /// Resets queue `index` alone (virtio 1.2, 2.6.1): when it returns, the device no longer
    /// uses the queue's rings or the buffers in them and has forgotten its state. The driver
    /// then resets its side of the rings, gives them again with [`Transport::setup_queue`] and
    /// restarts the queue with [`Transport::enable_queue`]. The other queues keep running.
    fn reset_queue(&mut self, index: u16) -> Result<(), Error> {
        Err(Error::QueueResetUnsupported(index))
    }

    /// Re-enables queue `index` after [`Transport::reset_queue`] and
    /// [`Transport::setup_queue`].
    fn enable_queue(&mut self, index: u16) -> Result<(), Error> {
        Err(Error::QueueResetUnsupported(index))
    }

    /// Opens a new connection to the same device, after this one went away
    /// ([`Error::DeviceGone`]: a vhost-user daemon killed or restarted), over the same memory
    /// and with the call descriptors given with [`Transport::set_call_fd`]. The new transport
    /// starts again at the beginning of the call order (features, config, queues). A device
    /// that is not back yet is an error, for the caller to retry; the driver's transparent
    /// reconnection ([`crate::blk::BlkOptions::reconnect`]) does. Fails with
    /// [`Error::ReconnectUnsupported`] by default.
    fn reopen(&self) -> Result<Self, Error>
    where
        Self: Sized,
    {
        Err(Error::ReconnectUnsupported)
    }
}

/// How one reconnection attempt ended, for [`reconnect_within`].
pub(crate) enum Attempt<E> {
    /// Reconnected.
    Done,
    /// Failed, worth another try (the device is not back yet).
    Again(E),
    /// Failed for good (another device, or a broken one).
    Fail(E),
    /// The transport cannot reconnect at all ([`Error::ReconnectUnsupported`]): the loss
    /// stands.
    Unsupported,
}

/// Reconnects after the device went away (`gone`): unless it was already gone for `limit`
/// without working since (`gone_since`, set at the first loss and cleared by the driver when
/// the device works again), makes attempts until one reconnects or fails for good, pausing
/// 5 ms between them and doubling up to 100 ms, until `limit` after the first loss (the last
/// attempt made as the time runs out). A transport that cannot reconnect at all returns
/// `gone`. When the time runs out, `gone_since` is cleared (a later wait, the
/// caller's choice, gets the whole time again) and the last error goes through `timed_out`.
/// Returns how many attempts it took.
pub(crate) fn reconnect_within<E: std::fmt::Display>(
    device: &str,
    limit: Duration,
    gone_since: &mut Option<Instant>,
    gone: E,
    timed_out: impl FnOnce(E) -> E,
    mut attempt: impl FnMut() -> Attempt<E>,
) -> Result<u32, E> {
    if gone_since.is_some_and(|since| since.elapsed() >= limit) {
        // Gone again, without working since the first loss.
        *gone_since = None;
        return Err(timed_out(gone));
    }
    tracing::warn!(error = %gone, "{device} went away; reconnecting");
    let started = *gone_since.get_or_insert_with(Instant::now);
    let mut pause = Duration::from_millis(5);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let e = match attempt() {
            Attempt::Done => {
                tracing::info!(attempts, since_gone = ?started.elapsed(), "{device} reconnected");
                return Ok(attempts);
            }
            Attempt::Fail(e) => return Err(e),
            Attempt::Unsupported => return Err(gone),
            Attempt::Again(e) => e,
        };
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            *gone_since = None;
            return Err(timed_out(e));
        }
        tracing::debug!(error = %e, attempts, "{device}: reconnection attempt failed");
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
