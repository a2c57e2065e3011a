//! The back-end framework: what every PV back end needs, generic over four things.
//!
//! - **Guest memory plus grant access** ([`grant`]): a [`GrantAccess`] turns a domain's grant reference
//!   into a page of its memory after checking the v1 grant entry, and keeps the entry marked in use
//!   (`GTF_reading`/`GTF_writing`) while the [`GrantMapping`] lives. [`GrantTableV1`] implements it over a
//!   grant table in shared memory and `vm-memory` guest memory.
//! - **Event channels** ([`event`]): the back end notifies through an [`EventChannel`] and sleeps on a
//!   [`Doorbell`]; [`EventChannels`] binds the port a front end names.
//! - **A XenStore handle** ([`xs`]): [`XsHandle`], implemented over the in-process store by [`LocalXs`].
//! - **The bottom device**: the device modules' own traits (`blk::BlockDevice`).
//!
//! [`xenbus`] drives the back end's side of the XenBus handshake for any [`XenbusDevice`], and [`ring`]
//! maps a shared ring from granted pages.

pub mod event;
pub mod grant;
pub mod ring;
pub mod xenbus;
pub mod xs;

pub use event::{Doorbell, EventChannel, EventChannelError, EventChannels, LocalEventChannels};
pub use grant::{
    GrantAccess, GrantAccessMode, GrantMapError, GrantMapping, GrantRelease, GrantTableV1,
};
pub use ring::{GrantedRing, RingMapError};
pub use xenbus::{FrontendView, HandshakeError, XenbusBackend, XenbusDevice};
pub use xs::{LocalXs, XsError, XsHandle};
