//! The XenStore wire protocol of `io/xs_wire.h`, and the XenStore ring page.
//!
//! Every message in either direction is a 16-byte header ([`XsdSockmsg`]: `type`, `req_id`, `tx_id`,
//! `len`) followed by `len` bytes of payload, at most [`XENSTORE_PAYLOAD_MAX`] (4096). Payloads are
//! usually NUL-terminated strings (`docs/misc/xenstore.txt`). A guest talks to xenstored through one
//! shared page ([`XenstoreDomainInterface`]) holding two 1024-byte byte rings with free-running `u32`
//! indices (`docs/misc/xenstore-ring.txt`).
//!
//! This module offers, all without `unsafe` and without panics on any input:
//!
//! - the header, the message types ([`XsType`], with the raw `XS_*` constants), the errno table
//!   ([`XsErrno`], [`XSD_ERRORS`]) and the ring page, checked against the C headers by the
//!   `conformance` crate;
//! - pure byte-ring index helpers ([`ring_used`], [`output_chunk`], [`copy_from_ring`], ...) that give
//!   a typed error when the peer's indices claim more than [`XENSTORE_RING_SIZE`] bytes;
//! - framing: [`MessageRef::parse`] over a complete byte slice (no allocation) and, with feature `alloc`,
//!   the incremental `FrameParser`, which never buffers more than one header plus 4096 bytes;
//! - serializing into a caller's buffer ([`MessageWriter`], [`encode_error`], [`encode_ok`],
//!   [`encode_watch_event`], ...) or, with `alloc`, into a `Vec` (`OwnedMessage`);
//! - payload parsing per message type ([`Request::parse`], [`WatchEvent::parse`], [`parse_error`]) and
//!   path validation with the rules of C xenstored ([`check_path`], [`resolve_path`]).
//!
//! Errors are one enum, [`XsWireError`]; [`XsWireError::errno`] says which `XS_ERROR` a server should
//! answer, and [`XsWireError::is_fatal`] whether the connection is out of sync and must be dropped.
#![forbid(unsafe_code)]

mod byte_ring;
mod frame;
mod path;
mod payload;

pub use byte_ring::*;
pub use frame::*;
pub use path::*;
pub use payload::*;

use core::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

// ---------------------------------------------------------------------------------------------------
// Message types: `enum xsd_sockmsg_type`.
// ---------------------------------------------------------------------------------------------------

/// `XS_CONTROL` (`enum xsd_sockmsg_type` in `io/xs_wire.h`): a daemon control command.
pub const XS_CONTROL: u32 = 0;
/// `XS_DEBUG`: the old name of [`XS_CONTROL`] (`io/xs_wire.h`).
pub const XS_DEBUG: u32 = XS_CONTROL;
/// `XS_DIRECTORY`: list the children of a node.
pub const XS_DIRECTORY: u32 = 1;
/// `XS_READ`: read the value of a node.
pub const XS_READ: u32 = 2;
/// `XS_GET_PERMS`: read the permissions of a node.
pub const XS_GET_PERMS: u32 = 3;
/// `XS_WATCH`: add a watch.
pub const XS_WATCH: u32 = 4;
/// `XS_UNWATCH`: remove a watch.
pub const XS_UNWATCH: u32 = 5;
/// `XS_TRANSACTION_START`: start a transaction.
pub const XS_TRANSACTION_START: u32 = 6;
/// `XS_TRANSACTION_END`: commit (`T`) or abort (`F`) a transaction.
pub const XS_TRANSACTION_END: u32 = 7;
/// `XS_INTRODUCE`: introduce a domain to xenstored (privileged).
pub const XS_INTRODUCE: u32 = 8;
/// `XS_RELEASE`: make xenstored forget a domain (privileged).
pub const XS_RELEASE: u32 = 9;
/// `XS_GET_DOMAIN_PATH`: the home path of a domain, `/local/domain/<domid>`.
pub const XS_GET_DOMAIN_PATH: u32 = 10;
/// `XS_WRITE`: write the value of a node.
pub const XS_WRITE: u32 = 11;
/// `XS_MKDIR`: create a node.
pub const XS_MKDIR: u32 = 12;
/// `XS_RM`: remove a node and its children.
pub const XS_RM: u32 = 13;
/// `XS_SET_PERMS`: set the permissions of a node.
pub const XS_SET_PERMS: u32 = 14;
/// `XS_WATCH_EVENT`: an unsolicited watch event from the daemon.
pub const XS_WATCH_EVENT: u32 = 15;
/// `XS_ERROR`: an error reply, whose payload is an errno name such as `"ENOENT\0"`.
pub const XS_ERROR: u32 = 16;
/// `XS_IS_DOMAIN_INTRODUCED`: whether xenstored talks to a domain (privileged).
pub const XS_IS_DOMAIN_INTRODUCED: u32 = 17;
/// `XS_RESUME`: re-arm `@releaseDomain` for a domain (privileged).
pub const XS_RESUME: u32 = 18;
/// `XS_SET_TARGET`: let a domain act for another one (privileged).
pub const XS_SET_TARGET: u32 = 19;
/// `XS_RESET_WATCHES`: drop all watches and transactions of the caller. Value 20 (`XS_RESTRICT`) was
/// removed from the protocol and is an unknown type.
pub const XS_RESET_WATCHES: u32 = XS_SET_TARGET + 2;
/// `XS_DIRECTORY_PART`: list the children of a node from a byte offset on.
pub const XS_DIRECTORY_PART: u32 = 22;
/// `XS_TYPE_COUNT`: the number of valid types (one more than the largest).
pub const XS_TYPE_COUNT: u32 = 23;
/// `XS_INVALID`: guaranteed to remain an invalid type.
pub const XS_INVALID: u32 = 0xffff;

