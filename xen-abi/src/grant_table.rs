//! Grant tables: `grant_table.h`.
//!
//! A domain *grants* another domain access to one of its page frames by filling an entry of its grant
//! table; the grantee names the entry by its index, the grant reference ([`GrantRef`]), when it asks the
//! hypervisor to map or copy the page (`GNTTABOP_map_grant_ref`, `GNTTABOP_copy`, ...).
//!
//! This module has:
//!
//! - the table entries: version 1 ([`GrantEntryV1`]) and version 2 ([`GrantEntryV2`] with its
//!   [`GrantEntryV2FullPage`], [`GrantEntryV2SubPage`] and [`GrantEntryV2Transitive`] views, and
//!   [`GrantStatus`]), the `GTF_*` flags ([`GrantFlags`], [`GrantType`]);
//! - the `GNTTABOP_*` hypercall numbers and every argument structure (`struct gnttab_*`), the `GNTMAP_*` and
//!   `GNTCOPY_*` flags and the `GNTST_*` status codes ([`GnttabStatus`]);
//! - validation of a *copied* entry, as the hypervisor or a back end must do before touching a granted
//!   page: [`GrantEntryV1::check_access`], [`check_ref`] and [`GnttabCopy::check_segments`];
//! - the `GTF_reading`/`GTF_writing` status-bit protocol of version 1 as pure functions on copied values
//!   ([`GrantEntryHeader::begin_map`], [`GrantEntryHeader::end_map`], [`GrantEntryHeader::revoke`]), to be
//!   applied with a compare-exchange on the live entry.
//!
//! Layouts are those of x86_64: a `XEN_GUEST_HANDLE` is a pointer-sized `u64`, `xen_pfn_t` is a `u64`.
#![forbid(unsafe_code)]
#![allow(non_upper_case_globals)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{DomId, XEN_PAGE_SIZE};

/// A reference to an entry of a domain's grant table (`grant_ref_t` in `grant_table.h`).
pub type GrantRef = u32;

/// The handle of a grant mapping, returned by `GNTTABOP_map_grant_ref` (`grant_handle_t` in
/// `grant_table.h`).
pub type GrantHandle = u32;

/// A version 2 status entry, which holds `GTF_reading` and `GTF_writing` (`grant_status_t` in
/// `grant_table.h`).
pub type GrantStatus = u16;

// ---------------------------------------------------------------------------------------------------------
// Table entries
// ---------------------------------------------------------------------------------------------------------

/// A version 1 grant table entry (`struct grant_entry_v1` in `grant_table.h`).
///
/// The granting guest writes `domid` and `frame`, then (after a write barrier) `flags`; the hypervisor
/// sets `GTF_reading`/`GTF_writing` in `flags` while the grant is mapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GrantEntryV1 {
    /// `GTF_*`: the type and flags of the entry. Written by the guest and by Xen.
    pub flags: u16,
    /// The domain being granted foreign privileges. Written by the guest.
    pub domid: DomId,
    /// For `GTF_permit_access`, the frame the grantee may map and access; for `GTF_accept_transfer`, the
    /// frame it may transfer into (or, once `GTF_transfer_completed` is set, the transferred frame).
    pub frame: u32,
}

/// The header shared by every version 2 entry, and the first four bytes of a version 1 entry
/// (`struct grant_entry_header` in `grant_table.h`).
///
/// Xen updates `flags` and checks `domid` together, as one 32-bit word ([`GrantEntryHeader::to_word`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GrantEntryHeader {
    /// `GTF_*`: the type and flags of the entry.
    pub flags: u16,
    /// The domain being granted foreign privileges.
    pub domid: DomId,
}

/// A version 2 grant table entry (`union grant_entry_v2` in `grant_table.h`): 16 bytes, read through one
/// of its views according to the type in `hdr.flags`.
///
/// The C union has four members; this type holds the header and the raw bytes after it, and converts to
/// and from each view by value ([`full_page`](Self::full_page), [`from_full_page`](Self::from_full_page),
/// ...).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GrantEntryV2 {
    /// The header (`hdr`), common to every view.
    pub hdr: GrantEntryHeader,
    body: [u8; 12],
}

/// The `full_page` view of a [`GrantEntryV2`]: a whole-page grant, for `GTF_accept_transfer`, or
/// `GTF_permit_access` without `GTF_sub_page` (`union grant_entry_v2.full_page` in `grant_table.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GrantEntryV2FullPage {
    /// The header.
    pub hdr: GrantEntryHeader,
    /// Unused (`pad0`).
    pub pad0: u32,
    /// The frame, with the meaning of [`GrantEntryV1::frame`].
    pub frame: u64,
}

/// The `sub_page` view of a [`GrantEntryV2`]: `GTF_permit_access` with `GTF_sub_page`, which lets the
/// grantee copy bytes `[page_off, page_off + length)` of `frame`, never map it (`union
/// grant_entry_v2.sub_page` in `grant_table.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GrantEntryV2SubPage {
    /// The header.
    pub hdr: GrantEntryHeader,
    /// The first byte granted.
    pub page_off: u16,
    /// The number of bytes granted.
    pub length: u16,
    /// The frame.
    pub frame: u64,
}

/// The `transitive` view of a [`GrantEntryV2`]: `GTF_transitive`, which lets the grantee use grant `gref`
/// of domain `trans_domid` as if it were the granter (`union grant_entry_v2.transitive` in
/// `grant_table.h`). Transitive grants cannot be mapped.
///
/// The C struct is 12 bytes; this view has the union's last 4 bytes too (`_pad1`), so that it converts
/// to and from the 16-byte entry by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GrantEntryV2Transitive {
    /// The header.
    pub hdr: GrantEntryHeader,
    /// The domain whose grant is used.
    pub trans_domid: DomId,
    /// Unused (`pad0`).
    pub pad0: u16,
    /// The grant of `trans_domid` that is used.
    pub gref: GrantRef,
    _pad1: [u8; 4],
}

impl GrantEntryV2 {
    /// The `full_page` view.
    pub fn full_page(&self) -> GrantEntryV2FullPage {
        zerocopy::transmute!(*self)
    }

    /// The `sub_page` view.
    pub fn sub_page(&self) -> GrantEntryV2SubPage {
        zerocopy::transmute!(*self)
    }

