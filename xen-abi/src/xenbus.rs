//! XenBus device states: `enum xenbus_state` of `io/xenbus.h`, as XenStore carries them (a decimal
//! number in the `state` node of each front and back end), and the legal steps of the front/back
//! handshake.
//!
//! The handshake, from the state diagrams of `io/blkif.h` (the same in `io/displif.h`, `io/sndif.h`,
//! `io/cameraif.h`):
//!
//! ```text
//!   Front                                   Back
//!   Initialising                            Initialising
//!                                           InitWait        (features published)
//!   Initialised     (ring published)
//!                                           Connected       (ring mapped)
//!   Connected
//!   ... Closing -> Closed on either side to tear down ...
//! ```
//!
//! A front end may go to Initialised without waiting for the back end's InitWait, and a back end may go
//! from Initialising straight to Initialised, skipping InitWait (`io/blkif.h`). Either side may go to
//! Closing or Closed from any live state. Reconnection restarts from Closed (a back end goes to InitWait
//! again, a front end to Initialising or, as Linux's blkfront does, straight to Initialised).
//! Reconfiguring/Reconfigured are entered from Connected and lead back to Connected; the display, sound
//! and camera protocols also let a front end go back to Initialising from Connected or Reconfiguring
//! after a back-end failure.
//!
//! Unknown (0) is what an absent or unreadable `state` node means; no driver writes it.
#![forbid(unsafe_code)]

use core::fmt;

/// `XenbusStateUnknown` (`enum xenbus_state` in `io/xenbus.h`).
#[allow(non_upper_case_globals)]
pub const XenbusStateUnknown: u32 = 0;
/// `XenbusStateInitialising` (`io/xenbus.h`).
#[allow(non_upper_case_globals)]
pub const XenbusStateInitialising: u32 = 1;
/// `XenbusStateInitWait` (`io/xenbus.h`): early initialisation done, waiting for the peer or hotplug.
#[allow(non_upper_case_globals)]
pub const XenbusStateInitWait: u32 = 2;
/// `XenbusStateInitialised` (`io/xenbus.h`): waiting for a connection from the peer.
#[allow(non_upper_case_globals)]
pub const XenbusStateInitialised: u32 = 3;
/// `XenbusStateConnected` (`io/xenbus.h`).
#[allow(non_upper_case_globals)]
pub const XenbusStateConnected: u32 = 4;
/// `XenbusStateClosing` (`io/xenbus.h`): closing because of an error or an unplug.
#[allow(non_upper_case_globals)]
pub const XenbusStateClosing: u32 = 5;
/// `XenbusStateClosed` (`io/xenbus.h`).
#[allow(non_upper_case_globals)]
pub const XenbusStateClosed: u32 = 6;
/// `XenbusStateReconfiguring` (`io/xenbus.h`).
#[allow(non_upper_case_globals)]
pub const XenbusStateReconfiguring: u32 = 7;
/// `XenbusStateReconfigured` (`io/xenbus.h`).
#[allow(non_upper_case_globals)]
pub const XenbusStateReconfigured: u32 = 8;

/// The state of one end of a XenBus device: `enum xenbus_state` (`XenbusState`) in `io/xenbus.h`.
#[non_exhaustive]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XenbusState {
    /// 0: unknown (the `state` node is absent or unreadable).
    Unknown = XenbusStateUnknown,
    /// 1: initialising.
    Initialising = XenbusStateInitialising,
    /// 2: early initialisation finished, waiting for information from the peer or hotplug scripts.
    InitWait = XenbusStateInitWait,
    /// 3: initialised, waiting for a connection from the peer.
    Initialised = XenbusStateInitialised,
    /// 4: connected.
    Connected = XenbusStateConnected,
    /// 5: being closed because of an error or an unplug event.
    Closing = XenbusStateClosing,
    /// 6: closed.
    Closed = XenbusStateClosed,
    /// 7: being reconfigured.
    Reconfiguring = XenbusStateReconfiguring,
    /// 8: reconfigured.
    Reconfigured = XenbusStateReconfigured,
}

/// Which end of a device a state belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XenbusSide {
    /// The front end, in the guest using the device.
    Frontend,
    /// The back end, in the domain serving the device.
    Backend,
}

impl fmt::Display for XenbusSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XenbusSide::Frontend => "front end",
            XenbusSide::Backend => "back end",
        })
    }
}

/// What can be wrong with a XenBus state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum XenbusError {
    /// A number that is not a state of `enum xenbus_state` (0..=8).
    #[error("XenBus state {value} is not a state of xenbus.h (0..=8)")]
    UnknownState {
        /// The number.
        value: u64,
    },
    /// An empty `state` value.
    #[error("XenBus state value is empty (expected a decimal number 0..=8)")]
    Empty,
    /// A `state` value with a byte that is not a decimal digit.
    #[error("XenBus state value has byte {byte:#04x} at offset {offset}, not a decimal digit")]
    NotNumeric {
        /// Offset of the byte.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// A `state` value too long to be any state.
    #[error("XenBus state value of {len} bytes is too long (expected a decimal number 0..=8)")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// A state change that the handshake does not allow.
    #[error("{side} state change from {from} to {to} is not allowed by the XenBus handshake")]
    IllegalTransition {
        /// Whose state changed.
        side: XenbusSide,
        /// The old state.
        from: XenbusState,
        /// The new state.
        to: XenbusState,
    },
}

impl TryFrom<u32> for XenbusState {
    type Error = XenbusError;

    fn try_from(value: u32) -> Result<Self, XenbusError> {
        XenbusState::ALL
            .into_iter()
            .find(|s| *s as u32 == value)
            .ok_or(XenbusError::UnknownState {
                value: u64::from(value),
            })
    }
}