/// A XenStore message type (`enum xsd_sockmsg_type` in `io/xs_wire.h`, Xen 4.17).
///
/// Built from the wire with `XsType::try_from(raw)`; values the 4.17 header does not define
/// (`XS_RESTRICT` = 20, [`XS_TYPE_COUNT`] and above, [`XS_INVALID`]) are refused.
#[non_exhaustive]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum XsType {
    /// [`XS_CONTROL`] (also [`XS_DEBUG`]).
    Control = XS_CONTROL,
    /// [`XS_DIRECTORY`].
    Directory = XS_DIRECTORY,
    /// [`XS_READ`].
    Read = XS_READ,
    /// [`XS_GET_PERMS`].
    GetPerms = XS_GET_PERMS,
    /// [`XS_WATCH`].
    Watch = XS_WATCH,
    /// [`XS_UNWATCH`].
    Unwatch = XS_UNWATCH,
    /// [`XS_TRANSACTION_START`].
    TransactionStart = XS_TRANSACTION_START,
    /// [`XS_TRANSACTION_END`].
    TransactionEnd = XS_TRANSACTION_END,
    /// [`XS_INTRODUCE`].
    Introduce = XS_INTRODUCE,
    /// [`XS_RELEASE`].
    Release = XS_RELEASE,
    /// [`XS_GET_DOMAIN_PATH`].
    GetDomainPath = XS_GET_DOMAIN_PATH,
    /// [`XS_WRITE`].
    Write = XS_WRITE,
    /// [`XS_MKDIR`].
    Mkdir = XS_MKDIR,
    /// [`XS_RM`].
    Rm = XS_RM,
    /// [`XS_SET_PERMS`].
    SetPerms = XS_SET_PERMS,
    /// [`XS_WATCH_EVENT`].
    WatchEvent = XS_WATCH_EVENT,
    /// [`XS_ERROR`].
    Error = XS_ERROR,
    /// [`XS_IS_DOMAIN_INTRODUCED`].
    IsDomainIntroduced = XS_IS_DOMAIN_INTRODUCED,
    /// [`XS_RESUME`].
    Resume = XS_RESUME,
    /// [`XS_SET_TARGET`].
    SetTarget = XS_SET_TARGET,
    /// [`XS_RESET_WATCHES`].
    ResetWatches = XS_RESET_WATCHES,
    /// [`XS_DIRECTORY_PART`].
    DirectoryPart = XS_DIRECTORY_PART,
}