    /// The `transitive` view.
    pub fn transitive(&self) -> GrantEntryV2Transitive {
        zerocopy::transmute!(*self)
    }

    /// An entry written through the `full_page` view.
    pub fn from_full_page(view: GrantEntryV2FullPage) -> Self {
        zerocopy::transmute!(view)
    }

    /// An entry written through the `sub_page` view.
    pub fn from_sub_page(view: GrantEntryV2SubPage) -> Self {
        zerocopy::transmute!(view)
    }

    /// An entry written through the `transitive` view; the 4 bytes after the C struct are zero.
    pub fn from_transitive(view: GrantEntryV2Transitive) -> Self {
        let view = GrantEntryV2Transitive {
            _pad1: [0; 4],
            ..view
        };
        zerocopy::transmute!(view)
    }
}

impl GrantEntryV2Transitive {
    /// A transitive view with its trailing bytes zeroed.
    pub fn new(hdr: GrantEntryHeader, trans_domid: DomId, gref: GrantRef) -> Self {
        Self {
            hdr,
            trans_domid,
            pad0: 0,
            gref,
            _pad1: [0; 4],
        }
    }
}

/// Reserved entries, preserved across version changes and possibly filled by the toolstack at domain
/// creation (`GNTTAB_NR_RESERVED_ENTRIES` in `grant_table.h`).
pub const GNTTAB_NR_RESERVED_ENTRIES: GrantRef = 8;
/// The reserved entry that grants the console ring to the console back end (`GNTTAB_RESERVED_CONSOLE`).
pub const GNTTAB_RESERVED_CONSOLE: GrantRef = 0;
/// The reserved entry that grants the XenStore ring to xenstored (`GNTTAB_RESERVED_XENSTORE`).
pub const GNTTAB_RESERVED_XENSTORE: GrantRef = 1;

/// Entry type: grants no privileges (`GTF_invalid` in `grant_table.h`).
pub const GTF_invalid: u16 = 0;
/// Entry type: `domid` may map and access `frame` (`GTF_permit_access`).
pub const GTF_permit_access: u16 = 1;
/// Entry type: `domid` may transfer one frame to this guest (`GTF_accept_transfer`).
pub const GTF_accept_transfer: u16 = 2;
/// Entry type (version 2 only): `domid` may use another domain's grant (`GTF_transitive`).
pub const GTF_transitive: u16 = 3;
/// The bits of `flags` that hold the entry type (`GTF_type_mask`).
pub const GTF_type_mask: u16 = 3;

/// Bit number of [`GTF_readonly`] (`_GTF_readonly`).
pub const _GTF_readonly: u16 = 2;
/// Restricts `domid` to read-only mappings and accesses; set by the guest (`GTF_readonly`).
pub const GTF_readonly: u16 = 1 << _GTF_readonly;
/// Bit number of [`GTF_reading`] (`_GTF_reading`).
pub const _GTF_reading: u16 = 3;
/// The entry is mapped (for reading at least) by `domid`; set by Xen (`GTF_reading`).
pub const GTF_reading: u16 = 1 << _GTF_reading;
/// Bit number of [`GTF_writing`] (`_GTF_writing`).
pub const _GTF_writing: u16 = 4;
/// The entry is mapped for writing by `domid`; set by Xen (`GTF_writing`).
pub const GTF_writing: u16 = 1 << _GTF_writing;
/// Bit number of [`GTF_PWT`] (`_GTF_PWT`).
pub const _GTF_PWT: u16 = 5;
/// x86 cache attribute for mappings of the grant: write-through (`GTF_PWT`).
pub const GTF_PWT: u16 = 1 << _GTF_PWT;
/// Bit number of [`GTF_PCD`] (`_GTF_PCD`).
pub const _GTF_PCD: u16 = 6;
/// x86 cache attribute for mappings of the grant: cache disable (`GTF_PCD`).
pub const GTF_PCD: u16 = 1 << _GTF_PCD;
/// Bit number of [`GTF_PAT`] (`_GTF_PAT`).
pub const _GTF_PAT: u16 = 7;
/// x86 cache attribute for mappings of the grant: PAT (`GTF_PAT`).
pub const GTF_PAT: u16 = 1 << _GTF_PAT;
/// Bit number of [`GTF_sub_page`] (`_GTF_sub_page`).
pub const _GTF_sub_page: u16 = 8;
/// Version 2 only: grants a sub-range of the page, to copy from, never to map (`GTF_sub_page`).
pub const GTF_sub_page: u16 = 1 << _GTF_sub_page;
/// Bit number of [`GTF_transfer_committed`] (`_GTF_transfer_committed`).
pub const _GTF_transfer_committed: u16 = 2;
/// For `GTF_accept_transfer`: Xen is committed to the transfer; the guest must not touch the entry until
/// `GTF_transfer_completed` (`GTF_transfer_committed`).
pub const GTF_transfer_committed: u16 = 1 << _GTF_transfer_committed;
/// Bit number of [`GTF_transfer_completed`] (`_GTF_transfer_completed`).
pub const _GTF_transfer_completed: u16 = 3;
/// For `GTF_accept_transfer`: the transferred frame has been written to `frame`
/// (`GTF_transfer_completed`).
pub const GTF_transfer_completed: u16 = 1 << _GTF_transfer_completed;

/// The type of a grant entry, from the `GTF_type_mask` bits of its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrantType {
    /// [`GTF_invalid`].
    Invalid,
    /// [`GTF_permit_access`].
    PermitAccess,
    /// [`GTF_accept_transfer`].
    AcceptTransfer,
    /// [`GTF_transitive`] (version 2 only).
    Transitive,
}

impl GrantType {
    /// The type held in `flags` (every value of the two type bits is a type, so this cannot fail).
    pub const fn from_flags(flags: u16) -> Self {
        match flags & GTF_type_mask {
            GTF_invalid => Self::Invalid,
            GTF_permit_access => Self::PermitAccess,
            GTF_accept_transfer => Self::AcceptTransfer,
            _ => Self::Transitive,
        }
    }