impl From<XenbusState> for u32 {
    fn from(s: XenbusState) -> u32 {
        s as u32
    }
}

impl XenbusState {
    /// Every state, in numeric order.
    pub const ALL: [XenbusState; 9] = [
        XenbusState::Unknown,
        XenbusState::Initialising,
        XenbusState::InitWait,
        XenbusState::Initialised,
        XenbusState::Connected,
        XenbusState::Closing,
        XenbusState::Closed,
        XenbusState::Reconfiguring,
        XenbusState::Reconfigured,
    ];

    /// The name, as Linux's `xenbus_strstate` prints it (`"InitWait"`, `"Connected"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            XenbusState::Unknown => "Unknown",
            XenbusState::Initialising => "Initialising",
            XenbusState::InitWait => "InitWait",
            XenbusState::Initialised => "Initialised",
            XenbusState::Connected => "Connected",
            XenbusState::Closing => "Closing",
            XenbusState::Closed => "Closed",
            XenbusState::Reconfiguring => "Reconfiguring",
            XenbusState::Reconfigured => "Reconfigured",
        }
    }

    /// The value to write into a `state` node: the decimal number, `"4"` for Connected.
    pub const fn as_xenstore(self) -> &'static str {
        match self {
            XenbusState::Unknown => "0",
            XenbusState::Initialising => "1",
            XenbusState::InitWait => "2",
            XenbusState::Initialised => "3",
            XenbusState::Connected => "4",
            XenbusState::Closing => "5",
            XenbusState::Closed => "6",
            XenbusState::Reconfiguring => "7",
            XenbusState::Reconfigured => "8",
        }
    }

    /// Parses the value of a `state` node as read from XenStore: ASCII decimal digits only (no sign, no
    /// blanks; a single trailing NUL, as some readers keep, is accepted). Leading zeros are allowed.
    pub fn from_xenstore(value: &[u8]) -> Result<XenbusState, XenbusError> {
        let digits = value.strip_suffix(b"\0").unwrap_or(value);
        if digits.is_empty() {
            return Err(XenbusError::Empty);
        }
        if digits.len() > 19 {
            return Err(XenbusError::TooLong { len: digits.len() });
        }
        let mut v: u64 = 0;
        for (offset, &byte) in digits.iter().enumerate() {
            if !byte.is_ascii_digit() {
                return Err(XenbusError::NotNumeric { offset, byte });
            }
            // At most 19 digits: fits a u64.
            v = v.wrapping_mul(10).wrapping_add(u64::from(byte - b'0'));
        }
        match u32::try_from(v) {
            Ok(v32) => {
                XenbusState::try_from(v32).map_err(|_| XenbusError::UnknownState { value: v })
            }
            Err(_) => Err(XenbusError::UnknownState { value: v }),
        }
    }

    /// Whether a front end may go from `self` to `next` (see the module documentation). Writing the
    /// current state again is allowed (a no-op).
    pub const fn frontend_can_transition_to(self, next: XenbusState) -> bool {
        use XenbusState::*;
        if self as u32 == next as u32 {
            return true;
        }
        match self {
            Unknown => matches!(next, Initialising),
            Initialising => matches!(next, Initialised | Closing | Closed),
            // A front end never waits in InitWait; tolerate leaving it as from Initialising.
            InitWait => matches!(next, Initialised | Closing | Closed),
            Initialised => matches!(next, Connected | Closing | Closed),
            Connected => matches!(next, Closing | Closed | Reconfiguring | Initialising),
            Closing => matches!(next, Closed),
            Closed => matches!(next, Initialising | Initialised),
            Reconfiguring => matches!(next, Reconfigured | Initialising | Closing | Closed),
            Reconfigured => matches!(next, Connected | Closing | Closed),
        }
    }

    /// Whether a back end may go from `self` to `next` (see the module documentation). Writing the
    /// current state again is allowed (a no-op).
    pub const fn backend_can_transition_to(self, next: XenbusState) -> bool {
        use XenbusState::*;
        if self as u32 == next as u32 {
            return true;
        }
        match self {
            Unknown => matches!(next, Initialising),
            Initialising => matches!(next, InitWait | Initialised | Closing | Closed),
            InitWait => matches!(next, Initialised | Connected | Closing | Closed),
            Initialised => matches!(next, Connected | Closing | Closed),
            Connected => matches!(next, Closing | Closed | Reconfiguring),
            Closing => matches!(next, Closed),
            Closed => matches!(next, Initialising | InitWait),
            Reconfiguring => matches!(next, Reconfigured | Closing | Closed),
            Reconfigured => matches!(next, Connected | Closing | Closed),
        }
    }

    /// Whether `side` may go from `self` to `next`.
    pub const fn can_transition_to(self, side: XenbusSide, next: XenbusState) -> bool {
        match side {
            XenbusSide::Frontend => self.frontend_can_transition_to(next),
            XenbusSide::Backend => self.backend_can_transition_to(next),
        }
    }

    /// [`XenbusState::can_transition_to`] with a typed error naming the side and both states.
    pub fn check_transition(self, side: XenbusSide, next: XenbusState) -> Result<(), XenbusError> {
        if self.can_transition_to(side, next) {
            Ok(())
        } else {
            Err(XenbusError::IllegalTransition {
                side,
                from: self,
                to: next,
            })
        }
    }

    /// Whether the device is being or has been torn down (Closing or Closed), or is gone (Unknown).
    pub const fn is_closing_or_closed(self) -> bool {
        matches!(
            self,
            XenbusState::Closing | XenbusState::Closed | XenbusState::Unknown
        )
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