impl XsType {
    /// Every type the 4.17 header defines, in wire order.
    pub const ALL: [XsType; 22] = [
        XsType::Control,
        XsType::Directory,
        XsType::Read,
        XsType::GetPerms,
        XsType::Watch,
        XsType::Unwatch,
        XsType::TransactionStart,
        XsType::TransactionEnd,
        XsType::Introduce,
        XsType::Release,
        XsType::GetDomainPath,
        XsType::Write,
        XsType::Mkdir,
        XsType::Rm,
        XsType::SetPerms,
        XsType::WatchEvent,
        XsType::Error,
        XsType::IsDomainIntroduced,
        XsType::Resume,
        XsType::SetTarget,
        XsType::ResetWatches,
        XsType::DirectoryPart,
    ];

    /// The raw wire value.
    pub const fn raw(self) -> u32 {
        self as u32
    }

    /// The name xenstored uses in its logs (`"READ"`, `"WATCH_EVENT"`, ...): the C name without `XS_`.
    pub const fn name(self) -> &'static str {
        match self {
            XsType::Control => "CONTROL",
            XsType::Directory => "DIRECTORY",
            XsType::Read => "READ",
            XsType::GetPerms => "GET_PERMS",
            XsType::Watch => "WATCH",
            XsType::Unwatch => "UNWATCH",
            XsType::TransactionStart => "TRANSACTION_START",
            XsType::TransactionEnd => "TRANSACTION_END",
            XsType::Introduce => "INTRODUCE",
            XsType::Release => "RELEASE",
            XsType::GetDomainPath => "GET_DOMAIN_PATH",
            XsType::Write => "WRITE",
            XsType::Mkdir => "MKDIR",
            XsType::Rm => "RM",
            XsType::SetPerms => "SET_PERMS",
            XsType::WatchEvent => "WATCH_EVENT",
            XsType::Error => "ERROR",
            XsType::IsDomainIntroduced => "IS_DOMAIN_INTRODUCED",
            XsType::Resume => "RESUME",
            XsType::SetTarget => "SET_TARGET",
            XsType::ResetWatches => "RESET_WATCHES",
            XsType::DirectoryPart => "DIRECTORY_PART",
        }
    }

    /// Whether a client may send this type as a request. `WATCH_EVENT` and `ERROR` only travel from the
    /// daemon to the client; C xenstored answers `ENOSYS` when a client sends them.
    pub const fn is_request(self) -> bool {
        !matches!(self, XsType::WatchEvent | XsType::Error)
    }

    /// Whether C xenstored reserves this type to privileged domains (`XS_FLAG_PRIV` in
    /// `xenstored_core.c`): CONTROL, INTRODUCE, RELEASE, IS_DOMAIN_INTRODUCED, RESUME, SET_TARGET.
    pub const fn is_privileged(self) -> bool {
        matches!(
            self,
            XsType::Control
                | XsType::Introduce
                | XsType::Release
                | XsType::IsDomainIntroduced
                | XsType::Resume
                | XsType::SetTarget
        )
    }
}

impl TryFrom<u32> for XsType {
    type Error = XsWireError;

    fn try_from(raw: u32) -> Result<Self, XsWireError> {
        Ok(match raw {
            XS_CONTROL => XsType::Control,
            XS_DIRECTORY => XsType::Directory,
            XS_READ => XsType::Read,
            XS_GET_PERMS => XsType::GetPerms,
            XS_WATCH => XsType::Watch,
            XS_UNWATCH => XsType::Unwatch,
            XS_TRANSACTION_START => XsType::TransactionStart,
            XS_TRANSACTION_END => XsType::TransactionEnd,
            XS_INTRODUCE => XsType::Introduce,
            XS_RELEASE => XsType::Release,
            XS_GET_DOMAIN_PATH => XsType::GetDomainPath,
            XS_WRITE => XsType::Write,
            XS_MKDIR => XsType::Mkdir,
            XS_RM => XsType::Rm,
            XS_SET_PERMS => XsType::SetPerms,
            XS_WATCH_EVENT => XsType::WatchEvent,
            XS_ERROR => XsType::Error,
            XS_IS_DOMAIN_INTRODUCED => XsType::IsDomainIntroduced,
            XS_RESUME => XsType::Resume,
            XS_SET_TARGET => XsType::SetTarget,
            XS_RESET_WATCHES => XsType::ResetWatches,
            XS_DIRECTORY_PART => XsType::DirectoryPart,
            other => return Err(XsWireError::UnknownType { msg_type: other }),
        })
    }
}

impl From<XsType> for u32 {
    fn from(t: XsType) -> u32 {
        t.raw()
    }
}