    /// The `GTF_*` value of the type.
    pub const fn bits(self) -> u16 {
        match self {
            Self::Invalid => GTF_invalid,
            Self::PermitAccess => GTF_permit_access,
            Self::AcceptTransfer => GTF_accept_transfer,
            Self::Transitive => GTF_transitive,
        }
    }
}

bitflags::bitflags! {
    /// The sub-flags of a `GTF_permit_access` or `GTF_transitive` entry (`GTF_*` in `grant_table.h`);
    /// the type bits are [`GrantType`], and the `GTF_accept_transfer` sub-flags (which reuse bits 2 and
    /// 3) are the constants [`GTF_transfer_committed`] and [`GTF_transfer_completed`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct GrantFlags: u16 {
        /// [`GTF_readonly`].
        const READONLY = GTF_readonly;
        /// [`GTF_reading`].
        const READING = GTF_reading;
        /// [`GTF_writing`].
        const WRITING = GTF_writing;
        /// [`GTF_PWT`].
        const PWT = GTF_PWT;
        /// [`GTF_PCD`].
        const PCD = GTF_PCD;
        /// [`GTF_PAT`].
        const PAT = GTF_PAT;
        /// [`GTF_sub_page`].
        const SUB_PAGE = GTF_sub_page;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Validation and the status-bit protocol
// ---------------------------------------------------------------------------------------------------------

/// Errors of the `grant_table` module: a grant entry, reference or copy request that a back end or the
/// hypervisor must refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// The grant reference is not an entry of the table.
    #[error(
        "grant ref {gref} is outside the grant table ({nr_entries} entries, gref must be < {nr_entries})"
    )]
    BadRef {
        /// The reference.
        gref: GrantRef,
        /// The number of entries in the table.
        nr_entries: u32,
    },
    /// The entry's type does not permit access: `GTF_invalid` or `GTF_accept_transfer`.
    #[error("grant entry has type {kind} (flags {flags:#06x}), not GTF_permit_access")]
    NotPermitAccess {
        /// The type bits (`flags & GTF_type_mask`).
        kind: u16,
        /// The entry's flags.
        flags: u16,
    },
    /// A version 1 entry uses a version 2 feature (`GTF_transitive` or `GTF_sub_page`), which cannot be
    /// mapped or accessed through a version 1 table.
    #[error(
        "grant entry flags {flags:#06x} use GTF_transitive or GTF_sub_page, which only a v2 table has"
    )]
    V2OnlyFlags {
        /// The entry's flags.
        flags: u16,
    },
    /// The entry grants access to another domain than the one asking.
    #[error("grant entry is granted to domain {granted_to}, not to domain {requester}")]
    WrongDomain {
        /// The entry's `domid`.
        granted_to: DomId,
        /// The domain that asked for access.
        requester: DomId,
    },
    /// Write access was asked for an entry with `GTF_readonly`.
    #[error("write access to a read-only grant entry (flags {flags:#06x} have GTF_readonly)")]
    ReadOnly {
        /// The entry's flags.
        flags: u16,
    },
    /// The entry cannot be revoked: it is mapped (`GTF_reading` or `GTF_writing` is set).
    #[error("grant entry is still mapped (flags {flags:#06x} have GTF_reading or GTF_writing)")]
    InUse {
        /// The entry's flags.
        flags: u16,
    },
    /// A `gnttab_copy` segment runs past the end of its page.
    #[error(
        "gnttab_copy {side}: offset {offset} + len {len} is past the end of the {page}-byte page",
        page = XEN_PAGE_SIZE
    )]
    CopyOutOfPage {
        /// Which segment: `"source"` or `"dest"`.
        side: &'static str,
        /// The segment's offset in its page.
        offset: u16,
        /// The length of the copy.
        len: u16,
    },
    /// An `int16_t` status that is no `GNTST_*` code.
    #[error("unknown grant table status {status} (GNTST_* codes are 0 to -13)")]
    UnknownStatus {
        /// The status.
        status: i16,
    },
}

impl GrantError {
    /// The `GNTST_*` status that Xen reports for this error in a hypercall's `status` field.
    pub const fn status(&self) -> i16 {
        match self {
            Self::BadRef { .. } => GNTST_bad_gntref,
            Self::NotPermitAccess { .. }
            | Self::V2OnlyFlags { .. }
            | Self::WrongDomain { .. }
            | Self::ReadOnly { .. }
            | Self::InUse { .. }
            | Self::UnknownStatus { .. } => GNTST_general_error,
            Self::CopyOutOfPage { .. } => GNTST_bad_copy_arg,
        }
    }
}

/// The number of version 1 entries in one 4096-byte frame of the table: 512. (No C counterpart: Xen
/// computes it as `PAGE_SIZE / sizeof(grant_entry_v1_t)`.)
pub const GRANT_ENTRIES_V1_PER_FRAME: u32 = (XEN_PAGE_SIZE / size_of::<GrantEntryV1>()) as u32;
/// The number of version 2 entries in one 4096-byte frame of the table: 256. (No C counterpart.)
pub const GRANT_ENTRIES_V2_PER_FRAME: u32 = (XEN_PAGE_SIZE / size_of::<GrantEntryV2>()) as u32;

/// The number of version 1 entries in a table of `nr_frames` frames, saturating at `u32::MAX`.
pub const fn nr_entries_v1(nr_frames: u32) -> u32 {
    nr_frames.saturating_mul(GRANT_ENTRIES_V1_PER_FRAME)
}

/// Checks a grant reference from a guest against a table of `nr_entries` entries, and returns it as an
/// index.
pub fn check_ref(gref: GrantRef, nr_entries: u32) -> Result<usize, GrantError> {
    if gref < nr_entries {
        usize::try_from(gref).map_err(|_| GrantError::BadRef { gref, nr_entries })
    } else {
        Err(GrantError::BadRef { gref, nr_entries })
    }
}

/// Copies entry `gref` out of a (copied) version 1 table, after checking the reference against the
/// table's length.
pub fn lookup_v1(table: &[GrantEntryV1], gref: GrantRef) -> Result<GrantEntryV1, GrantError> {
    let nr_entries = u32::try_from(table.len()).unwrap_or(u32::MAX);
    let index = check_ref(gref, nr_entries)?;
    table
        .get(index)
        .copied()
        .ok_or(GrantError::BadRef { gref, nr_entries })
}

