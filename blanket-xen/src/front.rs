//! What blkfront and netfront share: the errors of the XenBus handshake and of a shared ring
//! ([`FrontError`], inside [`BlkError`](crate::blk::BlkError) and [`NetError`](crate::net::NetError)),
//! and the handshake's steps that are the same for every device (reading the back-end's numeric
//! nodes, waiting for its InitWait and Connected, writing keys in a retried transaction).

use xen_abi::ring::{RingError, RingMemory};
use xen_abi::xenbus::{XenbusError, XenbusState};
use xen_abi::xs_wire::XsErrno;

use crate::platform::{Platform, PlatformError};
use crate::xenbus::{FrontendDevice, XBT_NIL, XenBus, XenBusError};

/// How often a handshake's transaction is retried on `EAGAIN`.
const TX_RETRIES: usize = 16;

/// What can go wrong in any front-end: XenStore, the platform, a shared ring, the back-end's nodes or its
/// state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrontError {
    /// XenStore failed during the handshake.
    #[error("xenbus: {0}")]
    XenBus(#[from] XenBusError),
    /// The platform failed (grants, event channels, translation).
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// A shared ring failed; a back-end whose `rsp_prod` overflows stops the device.
    #[error("shared ring: {0}")]
    Ring(#[from] RingError),
    /// A node is missing, not a number, or out of range.
    #[error("node {key} is {what}")]
    BadNode {
        /// The node.
        key: &'static str,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The back-end went to a state the handshake does not allow at this point.
    #[error("back-end went to {state} while the front-end was {front}")]
    BackendState {
        /// The back-end's state.
        state: XenbusState,
        /// Ours.
        front: XenbusState,
    },
}

/// `From` the causes [`FrontError`] wraps, for a device's error enum with a `Front(FrontError)`
/// variant, so that `?` keeps working on XenStore, platform and ring results.
macro_rules! from_front_causes {
    ($error:ty) => {
        impl From<$crate::xenbus::XenBusError> for $error {
            fn from(e: $crate::xenbus::XenBusError) -> Self {
                Self::Front(e.into())
            }
        }
        impl From<$crate::platform::PlatformError> for $error {
            fn from(e: $crate::platform::PlatformError) -> Self {
                Self::Front(e.into())
            }
        }
        impl From<xen_abi::ring::RingError> for $error {
            fn from(e: xen_abi::ring::RingError) -> Self {
                Self::Front(e.into())
            }
        }
    };
}
pub(crate) use from_front_causes;

/// A numeric node of the back-end: `None` when absent (or unreadable: `EACCES`, as a toolstack that
/// never wrote it leaves it), [`FrontError::BadNode`] when not a decimal number.
pub(crate) fn backend_number<P: Platform, XM: RingMemory>(
    xb: &mut XenBus<P, XM>,
    dev: &FrontendDevice,
    key: &'static str,
) -> Result<Option<u64>, FrontError> {
    match dev.backend_u64(xb, key.as_bytes()) {
        Ok(v) => Ok(v),
        Err(XenBusError::NotNumeric { .. }) => Err(FrontError::BadNode {
            key,
            what: "not a decimal number",
        }),
        Err(XenBusError::Xs(XsErrno::EACCES)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A feature flag of the back-end: set when present and not 0.
pub(crate) fn backend_flag<P: Platform, XM: RingMemory>(
    xb: &mut XenBus<P, XM>,
    dev: &FrontendDevice,
    key: &'static str,
) -> Result<bool, FrontError> {
    Ok(backend_number(xb, dev, key)?.unwrap_or(0) != 0)
}

/// A numeric node of the back-end that fits 32 bits, `default` when absent.
pub(crate) fn backend_u32<P: Platform, XM: RingMemory>(
    xb: &mut XenBus<P, XM>,
    dev: &FrontendDevice,
    key: &'static str,
    default: u32,
) -> Result<u32, FrontError> {
    match backend_number(xb, dev, key)? {
        None => Ok(default),
        Some(v) => u32::try_from(v).map_err(|_| FrontError::BadNode {
            key,
            what: "larger than 2^32 - 1",
        }),
    }
}

/// `multi-queue-max-queues`: 1 when absent, refused when 0.
pub(crate) fn backend_max_queues<P: Platform, XM: RingMemory>(
    xb: &mut XenBus<P, XM>,
    dev: &FrontendDevice,
) -> Result<u32, FrontError> {
    const KEY: &str = "multi-queue-max-queues";
    match backend_u32(xb, dev, KEY, 1)? {
        0 => Err(FrontError::BadNode {
            key: KEY,
            what: "0 (at least one queue is needed)",
        }),
        n => Ok(n),
    }
}

/// Waits (up to `timeout_ns`) for the back-end to reach a state `done` accepts; a state `fail` names
/// first is [`FrontError::BackendState`].
fn wait_for_backend<P: Platform, XM: RingMemory>(
    xb: &mut XenBus<P, XM>,
    dev: &mut FrontendDevice,
    done: impl Fn(XenbusState) -> bool,
    fail: impl Fn(XenbusState) -> bool,
    timeout_ns: u64,
) -> Result<(), FrontError> {
    let front = dev.state();
    match dev.wait_for_backend(xb, done, fail, timeout_ns) {
        Ok(_) => Ok(()),
        Err(XenBusError::State(XenbusError::IllegalTransition { to, .. })) => {
            Err(FrontError::BackendState { state: to, front })
        }
        Err(e) => Err(e.into()),
    }
}

/// Waits (up to `timeout_ns`) for the back-end's InitWait (or Initialised): its features are published.
/// Connected, Closing or Closed first is [`FrontError::BackendState`].
pub(crate) fn wait_for_backend_features<P: Platform, XM: RingMemory>(
    xb: &mut XenBus<P, XM>,
    dev: &mut FrontendDevice,
    timeout_ns: u64,
) -> Result<(), FrontError> {
    use XenbusState::*;
    wait_for_backend(
        xb,
        dev,
        |s| matches!(s, InitWait | Initialised),
        |s| matches!(s, Connected | Closing | Closed),
        timeout_ns,
    )
}

/// Waits (up to `timeout_ns`) for the back-end's Connected, after our Initialised. Closing, Closed,
/// Initialising or Unknown first is [`FrontError::BackendState`].
pub(crate) fn wait_for_backend_connected<P: Platform, XM: RingMemory>(
    xb: &mut XenBus<P, XM>,
    dev: &mut FrontendDevice,
    timeout_ns: u64,
) -> Result<(), FrontError> {
    use XenbusState::*;
    wait_for_backend(
        xb,
        dev,
        |s| s == Connected,
        |s| matches!(s, Closing | Closed | Initialising | Unknown),
        timeout_ns,
    )
}

/// The front-end's half of closing: `state` Closing, the back-end followed to Closing or Closed (for up
/// to `timeout_ns`; a back-end that does not follow is not waited for longer), then `state` Closed.
pub(crate) fn close_device<P: Platform, XM: RingMemory>(
    xb: &mut XenBus<P, XM>,
    dev: &mut FrontendDevice,
    timeout_ns: u64,
) -> Result<(), XenBusError> {
    dev.switch_state(xb, XBT_NIL, XenbusState::Closing)?;
    let _ = dev.wait_for_backend(xb, |s| s.is_closing_or_closed(), |_| false, timeout_ns);
    dev.switch_state(xb, XBT_NIL, XenbusState::Closed)
}

/// Runs `writes` in a XenStore transaction and commits it, again (a few times) when the commit conflicts
/// (`EAGAIN`). A failed write aborts the transaction.
pub(crate) fn in_transaction<P: Platform, XM: RingMemory>(
    xb: &mut XenBus<P, XM>,
    mut writes: impl FnMut(&mut XenBus<P, XM>, u32) -> Result<(), XenBusError>,
) -> Result<(), XenBusError> {
    // Bounded: a few retries when the transaction conflicts.
    for _ in 0..TX_RETRIES {
        let t = xb.transaction_start()?;
        if let Err(e) = writes(xb, t) {
            if !e.is_fatal() {
                let _ = xb.transaction_end(t, false);
            }
            return Err(e);
        }
        match xb.transaction_end(t, true) {
            Ok(()) => return Ok(()),
            Err(XenBusError::Xs(XsErrno::EAGAIN)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(XenBusError::Xs(XsErrno::EAGAIN))
}