impl fmt::Display for XsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------------
// `XS_WRITE_*`, watch event fields.
// ---------------------------------------------------------------------------------------------------

/// `XS_WRITE_NONE` (`io/xs_wire.h`): a legacy write flag string, unused by the current protocol.
pub const XS_WRITE_NONE: &str = "NONE";
/// `XS_WRITE_CREATE` (`io/xs_wire.h`): a legacy write flag string.
pub const XS_WRITE_CREATE: &str = "CREATE";
/// `XS_WRITE_CREATE_EXCL` (`io/xs_wire.h`): a legacy write flag string.
pub const XS_WRITE_CREATE_EXCL: &str = "CREATE|EXCL";

/// `XS_WATCH_PATH` (`enum xs_watch_type` in `io/xs_wire.h`): the index of the path among the strings of
/// a `WATCH_EVENT` payload.
pub const XS_WATCH_PATH: usize = 0;
/// `XS_WATCH_TOKEN` (`enum xs_watch_type`): the index of the token among the strings of a `WATCH_EVENT`.
pub const XS_WATCH_TOKEN: usize = 1;

// ---------------------------------------------------------------------------------------------------
// Errors as strings: `struct xsd_errors xsd_errors[]`.
// ---------------------------------------------------------------------------------------------------

/// An errno that travels in an `XS_ERROR` payload, by name (`xsd_errors[]` in `io/xs_wire.h`).
///
/// The discriminants are the Linux errno numbers, which is what `xsd_errors[]` holds when the header is
/// compiled on Linux (the table is `{ EINVAL, "EINVAL" }`...; the wire only carries the name).
#[allow(clippy::upper_case_acronyms)]
#[non_exhaustive]
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XsErrno {
    /// Invalid argument (the first entry: xenstored falls back to it for untranslatable errors).
    EINVAL = 22,
    /// Permission denied.
    EACCES = 13,
    /// The node exists.
    EEXIST = 17,
    /// Is a directory.
    EISDIR = 21,
    /// No such node.
    ENOENT = 2,
    /// Out of memory.
    ENOMEM = 12,
    /// No space left (a quota is exhausted).
    ENOSPC = 28,
    /// I/O error.
    EIO = 5,
    /// Directory not empty.
    ENOTEMPTY = 39,
    /// Function not implemented (unknown message type).
    ENOSYS = 38,
    /// Read-only.
    EROFS = 30,
    /// Busy.
    EBUSY = 16,
    /// Try again (a transaction conflicted).
    EAGAIN = 11,
    /// Already connected.
    EISCONN = 106,
    /// Argument list too long.
    E2BIG = 7,
    /// Operation not permitted.
    EPERM = 1,
}

/// One entry of [`XSD_ERRORS`]: `struct xsd_errors` in `io/xs_wire.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XsdErrors {
    /// The errno number (Linux numbering).
    pub errnum: i32,
    /// The name sent on the wire, without the NUL.
    pub errstring: &'static str,
}

/// `xsd_errors[]` of `io/xs_wire.h`, in the header's order (new errors are only ever appended).
pub const XSD_ERRORS: [XsdErrors; 16] = {
    let mut table = [XsdErrors {
        errnum: 0,
        errstring: "",
    }; 16];
    let mut i = 0;
    while i < XsErrno::ALL.len() {
        table[i] = XsdErrors {
            errnum: XsErrno::ALL[i].errnum(),
            errstring: XsErrno::ALL[i].name(),
        };
        i += 1;
    }
    table
};

impl XsErrno {
    /// Every errno of `xsd_errors[]`, in the header's order.
    pub const ALL: [XsErrno; 16] = [
        XsErrno::EINVAL,
        XsErrno::EACCES,
        XsErrno::EEXIST,
        XsErrno::EISDIR,
        XsErrno::ENOENT,
        XsErrno::ENOMEM,
        XsErrno::ENOSPC,
        XsErrno::EIO,
        XsErrno::ENOTEMPTY,
        XsErrno::ENOSYS,
        XsErrno::EROFS,
        XsErrno::EBUSY,
        XsErrno::EAGAIN,
        XsErrno::EISCONN,
        XsErrno::E2BIG,
        XsErrno::EPERM,
    ];