/// What remains mapped of a grant after one of its mappings goes away, for [`GrantEntryHeader::end_map`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapsLeft {
    /// No mapping is left: clear `GTF_reading` and `GTF_writing`.
    None,
    /// Only read-only mappings are left: clear `GTF_writing`.
    ReadOnly,
    /// A writable mapping is left: the flags stay as they are.
    Writable,
}

impl GrantEntryHeader {
    /// A header from its type and sub-flags.
    pub const fn new(kind: GrantType, flags: GrantFlags, domid: DomId) -> Self {
        Self {
            flags: kind.bits() | flags.bits(),
            domid,
        }
    }

    /// The header as the 32-bit word on which Xen does its compare-exchange (`flags` in the first two
    /// bytes, `domid` in the next two, native byte order).
    pub fn to_word(self) -> u32 {
        zerocopy::transmute!(self)
    }

    /// The header from the 32-bit word of [`to_word`](Self::to_word).
    pub fn from_word(word: u32) -> Self {
        zerocopy::transmute!(word)
    }

    /// The entry's type.
    pub const fn entry_type(self) -> GrantType {
        GrantType::from_flags(self.flags)
    }

    /// The entry's known sub-flags (the bits above the type that [`GrantFlags`] names).
    pub const fn subflags(self) -> GrantFlags {
        GrantFlags::from_bits_truncate(self.flags & !GTF_type_mask)
    }

    /// Checks that `grantee` may map or access the entry, for reading only or also for writing, under
    /// the rules of a version 1 table (Xen's `_set_status_v1`):
    ///
    /// - the type is `GTF_permit_access` (not invalid, not a transfer, not the v2-only transitive type),
    ///   and `GTF_sub_page` (v2 only) is clear;
    /// - `domid` is `grantee`;
    /// - a writable access needs `GTF_readonly` clear.
    ///
    /// Other bits (cache attributes, bits Xen does not define) are ignored, as Xen does.
    pub const fn check_v1(self, grantee: DomId, readonly: bool) -> Result<(), GrantError> {
        let flags = self.flags;
        match flags & GTF_type_mask {
            GTF_permit_access => {}
            GTF_transitive => return Err(GrantError::V2OnlyFlags { flags }),
            kind => return Err(GrantError::NotPermitAccess { kind, flags }),
        }
        if flags & GTF_sub_page != 0 {
            return Err(GrantError::V2OnlyFlags { flags });
        }
        if self.domid != grantee {
            return Err(GrantError::WrongDomain {
                granted_to: self.domid,
                requester: grantee,
            });
        }
        if !readonly && flags & GTF_readonly != 0 {
            return Err(GrantError::ReadOnly { flags });
        }
        Ok(())
    }

    /// The header with which the hypervisor marks a version 1 entry as mapped by `grantee`, after
    /// [`check_v1`](Self::check_v1): `GTF_reading` for a read-only mapping, `GTF_reading | GTF_writing`
    /// for a writable one.
    ///
    /// The hypervisor applies it with a compare-exchange of [`to_word`](Self::to_word) on the live entry,
    /// and computes it again from the new value if the exchange fails; only after it succeeds does it read
    /// `frame`.
    pub const fn begin_map(self, grantee: DomId, readonly: bool) -> Result<Self, GrantError> {
        if let Err(e) = self.check_v1(grantee, readonly) {
            return Err(e);
        }
        let add = if readonly {
            GTF_reading
        } else {
            GTF_reading | GTF_writing
        };
        Ok(Self {
            flags: self.flags | add,
            domid: self.domid,
        })
    }

    /// The header after one mapping of the entry goes away, given what remains mapped (the hypervisor
    /// keeps the counts): `GTF_writing` is cleared when no writable mapping is left, and `GTF_reading`
    /// when no mapping at all is left.
    pub const fn end_map(self, left: MapsLeft) -> Self {
        let clear = match left {
            MapsLeft::None => GTF_reading | GTF_writing,
            MapsLeft::ReadOnly => GTF_writing,
            MapsLeft::Writable => 0,
        };
        Self {
            flags: self.flags & !clear,
            domid: self.domid,
        }
    }

    /// Whether the granting guest may revoke the entry now: neither `GTF_reading` nor `GTF_writing` is
    /// set.
    pub const fn can_revoke(self) -> bool {
        self.flags & (GTF_reading | GTF_writing) == 0
    }

    /// The header with which the granting guest revokes the entry (flags 0), if it is not mapped; the
    /// guest applies it with a compare-exchange on the live entry, as `grant_table.h` prescribes.
    pub const fn revoke(self) -> Result<Self, GrantError> {
        if self.can_revoke() {
            Ok(Self {
                flags: 0,
                domid: self.domid,
            })
        } else {
            Err(GrantError::InUse { flags: self.flags })
        }
    }
}

impl GrantEntryV1 {
    /// An entry that grants `domid` access to `frame`, read-only or writable.
    pub const fn permit_access(domid: DomId, frame: u32, readonly: bool) -> Self {
        let flags = if readonly {
            GTF_permit_access | GTF_readonly
        } else {
            GTF_permit_access
        };
        Self {
            flags,
            domid,
            frame,
        }
    }

    /// The entry's `flags` and `domid`.
    pub const fn header(&self) -> GrantEntryHeader {
        GrantEntryHeader {
            flags: self.flags,
            domid: self.domid,
        }
    }

    /// Validates this *copy* of a version 1 entry for access by `grantee` (read-only or writable), and
    /// returns the granted frame; see [`GrantEntryHeader::check_v1`] for the rules.
    pub const fn check_access(&self, grantee: DomId, readonly: bool) -> Result<u32, GrantError> {
        match self.header().check_v1(grantee, readonly) {
            Ok(()) => Ok(self.frame),
            Err(e) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Hypercall numbers and arguments
// ---------------------------------------------------------------------------------------------------------

/// Map grant references into the caller's address space (`GNTTABOP_map_grant_ref` in `grant_table.h`;
/// arguments [`GnttabMapGrantRef`]).
pub const GNTTABOP_map_grant_ref: u32 = 0;
/// Remove grant mappings (`GNTTABOP_unmap_grant_ref`; [`GnttabUnmapGrantRef`]).
pub const GNTTABOP_unmap_grant_ref: u32 = 1;
/// Size the grant table and get its frames (`GNTTABOP_setup_table`; [`GnttabSetupTable`]).
pub const GNTTABOP_setup_table: u32 = 2;
/// Dump a domain's grant table to the console (`GNTTABOP_dump_table`; [`GnttabDumpTable`]).
pub const GNTTABOP_dump_table: u32 = 3;
/// Transfer page ownership (`GNTTABOP_transfer`; [`GnttabTransfer`]).
pub const GNTTABOP_transfer: u32 = 4;
/// Copy between granted frames (`GNTTABOP_copy`; [`GnttabCopy`]).
pub const GNTTABOP_copy: u32 = 5;
/// Query the size of a grant table (`GNTTABOP_query_size`; [`GnttabQuerySize`]).
pub const GNTTABOP_query_size: u32 = 6;
/// Unmap a grant and replace the mapping (`GNTTABOP_unmap_and_replace`; [`GnttabUnmapAndReplace`]).
pub const GNTTABOP_unmap_and_replace: u32 = 7;
/// Select the table version (`GNTTABOP_set_version`; [`GnttabSetVersion`]).
pub const GNTTABOP_set_version: u32 = 8;
/// Get the version 2 status frames (`GNTTABOP_get_status_frames`; [`GnttabGetStatusFrames`]).
pub const GNTTABOP_get_status_frames: u32 = 9;
/// Get a domain's table version (`GNTTABOP_get_version`; [`GnttabGetVersion`]).
pub const GNTTABOP_get_version: u32 = 10;
/// Swap two grant entries (`GNTTABOP_swap_grant_ref`; [`GnttabSwapGrantRef`]).
pub const GNTTABOP_swap_grant_ref: u32 = 11;
/// Clean or invalidate the cache for a grant (`GNTTABOP_cache_flush`; [`GnttabCacheFlush`]).
pub const GNTTABOP_cache_flush: u32 = 12;

/// The argument structure of a `GNTTABOP_*` operation, and the operation's number.
pub trait GnttabOp: FromBytes + IntoBytes + Immutable + Copy {
    /// The `GNTTABOP_*` number.
    const CMD: u32;
}

macro_rules! gnttab_op {
    ($($ty:ty => $cmd:ident),* $(,)?) => {
        $( impl GnttabOp for $ty { const CMD: u32 = $cmd; } )*
    };
}

/// `GNTTABOP_map_grant_ref` arguments (`struct gnttab_map_grant_ref` in `grant_table.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabMapGrantRef {
    /// IN: the address to map at (or of the PTE to update, with `GNTMAP_contains_pte`).
    pub host_addr: u64,
    /// IN: `GNTMAP_*`.
    pub flags: u32,
    /// IN: the grant reference.
    pub r#ref: GrantRef,
    /// IN: the granting domain.
    pub dom: DomId,
    /// OUT: a `GNTST_*` code.
    pub status: i16,
    /// OUT: the handle of the mapping, for unmapping it.
    pub handle: GrantHandle,
    /// OUT: the bus address of the mapping, with `GNTMAP_device_map`.
    pub dev_bus_addr: u64,
}

impl GnttabMapGrantRef {
    /// A request to map `gref` of `dom` at `host_addr`, with the OUT fields zero.
    pub const fn new(host_addr: u64, flags: u32, gref: GrantRef, dom: DomId) -> Self {
        Self {
            host_addr,
            flags,
            r#ref: gref,
            dom,
            status: 0,
            handle: 0,
            dev_bus_addr: 0,
        }
    }
}

/// `GNTTABOP_unmap_grant_ref` arguments (`struct gnttab_unmap_grant_ref` in `grant_table.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabUnmapGrantRef {
    /// IN: the address of the mapping.
    pub host_addr: u64,
    /// IN: the bus address of the mapping.
    pub dev_bus_addr: u64,
    /// IN: the handle from `GNTTABOP_map_grant_ref`.
    pub handle: GrantHandle,
    /// OUT: a `GNTST_*` code.
    pub status: i16,
    _pad0: [u8; 2],
}

impl GnttabUnmapGrantRef {
    /// A request with zero status and padding.
    pub const fn new(host_addr: u64, dev_bus_addr: u64, handle: GrantHandle) -> Self {
        Self {
            host_addr,
            dev_bus_addr,
            handle,
            status: 0,
            _pad0: [0; 2],
        }
    }
}

/// `GNTTABOP_setup_table` arguments (`struct gnttab_setup_table` in `grant_table.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabSetupTable {
    /// IN: the domain.
    pub dom: DomId,
    _pad0: [u8; 2],
    /// IN: the number of frames wanted.
    pub nr_frames: u32,
    /// OUT: a `GNTST_*` code.
    pub status: i16,
    _pad1: [u8; 6],
    /// IN: guest handle (`XEN_GUEST_HANDLE(xen_pfn_t)`) of the array that receives the frames.
    pub frame_list: u64,
}

impl GnttabSetupTable {
    /// A request with zero status and padding.
    pub const fn new(dom: DomId, nr_frames: u32, frame_list: u64) -> Self {
        Self {
            dom,
            _pad0: [0; 2],
            nr_frames,
            status: 0,
            _pad1: [0; 6],
            frame_list,
        }
    }
}

/// `GNTTABOP_dump_table` arguments (`struct gnttab_dump_table` in `grant_table.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabDumpTable {
    /// IN: the domain.
    pub dom: DomId,
    /// OUT: a `GNTST_*` code.
    pub status: i16,
}

/// `GNTTABOP_transfer` arguments (`struct gnttab_transfer` in `grant_table.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabTransfer {
    /// IN: the frame to transfer (`xen_pfn_t`).
    pub mfn: u64,
    /// IN: the receiving domain.
    pub domid: DomId,
    _pad0: [u8; 2],
    /// IN: the receiver's `GTF_accept_transfer` entry.
    pub r#ref: GrantRef,
    /// OUT: a `GNTST_*` code.
    pub status: i16,
    _pad1: [u8; 6],
}

impl GnttabTransfer {
    /// A request with zero status and padding.
    pub const fn new(mfn: u64, domid: DomId, gref: GrantRef) -> Self {
        Self {
            mfn,
            domid,
            _pad0: [0; 2],
            r#ref: gref,
            status: 0,
            _pad1: [0; 6],
        }
    }
}