    /// The errno number (Linux numbering).
    pub const fn errnum(self) -> i32 {
        self as i32
    }

    /// The name sent on the wire (`"ENOENT"`), without the NUL.
    pub const fn name(self) -> &'static str {
        match self {
            XsErrno::EINVAL => "EINVAL",
            XsErrno::EACCES => "EACCES",
            XsErrno::EEXIST => "EEXIST",
            XsErrno::EISDIR => "EISDIR",
            XsErrno::ENOENT => "ENOENT",
            XsErrno::ENOMEM => "ENOMEM",
            XsErrno::ENOSPC => "ENOSPC",
            XsErrno::EIO => "EIO",
            XsErrno::ENOTEMPTY => "ENOTEMPTY",
            XsErrno::ENOSYS => "ENOSYS",
            XsErrno::EROFS => "EROFS",
            XsErrno::EBUSY => "EBUSY",
            XsErrno::EAGAIN => "EAGAIN",
            XsErrno::EISCONN => "EISCONN",
            XsErrno::E2BIG => "E2BIG",
            XsErrno::EPERM => "EPERM",
        }
    }

    /// The errno with this number, if `xsd_errors[]` has it.
    pub fn from_errnum(errnum: i32) -> Option<XsErrno> {
        XsErrno::ALL.into_iter().find(|e| e.errnum() == errnum)
    }

    /// The errno with this wire name (without the NUL), if `xsd_errors[]` has it. Case-sensitive.
    pub fn from_name(name: &[u8]) -> Option<XsErrno> {
        XsErrno::ALL
            .into_iter()
            .find(|e| e.name().as_bytes() == name)
    }

    /// The errno number for a server to send: xenstored's `send_error` translates any number that
    /// `xsd_errors[]` lacks to `EINVAL`.
    pub fn from_errnum_or_einval(errnum: i32) -> XsErrno {
        XsErrno::from_errnum(errnum).unwrap_or(XsErrno::EINVAL)
    }
}

impl TryFrom<i32> for XsErrno {
    type Error = XsWireError;

    fn try_from(errnum: i32) -> Result<Self, XsWireError> {
        XsErrno::from_errnum(errnum).ok_or(XsWireError::UnknownErrno { errnum })
    }
}

impl fmt::Display for XsErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------------------------------
// The header.
// ---------------------------------------------------------------------------------------------------

/// The header of every XenStore message: `struct xsd_sockmsg` in `io/xs_wire.h`.
///
/// It is followed by `len` bytes of payload, at most [`XENSTORE_PAYLOAD_MAX`]. The fields are in native
/// byte order (both ends of a XenStore connection run on the same machine).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XsdSockmsg {
    /// The message type: one of the `XS_*` constants ([`XsType`]).
    pub r#type: u32,
    /// Request identifier, echoed in the daemon's response.
    pub req_id: u32,
    /// Transaction id (0 if not related to a transaction).
    pub tx_id: u32,
    /// Length of the payload that follows the header.
    pub len: u32,
}

/// The size of [`XsdSockmsg`]: 16 bytes.
pub const XSD_SOCKMSG_SIZE: usize = size_of::<XsdSockmsg>();

impl XsdSockmsg {
    /// A header from its four fields.
    pub const fn new(msg_type: XsType, req_id: u32, tx_id: u32, len: u32) -> Self {
        Self {
            r#type: msg_type.raw(),
            req_id,
            tx_id,
            len,
        }
    }

    /// The typed message type, or [`XsWireError::UnknownMessageType`] carrying `req_id` and `tx_id` so
    /// that a server can still answer the request (C xenstored answers `ENOSYS`).
    pub fn msg_type(&self) -> Result<XsType, XsWireError> {
        XsType::try_from(self.r#type).map_err(|_| XsWireError::UnknownMessageType {
            msg_type: self.r#type,
            req_id: self.req_id,
            tx_id: self.tx_id,
            len: self.len,
        })
    }

    /// Checks the header as xenstored's `handle_input` does: `len` above [`XENSTORE_PAYLOAD_MAX`] is
    /// fatal ([`XsWireError::PayloadTooLong`]); then the type must be known.
    pub fn validate(&self) -> Result<XsType, XsWireError> {
        if self.len > XENSTORE_PAYLOAD_MAX {
            return Err(XsWireError::PayloadTooLong { len: self.len });
        }
        self.msg_type()
    }
}