/// A union of a grant reference (`grant_ref_t`, in the first four bytes) and a 64-bit value (`xen_pfn_t`
/// or a bus address): `union { ref; gmfn; } u` of `struct gnttab_copy_ptr` and `union { dev_bus_addr;
/// ref; } a` of `struct gnttab_cache_flush` in `grant_table.h`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RefOrFrame {
    raw: u64,
}

impl RefOrFrame {
    /// The union holding a grant reference, its other four bytes zero.
    pub fn from_ref(gref: GrantRef) -> Self {
        let b = gref.to_ne_bytes();
        Self {
            raw: u64::from_ne_bytes([b[0], b[1], b[2], b[3], 0, 0, 0, 0]),
        }
    }

    /// The union holding a 64-bit frame number or address.
    pub const fn from_u64(value: u64) -> Self {
        Self { raw: value }
    }

    /// The union read as a grant reference (its first four bytes).
    pub fn r#ref(self) -> GrantRef {
        let b = self.raw.to_ne_bytes();
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The union read as a 64-bit frame number or address.
    pub const fn as_u64(self) -> u64 {
        self.raw
    }
}

/// Bit number of [`GNTCOPY_source_gref`] (`_GNTCOPY_source_gref` in `grant_table.h`).
pub const _GNTCOPY_source_gref: u16 = 0;
/// `source.u` is a grant reference, not a frame of the caller (`GNTCOPY_source_gref`).
pub const GNTCOPY_source_gref: u16 = 1 << _GNTCOPY_source_gref;
/// Bit number of [`GNTCOPY_dest_gref`] (`_GNTCOPY_dest_gref`).
pub const _GNTCOPY_dest_gref: u16 = 1;
/// `dest.u` is a grant reference, not a frame of the caller (`GNTCOPY_dest_gref`).
pub const GNTCOPY_dest_gref: u16 = 1 << _GNTCOPY_dest_gref;

bitflags::bitflags! {
    /// The `flags` of a [`GnttabCopy`] (`GNTCOPY_*` in `grant_table.h`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct GntCopyFlags: u16 {
        /// [`GNTCOPY_source_gref`].
        const SOURCE_GREF = GNTCOPY_source_gref;
        /// [`GNTCOPY_dest_gref`].
        const DEST_GREF = GNTCOPY_dest_gref;
    }
}

/// One side of a copy (`struct gnttab_copy_ptr` in `grant_table.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabCopyPtr {
    /// A grant reference of `domid` (with the side's `GNTCOPY_*_gref` flag) or a frame of the caller.
    pub u: RefOrFrame,
    /// The domain whose grant or frame it is.
    pub domid: DomId,
    /// The offset in the page.
    pub offset: u16,
    _pad0: [u8; 4],
}

impl GnttabCopyPtr {
    /// Bytes from `offset` of grant `gref` of `domid`.
    pub fn from_ref(gref: GrantRef, domid: DomId, offset: u16) -> Self {
        Self {
            u: RefOrFrame::from_ref(gref),
            domid,
            offset,
            _pad0: [0; 4],
        }
    }

    /// Bytes from `offset` of frame `gmfn` of the caller (`domid` is `DOMID_SELF` or the caller).
    pub const fn from_gmfn(gmfn: u64, domid: DomId, offset: u16) -> Self {
        Self {
            u: RefOrFrame::from_u64(gmfn),
            domid,
            offset,
            _pad0: [0; 4],
        }
    }

    /// Checks that `len` bytes from `offset` stay within the 4096-byte page.
    fn check(&self, side: &'static str, len: u16) -> Result<(), GrantError> {
        let end = u32::from(self.offset).checked_add(u32::from(len));
        match end {
            Some(end) if end as usize <= XEN_PAGE_SIZE => Ok(()),
            _ => Err(GrantError::CopyOutOfPage {
                side,
                offset: self.offset,
                len,
            }),
        }
    }
}

/// `GNTTABOP_copy` arguments: one copy of up to a page between two frames, each given by a grant or a
/// frame of the caller (`struct gnttab_copy` in `grant_table.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabCopy {
    /// IN: where to copy from.
    pub source: GnttabCopyPtr,
    /// IN: where to copy to.
    pub dest: GnttabCopyPtr,
    /// IN: the number of bytes.
    pub len: u16,
    /// IN: `GNTCOPY_*`.
    pub flags: u16,
    /// OUT: a `GNTST_*` code.
    pub status: i16,
    _pad0: [u8; 2],
}

impl GnttabCopy {
    /// A request with zero status and padding.
    pub const fn new(source: GnttabCopyPtr, dest: GnttabCopyPtr, len: u16, flags: u16) -> Self {
        Self {
            source,
            dest,
            len,
            flags,
            status: 0,
            _pad0: [0; 2],
        }
    }

    /// Checks that neither side crosses the end of its page: `offset + len <= 4096` for the source and
    /// for the destination (Xen answers `GNTST_bad_copy_arg` otherwise).
    pub fn check_segments(&self) -> Result<(), GrantError> {
        self.source.check("source", self.len)?;
        self.dest.check("dest", self.len)
    }
}

/// `GNTTABOP_query_size` arguments (`struct gnttab_query_size` in `grant_table.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabQuerySize {
    /// IN: the domain.
    pub dom: DomId,
    _pad0: [u8; 2],
    /// OUT: the current number of frames.
    pub nr_frames: u32,
    /// OUT: the largest number of frames allowed.
    pub max_nr_frames: u32,
    /// OUT: a `GNTST_*` code.
    pub status: i16,
    _pad1: [u8; 2],
}

impl GnttabQuerySize {
    /// A request for `dom`, with zero OUT fields and padding.
    pub const fn new(dom: DomId) -> Self {
        Self {
            dom,
            _pad0: [0; 2],
            nr_frames: 0,
            max_nr_frames: 0,
            status: 0,
            _pad1: [0; 2],
        }
    }
}