// ---------------------------------------------------------------------------------------------------
// Limits.
// ---------------------------------------------------------------------------------------------------

/// `XENSTORE_PAYLOAD_MAX` (`io/xs_wire.h`): the largest payload in either direction. A client that
/// exceeds it has its connection killed by xenstored.
pub const XENSTORE_PAYLOAD_MAX: u32 = 4096;
/// `XENSTORE_ABS_PATH_MAX` (`io/xs_wire.h`): the longest absolute path, in bytes, without the NUL.
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX` (`io/xs_wire.h`): the longest relative path, in bytes, without the NUL.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;

/// The largest message: a header and [`XENSTORE_PAYLOAD_MAX`] bytes of payload.
pub const XS_MESSAGE_MAX: usize = XSD_SOCKMSG_SIZE + XENSTORE_PAYLOAD_MAX as usize;

// ---------------------------------------------------------------------------------------------------
// The ring page.
// ---------------------------------------------------------------------------------------------------

/// `XENSTORE_RING_SIZE` (`io/xs_wire.h`): the size of each byte ring of the XenStore page.
pub const XENSTORE_RING_SIZE: u32 = 1024;

/// `XENSTORE_RING_IDX` (`io/xs_wire.h`): a free-running byte index into a XenStore ring.
pub type XenstoreRingIdx = u32;

/// `MASK_XENSTORE_IDX(idx)` (`io/xs_wire.h`): the offset in the ring of the byte at stream index `idx`.
pub const fn mask_xenstore_idx(idx: XenstoreRingIdx) -> u32 {
    idx & (XENSTORE_RING_SIZE - 1)
}

/// The XenStore page shared by a guest and xenstored: `struct xenstore_domain_interface` in
/// `io/xs_wire.h` (layout in `docs/misc/xenstore-ring.txt`).
///
/// Everything in it is written by the other side at any time: copy an index once, check it with the
/// byte-ring helpers ([`ring_used`]), and never read it twice.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenstoreDomainInterface {
    /// Requests to the xenstore daemon.
    pub req: [u8; XENSTORE_RING_SIZE as usize],
    /// Replies and asynchronous watch events.
    pub rsp: [u8; XENSTORE_RING_SIZE as usize],
    /// The daemon's consumer index into `req`.
    pub req_cons: XenstoreRingIdx,
    /// The guest's producer index into `req`.
    pub req_prod: XenstoreRingIdx,
    /// The guest's consumer index into `rsp`.
    pub rsp_cons: XenstoreRingIdx,
    /// The daemon's producer index into `rsp`.
    pub rsp_prod: XenstoreRingIdx,
    /// Bitmap of the features the server supports (`XENSTORE_SERVER_FEATURE_*`).
    pub server_features: u32,
    /// [`XENSTORE_CONNECTED`] or [`XENSTORE_RECONNECT`].
    pub connection: u32,
    /// `XENSTORE_ERROR_*`: why the server stopped talking, if it did.
    pub error: u32,
}

/// `XENSTORE_SERVER_FEATURE_RECONNECTION` (`io/xs_wire.h`): the ring can be reset via `connection`.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `XENSTORE_SERVER_FEATURE_ERROR` (`io/xs_wire.h`): the `error` field of the page is valid.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;

bitflags::bitflags! {
    /// The `server_features` bitmap of [`XenstoreDomainInterface`] (`XENSTORE_SERVER_FEATURE_*` in
    /// `io/xs_wire.h`). Unknown bits are kept: a guest must ignore them.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct XenstoreServerFeatures: u32 {
        /// [`XENSTORE_SERVER_FEATURE_RECONNECTION`].
        const RECONNECTION = XENSTORE_SERVER_FEATURE_RECONNECTION;
        /// [`XENSTORE_SERVER_FEATURE_ERROR`].
        const ERROR = XENSTORE_SERVER_FEATURE_ERROR;
        // docs/misc/xenstore-ring.txt also names bit 2 (WATCH with a depth), which the 4.17 header
        // does not define; unknown bits are retained by `from_bits_retain`.
        const _ = !0;
    }
}

/// `XENSTORE_CONNECTED` (`io/xs_wire.h`): the steady state of `connection`.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `XENSTORE_RECONNECT` (`io/xs_wire.h`): the guest asked for a reconnection, in progress.
pub const XENSTORE_RECONNECT: u32 = 1;

/// `XENSTORE_ERROR_NONE` (`io/xs_wire.h`): no error.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `XENSTORE_ERROR_COMM` (`io/xs_wire.h`): communication problem (event channel not functional).
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `XENSTORE_ERROR_RINGIDX` (`io/xs_wire.h`): inconsistent producer or consumer index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `XENSTORE_ERROR_PROTO` (`io/xs_wire.h`): protocol violation (payload too long).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

// ---------------------------------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------------------------------

/// Everything that can be wrong with XenStore bytes, indices, payloads or paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum XsWireError {
    /// A header's `len` is above [`XENSTORE_PAYLOAD_MAX`]. Fatal: xenstored drops the connection.
    #[error("header len {len} is above XENSTORE_PAYLOAD_MAX (4096)")]
    PayloadTooLong {
        /// The `len` of the header.
        len: u32,
    },
    /// A raw value that is not a message type of the 4.17 header.
    #[error("message type {msg_type} is not a type of xs_wire.h (types are 0..=22 except 20)")]
    UnknownType {
        /// The raw type.
        msg_type: u32,
    },
    /// A complete message with an unknown type: the stream is still in sync and the server should
    /// answer an `XS_ERROR` (C xenstored sends `ENOSYS`) with the same `req_id` and `tx_id`.
    #[error("message type {msg_type} (req_id {req_id}, tx_id {tx_id}) is not a type of xs_wire.h")]
    UnknownMessageType {
        /// The raw type.
        msg_type: u32,
        /// The request id to echo.
        req_id: u32,
        /// The transaction id to echo.
        tx_id: u32,
        /// The payload length: the message takes `16 + len` bytes.
        len: u32,
    },
    /// A message of a type that only the daemon sends (`WATCH_EVENT`, `ERROR`) was received as a
    /// request; C xenstored answers `ENOSYS`.
    #[error("message type {msg_type} is not a request")]
    NotARequest {
        /// The type.
        msg_type: XsType,
    },
    /// An errno number that `xsd_errors[]` lacks.
    #[error("errno {errnum} is not in xsd_errors[]")]
    UnknownErrno {
        /// The number.
        errnum: i32,
    },
    /// An `XS_ERROR` payload whose name is not in `xsd_errors[]`.
    #[error(
        "XS_ERROR payload of {len} bytes is not an errno name of xsd_errors[] followed by a NUL"
    )]
    UnknownErrorName {
        /// The payload length.
        len: usize,
    },
    /// A byte slice too short for the header and payload it announces.
    #[error("message is truncated: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the message needs.
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// The caller's output buffer cannot hold the message.
    #[error("output buffer of {available} bytes is too small: {needed} bytes needed")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// A payload being serialized would exceed [`XENSTORE_PAYLOAD_MAX`].
    #[error("payload of {len} bytes would exceed XENSTORE_PAYLOAD_MAX (4096)")]
    PayloadTooLarge {
        /// The length the payload would have.
        len: usize,
    },
    /// A string being serialized contains a NUL byte, which would split it in two.
    #[error("string to serialize has a NUL byte at offset {offset}")]
    InteriorNul {
        /// Offset of the NUL in the string.
        offset: usize,
    },
    /// The parser already met a fatal error; the connection must be dropped.
    #[error(
        "the XenStore stream is out of sync after a fatal error ({len} was announced as a length)"
    )]
    StreamBroken {
        /// The `len` of the header that broke the stream.
        len: u32,
    },
    /// Ring indices claiming more unconsumed bytes than the ring holds (a hostile or corrupt peer).
    #[error("ring indices prod {prod} - cons {cons} = {used} exceed the ring size {size}")]
    RingIndexOverflow {
        /// The consumer index.
        cons: u32,
        /// The producer index.
        prod: u32,
        /// `prod - cons`, wrapping.
        used: u32,
        /// The ring size.
        size: u32,
    },
    /// An argument that the protocol needs NUL-terminated is not.
    #[error("{msg_type} payload: argument {arg} has no NUL terminator")]
    MissingNul {
        /// The message type.
        msg_type: XsType,
        /// The index of the argument (0 is the first).
        arg: usize,
    },
    /// A payload with fewer or more NUL-terminated strings than its type takes.
    #[error("{msg_type} payload has {found} NUL-terminated strings, expected {expected}")]
    WrongArgCount {
        /// The message type.
        msg_type: XsType,
        /// What the type takes, e.g. `"exactly 1"`.
        expected: &'static str,
        /// How many there are.
        found: usize,
    },
    /// An argument with the right framing but a wrong value (a non-numeric domid, `TRANSACTION_END`
    /// other than `T` or `F`, a permission string that does not start with `w`, `r`, `b` or `n`...).
    #[error("{msg_type} payload: argument {arg} is malformed ({what})")]
    InvalidArgument {
        /// The message type.
        msg_type: XsType,
        /// The index of the argument.
        arg: usize,
        /// What was expected.
        what: &'static str,
    },
    /// An empty path, or a special path with nothing after the `@`.
    #[error("empty path (or a lone '@')")]
    EmptyPath,
    /// A path byte outside `[A-Za-z0-9-/_@]`.
    #[error("path byte {byte:#04x} at offset {offset} is not allowed (only A-Z a-z 0-9 - / _ @)")]
    PathInvalidChar {
        /// Offset of the byte.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// `//` in a path.
    #[error("path has an empty component (\"//\") at offset {offset}")]
    PathDoubleSlash {
        /// Offset of the second slash.
        offset: usize,
    },
    /// A trailing `/` on a path other than `/`.
    #[error("path of {len} bytes ends in '/' (only \"/\" may)")]
    PathTrailingSlash {
        /// The path length.
        len: usize,
    },
    /// An absolute path longer than [`XENSTORE_ABS_PATH_MAX`].
    #[error("absolute path of {len} bytes is longer than XENSTORE_ABS_PATH_MAX (3072)")]
    AbsPathTooLong {
        /// The path length, without NUL.
        len: usize,
    },
    /// A relative path longer than [`XENSTORE_REL_PATH_MAX`].
    #[error("relative path of {len} bytes is longer than XENSTORE_REL_PATH_MAX (2048)")]
    RelPathTooLong {
        /// The path length, without NUL.
        len: usize,
    },
    /// An absolute path that C xenstored refuses: after a leading `/local/domain/<domid>/`, if any, more
    /// than [`XENSTORE_REL_PATH_MAX`] bytes remain.
    #[error(
        "path of {len} bytes has {counted} bytes after its /local/domain/<domid>/ prefix, above 2048"
    )]
    PathTooLong {
        /// The whole path length.
        len: usize,
        /// The length xenstored counts.
        counted: usize,
    },
    /// A relative path where only an absolute one may be used.
    #[error("relative path of {len} bytes where an absolute path is required")]
    RelativePathNotAllowed {
        /// The path length.
        len: usize,
    },
    /// A special `@` path where only a node path may be used.
    #[error("special path ('@...', {len} bytes) where a node path is required")]
    SpecialPathNotAllowed {
        /// The path length.
        len: usize,
    },
}

impl XsWireError {
    /// The errno a server answers in `XS_ERROR` for this error, as C xenstored does: `ENOSYS` for an
    /// unknown type or a daemon-only type, `E2BIG` for an oversized payload, `ENOMEM` for a buffer
    /// that is too small, `EINVAL` for everything else.
    pub const fn errno(&self) -> XsErrno {
        match self {
            XsWireError::UnknownType { .. }
            | XsWireError::UnknownMessageType { .. }
            | XsWireError::NotARequest { .. } => XsErrno::ENOSYS,
            XsWireError::PayloadTooLong { .. } | XsWireError::PayloadTooLarge { .. } => {
                XsErrno::E2BIG
            }
            XsWireError::BufferTooSmall { .. } => XsErrno::ENOMEM,
            _ => XsErrno::EINVAL,
        }
    }

    /// Whether the connection is out of sync and must be closed (xenstored's `ignore_connection`):
    /// an oversized `len`, or anything after it, or corrupt ring indices (`XENSTORE_ERROR_RINGIDX`).
    pub const fn is_fatal(&self) -> bool {
        matches!(
            self,
            XsWireError::PayloadTooLong { .. }
                | XsWireError::StreamBroken { .. }
                | XsWireError::RingIndexOverflow { .. }
        )
    }
}