/// `GNTTABOP_unmap_and_replace` arguments (`struct gnttab_unmap_and_replace` in `grant_table.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabUnmapAndReplace {
    /// IN: the address of the mapping.
    pub host_addr: u64,
    /// IN: the address whose mapping replaces it.
    pub new_addr: u64,
    /// IN: the handle from `GNTTABOP_map_grant_ref`.
    pub handle: GrantHandle,
    /// OUT: a `GNTST_*` code.
    pub status: i16,
    _pad0: [u8; 2],
}

impl GnttabUnmapAndReplace {
    /// A request with zero status and padding.
    pub const fn new(host_addr: u64, new_addr: u64, handle: GrantHandle) -> Self {
        Self {
            host_addr,
            new_addr,
            handle,
            status: 0,
            _pad0: [0; 2],
        }
    }
}

/// `GNTTABOP_set_version` arguments (`struct gnttab_set_version` in `grant_table.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabSetVersion {
    /// IN: the version wanted (1 or 2); OUT: the version in force.
    pub version: u32,
}

/// `GNTTABOP_get_status_frames` arguments (`struct gnttab_get_status_frames` in `grant_table.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabGetStatusFrames {
    /// IN: the number of frames the array holds.
    pub nr_frames: u32,
    /// IN: the domain.
    pub dom: DomId,
    /// OUT: a `GNTST_*` code.
    pub status: i16,
    /// IN: guest handle (`XEN_GUEST_HANDLE(uint64_t)`) of the array that receives the frames.
    pub frame_list: u64,
}

/// `GNTTABOP_get_version` arguments (`struct gnttab_get_version` in `grant_table.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabGetVersion {
    /// IN: the domain.
    pub dom: DomId,
    /// Unused (`pad`).
    pub pad: u16,
    /// OUT: the domain's table version.
    pub version: u32,
}

/// `GNTTABOP_swap_grant_ref` arguments (`struct gnttab_swap_grant_ref` in `grant_table.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabSwapGrantRef {
    /// IN: one entry.
    pub ref_a: GrantRef,
    /// IN: the other entry.
    pub ref_b: GrantRef,
    /// OUT: a `GNTST_*` code.
    pub status: i16,
    _pad0: [u8; 2],
}

impl GnttabSwapGrantRef {
    /// A request with zero status and padding.
    pub const fn new(ref_a: GrantRef, ref_b: GrantRef) -> Self {
        Self {
            ref_a,
            ref_b,
            status: 0,
            _pad0: [0; 2],
        }
    }
}

/// Clean the cache (`GNTTAB_CACHE_CLEAN` in `grant_table.h`, in [`GnttabCacheFlush::op`]).
pub const GNTTAB_CACHE_CLEAN: u32 = 1 << 0;
/// Invalidate the cache (`GNTTAB_CACHE_INVAL`).
pub const GNTTAB_CACHE_INVAL: u32 = 1 << 1;
/// `a` is a grant reference, not a bus address (`GNTTAB_CACHE_SOURCE_GREF`).
pub const GNTTAB_CACHE_SOURCE_GREF: u32 = 1 << 31;

/// `GNTTABOP_cache_flush` arguments (`struct gnttab_cache_flush` in `grant_table.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabCacheFlush {
    /// A bus address (`dev_bus_addr`), or a grant reference (`ref`) with `GNTTAB_CACHE_SOURCE_GREF`.
    pub a: RefOrFrame,
    /// The offset from the start of the grant.
    pub offset: u16,
    /// The number of bytes.
    pub length: u16,
    /// `GNTTAB_CACHE_*`.
    pub op: u32,
}

gnttab_op! {
    GnttabMapGrantRef => GNTTABOP_map_grant_ref,
    GnttabUnmapGrantRef => GNTTABOP_unmap_grant_ref,
    GnttabSetupTable => GNTTABOP_setup_table,
    GnttabDumpTable => GNTTABOP_dump_table,
    GnttabTransfer => GNTTABOP_transfer,
    GnttabCopy => GNTTABOP_copy,
    GnttabQuerySize => GNTTABOP_query_size,
    GnttabUnmapAndReplace => GNTTABOP_unmap_and_replace,
    GnttabSetVersion => GNTTABOP_set_version,
    GnttabGetStatusFrames => GNTTABOP_get_status_frames,
    GnttabGetVersion => GNTTABOP_get_version,
    GnttabSwapGrantRef => GNTTABOP_swap_grant_ref,
    GnttabCacheFlush => GNTTABOP_cache_flush,
}

/// Bit number of [`GNTMAP_device_map`] (`_GNTMAP_device_map` in `grant_table.h`).
pub const _GNTMAP_device_map: u32 = 0;
/// Map for access by I/O devices (`GNTMAP_device_map`).
pub const GNTMAP_device_map: u32 = 1 << _GNTMAP_device_map;
/// Bit number of [`GNTMAP_host_map`] (`_GNTMAP_host_map`).
pub const _GNTMAP_host_map: u32 = 1;
/// Map for access by host CPUs (`GNTMAP_host_map`).
pub const GNTMAP_host_map: u32 = 1 << _GNTMAP_host_map;
/// Bit number of [`GNTMAP_readonly`] (`_GNTMAP_readonly`).
pub const _GNTMAP_readonly: u32 = 2;
/// Map read-only (`GNTMAP_readonly`).
pub const GNTMAP_readonly: u32 = 1 << _GNTMAP_readonly;
/// Bit number of [`GNTMAP_application_map`] (`_GNTMAP_application_map`).
pub const _GNTMAP_application_map: u32 = 3;
/// With `GNTMAP_host_map`: the mapping is usable by the current application too
/// (`GNTMAP_application_map`).
pub const GNTMAP_application_map: u32 = 1 << _GNTMAP_application_map;
/// Bit number of [`GNTMAP_contains_pte`] (`_GNTMAP_contains_pte`).
pub const _GNTMAP_contains_pte: u32 = 4;
/// `host_addr` is the machine address of the PTE to update (`GNTMAP_contains_pte`).
pub const GNTMAP_contains_pte: u32 = 1 << _GNTMAP_contains_pte;
/// The first bit of the guest-available bits (`_GNTMAP_guest_avail0`).
pub const _GNTMAP_guest_avail0: u32 = 16;
/// Bits 16 to 31 of `flags`, free for the guest's use (`GNTMAP_guest_avail_mask`).
pub const GNTMAP_guest_avail_mask: u32 = u32::MAX << _GNTMAP_guest_avail0;

bitflags::bitflags! {
    /// The `flags` of a [`GnttabMapGrantRef`] (`GNTMAP_*` in `grant_table.h`); bits 16 to 31 are the
    /// guest's ([`GNTMAP_guest_avail_mask`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct GntMapFlags: u32 {
        /// [`GNTMAP_device_map`].
        const DEVICE_MAP = GNTMAP_device_map;
        /// [`GNTMAP_host_map`].
        const HOST_MAP = GNTMAP_host_map;
        /// [`GNTMAP_readonly`].
        const READONLY = GNTMAP_readonly;
        /// [`GNTMAP_application_map`].
        const APPLICATION_MAP = GNTMAP_application_map;
        /// [`GNTMAP_contains_pte`].
        const CONTAINS_PTE = GNTMAP_contains_pte;
        /// [`GNTMAP_guest_avail_mask`].
        const GUEST_AVAIL = GNTMAP_guest_avail_mask;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Status codes
// ---------------------------------------------------------------------------------------------------------

/// Normal return (`GNTST_okay` in `grant_table.h`).
pub const GNTST_okay: i16 = 0;
/// General undefined error (`GNTST_general_error`).
pub const GNTST_general_error: i16 = -1;
/// Unrecognised domain id (`GNTST_bad_domain`).
pub const GNTST_bad_domain: i16 = -2;
/// Unrecognised or inappropriate grant reference (`GNTST_bad_gntref`).
pub const GNTST_bad_gntref: i16 = -3;
/// Unrecognised or inappropriate handle (`GNTST_bad_handle`).
pub const GNTST_bad_handle: i16 = -4;
/// Inappropriate virtual address to map (`GNTST_bad_virt_addr`).
pub const GNTST_bad_virt_addr: i16 = -5;
/// Inappropriate device address to unmap (`GNTST_bad_dev_addr`).
pub const GNTST_bad_dev_addr: i16 = -6;
/// Out of space in the I/O MMU (`GNTST_no_device_space`).
pub const GNTST_no_device_space: i16 = -7;
/// Not enough privilege for the operation (`GNTST_permission_denied`).
pub const GNTST_permission_denied: i16 = -8;
/// The page was invalid for the operation (`GNTST_bad_page`).
pub const GNTST_bad_page: i16 = -9;
/// Copy arguments cross a page boundary (`GNTST_bad_copy_arg`).
pub const GNTST_bad_copy_arg: i16 = -10;
/// Transfer page address too large (`GNTST_address_too_big`).
pub const GNTST_address_too_big: i16 = -11;
/// Operation not done; try again (`GNTST_eagain`).
pub const GNTST_eagain: i16 = -12;
/// Out of space, handles for example (`GNTST_no_space`).
pub const GNTST_no_space: i16 = -13;

/// The messages of the `GNTST_*` codes, indexed by `-status` (`GNTTABOP_error_msgs` in `grant_table.h`).
pub const GNTTABOP_error_msgs: [&str; 14] = [
    "okay",
    "undefined error",
    "unrecognised domain id",
    "invalid grant reference",
    "invalid mapping handle",
    "invalid virtual address",
    "invalid device address",
    "no spare translation slot in the I/O MMU",
    "permission denied",
    "bad page",
    "copy arguments cross page boundary",
    "page address size too large",
    "operation not done; try again",
    "out of space",
];

/// A grant table status code (`enum grant_status`, the `GNTST_*` of `grant_table.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(i16)]
pub enum GnttabStatus {
    /// [`GNTST_okay`].
    Okay = GNTST_okay,
    /// [`GNTST_general_error`].
    GeneralError = GNTST_general_error,
    /// [`GNTST_bad_domain`].
    BadDomain = GNTST_bad_domain,
    /// [`GNTST_bad_gntref`].
    BadGntref = GNTST_bad_gntref,
    /// [`GNTST_bad_handle`].
    BadHandle = GNTST_bad_handle,
    /// [`GNTST_bad_virt_addr`].
    BadVirtAddr = GNTST_bad_virt_addr,
    /// [`GNTST_bad_dev_addr`].
    BadDevAddr = GNTST_bad_dev_addr,
    /// [`GNTST_no_device_space`].
    NoDeviceSpace = GNTST_no_device_space,
    /// [`GNTST_permission_denied`].
    PermissionDenied = GNTST_permission_denied,
    /// [`GNTST_bad_page`].
    BadPage = GNTST_bad_page,
    /// [`GNTST_bad_copy_arg`].
    BadCopyArg = GNTST_bad_copy_arg,
    /// [`GNTST_address_too_big`].
    AddressTooBig = GNTST_address_too_big,
    /// [`GNTST_eagain`].
    Eagain = GNTST_eagain,
    /// [`GNTST_no_space`].
    NoSpace = GNTST_no_space,
}

impl GnttabStatus {
    const ALL: [Self; 14] = [
        Self::Okay,
        Self::GeneralError,
        Self::BadDomain,
        Self::BadGntref,
        Self::BadHandle,
        Self::BadVirtAddr,
        Self::BadDevAddr,
        Self::NoDeviceSpace,
        Self::PermissionDenied,
        Self::BadPage,
        Self::BadCopyArg,
        Self::AddressTooBig,
        Self::Eagain,
        Self::NoSpace,
    ];

    /// The raw `GNTST_*` value.
    pub const fn raw(self) -> i16 {
        self as i16
    }

    /// Xen's message for the code (from `GNTTABOP_error_msgs`).
    pub fn message(self) -> &'static str {
        let index = usize::from(self.raw().unsigned_abs());
        GNTTABOP_error_msgs
            .get(index)
            .copied()
            .unwrap_or("unknown grant table status")
    }
}

impl TryFrom<i16> for GnttabStatus {
    type Error = GrantError;

    fn try_from(status: i16) -> Result<Self, GrantError> {
        Self::ALL
            .iter()
            .copied()
            .find(|s| s.raw() == status)
            .ok_or(GrantError::UnknownStatus { status })
    }
}

impl From<GnttabStatus> for i16 {
    fn from(status: GnttabStatus) -> i16 {
        status.raw()
    }
}

impl core::fmt::Display for GnttabStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.message())
    }
}
