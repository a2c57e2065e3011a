//! `xen_abi::grant_table`: validation of copied grant entries and requests against the hostile inputs of
//! HOSTILE-INPUT.md (blkif: "an invalid grant ref; a grant revoked during the I/O; one element of a batched
//! grant map failing"), the status-bit protocol, and round trips.

use proptest::prelude::*;
use xen_abi::grant_table::*;
use zerocopy::{FromBytes, IntoBytes};

const BACKEND: u16 = 0;
const FRONTEND: u16 = 7;

fn table() -> Vec<GrantEntryV1> {
    let mut t = vec![
        GrantEntryV1 {
            flags: GTF_invalid,
            domid: 0,
            frame: 0
        };
        GRANT_ENTRIES_V1_PER_FRAME as usize
    ];
    t[8] = GrantEntryV1::permit_access(BACKEND, 0x1234, false);
    t[9] = GrantEntryV1::permit_access(BACKEND, 0x5678, true);
    t
}

// ----- an invalid grant ref --------------------------------------------------------------------------------

#[test]
fn an_invalid_grant_ref_past_the_end_of_the_table_is_rejected() {
    let t = table();
    assert_eq!(
        lookup_v1(&t, 512),
        Err(GrantError::BadRef {
            gref: 512,
            nr_entries: 512
        })
    );
    assert_eq!(
        check_ref(512, 512),
        Err(GrantError::BadRef {
            gref: 512,
            nr_entries: 512
        })
    );
    assert_eq!(check_ref(511, 512), Ok(511));
    assert_eq!(lookup_v1(&t, 8).map(|e| e.frame), Ok(0x1234));
}

#[test]
fn an_invalid_grant_ref_of_u32_max_is_rejected() {
    let t = table();
    assert_eq!(
        lookup_v1(&t, u32::MAX),
        Err(GrantError::BadRef {
            gref: u32::MAX,
            nr_entries: 512
        })
    );
    assert_eq!(
        check_ref(u32::MAX, nr_entries_v1(u32::MAX)),
        Err(GrantError::BadRef {
            gref: u32::MAX,
            nr_entries: u32::MAX
        })
    );
}

#[test]
fn an_invalid_grant_ref_in_an_empty_table_is_rejected() {
    assert_eq!(
        lookup_v1(&[], 0),
        Err(GrantError::BadRef {
            gref: 0,
            nr_entries: 0
        })
    );
}

#[test]
fn an_invalid_grant_ref_to_a_gtf_invalid_entry_is_rejected() {
    let e = GrantEntryV1 {
        flags: GTF_invalid | GTF_readonly,
        domid: BACKEND,
        frame: 1,
    };
    assert_eq!(
        e.check_access(BACKEND, true),
        Err(GrantError::NotPermitAccess {
            kind: GTF_invalid,
            flags: GTF_readonly
        })
    );
}

#[test]
fn an_invalid_grant_ref_to_an_accept_transfer_entry_is_rejected() {
    let e = GrantEntryV1 {
        flags: GTF_accept_transfer,
        domid: BACKEND,
        frame: 1,
    };
    assert_eq!(
        e.check_access(BACKEND, true),
        Err(GrantError::NotPermitAccess {
            kind: GTF_accept_transfer,
            flags: GTF_accept_transfer
        })
    );
}

#[test]
fn an_invalid_grant_ref_granted_to_another_domain_is_rejected() {
    let e = GrantEntryV1::permit_access(FRONTEND + 1, 1, false);
    assert_eq!(
        e.check_access(BACKEND, true),
        Err(GrantError::WrongDomain {
            granted_to: FRONTEND + 1,
            requester: BACKEND
        })
    );
}

#[test]
fn an_invalid_grant_ref_to_a_transitive_entry_in_a_v1_table_is_rejected() {
    let e = GrantEntryV1 {
        flags: GTF_transitive,
        domid: BACKEND,
        frame: 1,
    };
    assert_eq!(
        e.check_access(BACKEND, true),
        Err(GrantError::V2OnlyFlags {
            flags: GTF_transitive
        })
    );
}

#[test]
fn an_invalid_grant_ref_to_a_sub_page_entry_in_a_v1_table_is_rejected() {
    let flags = GTF_permit_access | GTF_sub_page;
    let e = GrantEntryV1 {
        flags,
        domid: BACKEND,
        frame: 1,
    };
    assert_eq!(
        e.check_access(BACKEND, true),
        Err(GrantError::V2OnlyFlags { flags })
    );
}

#[test]
fn an_invalid_grant_ref_maps_to_gntst_bad_gntref() {
    let t = table();
    let err = lookup_v1(&t, 4096).unwrap_err();
    assert_eq!(err.status(), GNTST_bad_gntref);
    assert_eq!(
        GnttabStatus::try_from(err.status()).map(GnttabStatus::message),
        Ok("invalid grant reference")
    );
}

#[test]
fn a_write_map_of_a_read_only_grant_is_rejected() {
    let e = GrantEntryV1::permit_access(BACKEND, 0x99, true);
    let flags = GTF_permit_access | GTF_readonly;
    assert_eq!(
        e.check_access(BACKEND, false),
        Err(GrantError::ReadOnly { flags })
    );
    assert_eq!(
        e.header().begin_map(BACKEND, false),
        Err(GrantError::ReadOnly { flags })
    );
    // Reading it is fine.
    assert_eq!(e.check_access(BACKEND, true), Ok(0x99));
}

#[test]
fn cache_attribute_flags_do_not_block_access() {
    let e = GrantEntryV1 {
        flags: GTF_permit_access | GTF_PWT | GTF_PCD | GTF_PAT,
        domid: BACKEND,
        frame: 5,
    };
    assert_eq!(e.check_access(BACKEND, false), Ok(5));
    assert_eq!(
        e.header().subflags(),
        GrantFlags::PWT | GrantFlags::PCD | GrantFlags::PAT
    );
}

// ----- a grant revoked during the I/O ----------------------------------------------------------------------

#[test]
fn a_grant_revoked_during_the_io_is_refused_while_mapped() {
    let granted = GrantEntryV1::permit_access(BACKEND, 0x42, false).header();
    let mapped = granted.begin_map(BACKEND, false).unwrap();
    assert_eq!(mapped.flags, GTF_permit_access | GTF_reading | GTF_writing);
    assert!(!mapped.can_revoke());
    assert_eq!(
        mapped.revoke(),
        Err(GrantError::InUse {
            flags: mapped.flags
        })
    );

    // Only a read-only mapping left: still mapped.
    let reading = mapped.end_map(MapsLeft::ReadOnly);
    assert_eq!(reading.flags, GTF_permit_access | GTF_reading);
    assert_eq!(
        reading.revoke(),
        Err(GrantError::InUse {
            flags: reading.flags
        })
    );

    // Unmapped: the guest may revoke it, and the entry then grants nothing.
    let unmapped = reading.end_map(MapsLeft::None);
    assert_eq!(unmapped, granted);
    let revoked = unmapped.revoke().unwrap();
    assert_eq!(revoked.flags, 0);
    assert!(matches!(
        revoked.begin_map(BACKEND, true),
        Err(GrantError::NotPermitAccess { .. })
    ));
}

#[test]
fn a_grant_revoked_before_the_io_makes_the_map_fail() {
    // The back end copied the entry once and found it valid, but the guest revoked it before the
    // hypervisor's compare-exchange: the exchange fails, and the new value is refused.
    let before = GrantEntryV1::permit_access(BACKEND, 0x42, true).header();
    assert!(before.begin_map(BACKEND, true).is_ok());
    let live = before.revoke().unwrap();
    assert_eq!(
        live.begin_map(BACKEND, true),
        Err(GrantError::NotPermitAccess {
            kind: GTF_invalid,
            flags: 0
        })
    );
}

#[test]
fn a_grant_made_read_only_during_the_io_refuses_a_new_write_map() {
    let live = GrantEntryV1::permit_access(BACKEND, 0x42, false).header();
    let read_only = GrantEntryHeader {
        flags: live.flags | GTF_readonly,
        ..live
    };
    assert_eq!(
        read_only.begin_map(BACKEND, false),
        Err(GrantError::ReadOnly {
            flags: read_only.flags
        })
    );
}

#[test]
fn header_word_is_what_xen_compare_exchanges() {
    let h = GrantEntryHeader {
        flags: 0x1234,
        domid: 0xabcd,
    };
    assert_eq!(
        h.to_word(),
        u32::from_ne_bytes(*zerocopy::transmute_ref!(&h))
    );
    assert_eq!(GrantEntryHeader::from_word(h.to_word()), h);
    let e = GrantEntryV1 {
        flags: 0x1234,
        domid: 0xabcd,
        frame: 9,
    };
    assert_eq!(&e.as_bytes()[..4], h.as_bytes());
}

// ----- one element of a batched grant map failing ----------------------------------------------------------

/// What a hypervisor does with a batch of `GNTTABOP_map_grant_ref`: each element on its own, its status
/// in its own `status` field.
fn map_batch(
    table: &[GrantEntryV1],
    grantee: u16,
    batch: &mut [GnttabMapGrantRef],
) -> Vec<Option<u32>> {
    batch
        .iter_mut()
        .map(|op| {
            let readonly = op.flags & GNTMAP_readonly != 0;
            let result = lookup_v1(table, op.r#ref).and_then(|e| e.check_access(grantee, readonly));
            op.status = match result {
                Ok(_) => GNTST_okay,
                Err(e) => e.status(),
            };
            result.ok()
        })
        .collect()
}

#[test]
fn one_element_of_a_batched_grant_map_failing_fails_alone() {
    let t = table();
    let mut batch = [
        GnttabMapGrantRef::new(0x1000, GNTMAP_host_map, 8, FRONTEND),
        GnttabMapGrantRef::new(0x2000, GNTMAP_host_map, 9, FRONTEND), // read-only grant, write map
        GnttabMapGrantRef::new(0x3000, GNTMAP_host_map, 70000, FRONTEND), // past the table
        GnttabMapGrantRef::new(0x4000, GNTMAP_host_map | GNTMAP_readonly, 9, FRONTEND),
    ];
    let frames = map_batch(&t, BACKEND, &mut batch);
    assert_eq!(frames, vec![Some(0x1234), None, None, Some(0x5678)]);
    let statuses: Vec<i16> = batch.iter().map(|op| op.status).collect();
    assert_eq!(
        statuses,
        vec![
            GNTST_okay,
            GNTST_general_error,
            GNTST_bad_gntref,
            GNTST_okay
        ]
    );
}

// ----- gnttab_copy segments --------------------------------------------------------------------------------

#[test]
fn copy_source_offset_plus_len_past_the_page_is_rejected() {
    let op = GnttabCopy::new(
        GnttabCopyPtr::from_ref(8, FRONTEND, 4000),
        GnttabCopyPtr::from_gmfn(0x99, 0x7ff0, 0),
        97,
        GNTCOPY_source_gref,
    );
    assert_eq!(
        op.check_segments(),
        Err(GrantError::CopyOutOfPage {
            side: "source",
            offset: 4000,
            len: 97
        })
    );
    assert_eq!(
        op.check_segments().unwrap_err().status(),
        GNTST_bad_copy_arg
    );
}

#[test]
fn copy_dest_offset_plus_len_past_the_page_is_rejected() {
    let op = GnttabCopy::new(
        GnttabCopyPtr::from_gmfn(0x99, 0x7ff0, 0),
        GnttabCopyPtr::from_ref(8, FRONTEND, 1),
        4096,
        GNTCOPY_dest_gref,
    );
    assert_eq!(
        op.check_segments(),
        Err(GrantError::CopyOutOfPage {
            side: "dest",
            offset: 1,
            len: 4096
        })
    );
}

#[test]
fn copy_with_offset_and_len_of_u16_max_does_not_overflow() {
    let p = GnttabCopyPtr::from_ref(8, FRONTEND, u16::MAX);
    let op = GnttabCopy::new(p, p, u16::MAX, GNTCOPY_source_gref | GNTCOPY_dest_gref);
    assert_eq!(
        op.check_segments(),
        Err(GrantError::CopyOutOfPage {
            side: "source",
            offset: u16::MAX,
            len: u16::MAX
        })
    );
}

#[test]
fn copy_ending_exactly_at_the_page_end_is_accepted() {
    let op = GnttabCopy::new(
        GnttabCopyPtr::from_ref(8, FRONTEND, 4000),
        GnttabCopyPtr::from_ref(9, 1, 0),
        96,
        3,
    );
    assert_eq!(op.check_segments(), Ok(()));
    let empty = GnttabCopy::new(
        GnttabCopyPtr::from_ref(8, 1, 4096),
        GnttabCopyPtr::from_ref(9, 1, 4096),
        0,
        3,
    );
    assert_eq!(empty.check_segments(), Ok(()));
}

// ----- status codes, padding, unions -----------------------------------------------------------------------

#[test]
fn unknown_gntst_codes_are_rejected() {
    assert_eq!(
        GnttabStatus::try_from(-14),
        Err(GrantError::UnknownStatus { status: -14 })
    );
    assert_eq!(
        GnttabStatus::try_from(1),
        Err(GrantError::UnknownStatus { status: 1 })
    );
    assert_eq!(
        GnttabStatus::try_from(i16::MIN),
        Err(GrantError::UnknownStatus { status: i16::MIN })
    );
    for code in -13..=0 {
        let s = GnttabStatus::try_from(code).unwrap();
        assert_eq!(i16::from(s), code);
        assert_eq!(
            s.to_string(),
            GNTTABOP_error_msgs[usize::from(code.unsigned_abs())]
        );
    }
}

#[test]
fn error_messages_name_the_values() {
    let msg = GrantError::BadRef {
        gref: 600,
        nr_entries: 512,
    }
    .to_string();
    assert!(msg.contains("600") && msg.contains("512"), "{msg}");
    let msg = GrantError::CopyOutOfPage {
        side: "dest",
        offset: 4000,
        len: 200,
    }
    .to_string();
    assert!(
        msg.contains("4000") && msg.contains("200") && msg.contains("4096"),
        "{msg}"
    );
}

#[test]
fn constructors_zero_the_padding() {
    fn zero_except(bytes: &[u8], fields: &[(usize, usize)]) {
        for (i, b) in bytes.iter().enumerate() {
            if !fields
                .iter()
                .any(|&(off, len)| (off..off + len).contains(&i))
            {
                assert_eq!(*b, 0, "byte {i} of {bytes:02x?}");
            }
        }
    }
    let m = u64::MAX;
    zero_except(
        GnttabUnmapGrantRef::new(m, m, u32::MAX).as_bytes(),
        &[(0, 20)],
    );
    zero_except(
        GnttabSetupTable::new(u16::MAX, u32::MAX, m).as_bytes(),
        &[(0, 2), (4, 4), (16, 8)],
    );
    zero_except(
        GnttabTransfer::new(m, u16::MAX, u32::MAX).as_bytes(),
        &[(0, 10), (12, 4)],
    );
    zero_except(
        GnttabCopyPtr::from_ref(u32::MAX, u16::MAX, u16::MAX).as_bytes(),
        &[(0, 4), (8, 4)],
    );
    let p = GnttabCopyPtr::from_gmfn(m, u16::MAX, u16::MAX);
    zero_except(
        GnttabCopy::new(p, p, u16::MAX, u16::MAX).as_bytes(),
        &[(0, 12), (16, 12), (32, 4)],
    );
    zero_except(GnttabQuerySize::new(u16::MAX).as_bytes(), &[(0, 2)]);
    zero_except(
        GnttabUnmapAndReplace::new(m, m, u32::MAX).as_bytes(),
        &[(0, 20)],
    );
    zero_except(
        GnttabSwapGrantRef::new(u32::MAX, u32::MAX).as_bytes(),
        &[(0, 8)],
    );
    let t = GrantEntryV2Transitive::new(
        GrantEntryHeader {
            flags: u16::MAX,
            domid: u16::MAX,
        },
        u16::MAX,
        u32::MAX,
    );
    zero_except(
        GrantEntryV2::from_transitive(t).as_bytes(),
        &[(0, 6), (8, 4)],
    );
}

#[test]
fn from_transitive_zeroes_the_tail_of_the_union() {
    let dirty = GrantEntryV2Transitive::read_from_bytes(&[0xff; 16]).unwrap();
    let entry = GrantEntryV2::from_transitive(dirty);
    assert_eq!(&entry.as_bytes()[12..], &[0; 4]);
    assert_eq!(entry.transitive().gref, u32::MAX);
}

#[test]
fn ref_or_frame_holds_a_ref_in_its_first_four_bytes() {
    let u = RefOrFrame::from_ref(0xdead_beef);
    assert_eq!(&u.as_bytes()[..4], &0xdead_beef_u32.to_ne_bytes());
    assert_eq!(&u.as_bytes()[4..], &[0; 4]);
    assert_eq!(u.r#ref(), 0xdead_beef);
    assert_eq!(
        RefOrFrame::from_u64(0x1122_3344_5566_7788).as_u64(),
        0x1122_3344_5566_7788
    );
}

#[test]
fn grant_type_and_flags_decode() {
    assert_eq!(
        GrantType::from_flags(GTF_permit_access | GTF_reading),
        GrantType::PermitAccess
    );
    assert_eq!(GrantType::from_flags(0xffff), GrantType::Transitive);
    for t in [
        GrantType::Invalid,
        GrantType::PermitAccess,
        GrantType::AcceptTransfer,
        GrantType::Transitive,
    ] {
        assert_eq!(GrantType::from_flags(t.bits()), t);
    }
    let h = GrantEntryHeader::new(
        GrantType::PermitAccess,
        GrantFlags::READONLY | GrantFlags::SUB_PAGE,
        3,
    );
    assert_eq!(h.flags, GTF_permit_access | GTF_readonly | GTF_sub_page);
    assert_eq!(h.entry_type(), GrantType::PermitAccess);
    assert_eq!(
        GntMapFlags::from_bits_truncate(u32::MAX).bits(),
        0xffff_001f
    );
}

#[test]
fn op_numbers() {
    assert_eq!(<GnttabCopy as GnttabOp>::CMD, GNTTABOP_copy);
    assert_eq!(<GnttabMapGrantRef as GnttabOp>::CMD, GNTTABOP_map_grant_ref);
    assert_eq!(<GnttabCacheFlush as GnttabOp>::CMD, GNTTABOP_cache_flush);
}

// ----- proptests -------------------------------------------------------------------------------------------

/// The rules of a v1 access check, written out independently.
fn model_check(flags: u16, domid: u16, grantee: u16, readonly: bool) -> bool {
    flags & 3 == 1
        && flags & (1 << 8) == 0
        && domid == grantee
        && (readonly || flags & (1 << 2) == 0)
}

fn bytes_round_trip<
    T: FromBytes + IntoBytes + zerocopy::Immutable + PartialEq + core::fmt::Debug,
>(
    bytes: &[u8],
) {
    let v = T::read_from_bytes(&bytes[..size_of::<T>()]).unwrap();
    assert_eq!(v.as_bytes(), &bytes[..size_of::<T>()]);
    assert_eq!(T::read_from_bytes(v.as_bytes()).unwrap(), v);
}

proptest! {
    #[test]
    fn every_struct_round_trips_through_bytes(bytes in proptest::collection::vec(any::<u8>(), 40)) {
        bytes_round_trip::<GrantEntryV1>(&bytes);
        bytes_round_trip::<GrantEntryHeader>(&bytes);
        bytes_round_trip::<GrantEntryV2>(&bytes);
        bytes_round_trip::<GrantEntryV2FullPage>(&bytes);
        bytes_round_trip::<GrantEntryV2SubPage>(&bytes);
        bytes_round_trip::<GrantEntryV2Transitive>(&bytes);
        bytes_round_trip::<GnttabMapGrantRef>(&bytes);
        bytes_round_trip::<GnttabUnmapGrantRef>(&bytes);
        bytes_round_trip::<GnttabSetupTable>(&bytes);
        bytes_round_trip::<GnttabDumpTable>(&bytes);
        bytes_round_trip::<GnttabTransfer>(&bytes);
        bytes_round_trip::<GnttabCopyPtr>(&bytes);
        bytes_round_trip::<GnttabCopy>(&bytes);
        bytes_round_trip::<GnttabQuerySize>(&bytes);
        bytes_round_trip::<GnttabUnmapAndReplace>(&bytes);
        bytes_round_trip::<GnttabSetVersion>(&bytes);
        bytes_round_trip::<GnttabGetStatusFrames>(&bytes);
        bytes_round_trip::<GnttabGetVersion>(&bytes);
        bytes_round_trip::<GnttabSwapGrantRef>(&bytes);
        bytes_round_trip::<GnttabCacheFlush>(&bytes);
        bytes_round_trip::<RefOrFrame>(&bytes);
    }

    #[test]
    fn v2_views_round_trip(flags: u16, domid: u16, a: u16, b: u16, gref: u32, frame: u64) {
        let hdr = GrantEntryHeader { flags, domid };
        let full = GrantEntryV2FullPage { hdr, pad0: gref, frame };
        prop_assert_eq!(GrantEntryV2::from_full_page(full).full_page(), full);
        prop_assert_eq!(GrantEntryV2::from_full_page(full).hdr, hdr);
        let sub = GrantEntryV2SubPage { hdr, page_off: a, length: b, frame };
        prop_assert_eq!(GrantEntryV2::from_sub_page(sub).sub_page(), sub);
        let tr = GrantEntryV2Transitive::new(hdr, a, gref);
        prop_assert_eq!(GrantEntryV2::from_transitive(tr).transitive(), tr);
        prop_assert_eq!(GrantEntryV2::from_transitive(tr).hdr, hdr);
    }

    #[test]
    fn header_word_round_trips(word: u32) {
        prop_assert_eq!(GrantEntryHeader::from_word(word).to_word(), word);
    }

    #[test]
    fn ref_or_frame_round_trips(gref: u32, value: u64) {
        prop_assert_eq!(RefOrFrame::from_ref(gref).r#ref(), gref);
        prop_assert_eq!(RefOrFrame::from_u64(value).as_u64(), value);
        prop_assert_eq!(GnttabCopyPtr::from_ref(gref, 1, 2).u.r#ref(), gref);
    }

    #[test]
    fn gntst_codes_round_trip(code: i16) {
        match GnttabStatus::try_from(code) {
            Ok(s) => { prop_assert!((-13..=0).contains(&code)); prop_assert_eq!(s.raw(), code); }
            Err(e) => { prop_assert!(!(-13..=0).contains(&code)); prop_assert_eq!(e, GrantError::UnknownStatus { status: code }); }
        }
    }

    #[test]
    fn check_access_agrees_with_the_rules(flags: u16, domid in 0u16..4, grantee in 0u16..4, readonly: bool, frame: u32) {
        let e = GrantEntryV1 { flags, domid, frame };
        let result = e.check_access(grantee, readonly);
        prop_assert_eq!(result.is_ok(), model_check(flags, domid, grantee, readonly));
        if let Ok(f) = result { prop_assert_eq!(f, frame); }
        // begin_map succeeds exactly when the check does, and only adds the right status bits.
        match e.header().begin_map(grantee, readonly) {
            Ok(h) => {
                let add = if readonly { GTF_reading } else { GTF_reading | GTF_writing };
                prop_assert_eq!(h.flags, flags | add);
                prop_assert_eq!(h.domid, domid);
            }
            Err(err) => prop_assert_eq!(Err(err), result),
        }
    }

    #[test]
    fn copy_check_agrees_with_the_page_bounds(so: u16, doff: u16, len: u16) {
        let op = GnttabCopy::new(GnttabCopyPtr::from_ref(1, 1, so), GnttabCopyPtr::from_ref(2, 1, doff), len, 3);
        let ok = u32::from(so) + u32::from(len) <= 4096 && u32::from(doff) + u32::from(len) <= 4096;
        prop_assert_eq!(op.check_segments().is_ok(), ok);
    }

    /// Random maps and unmaps of one entry, with the counts a hypervisor keeps: `GTF_reading` is set
    /// exactly while something is mapped, `GTF_writing` while something writable is, and the guest may
    /// revoke exactly when nothing is.
    #[test]
    fn status_bits_follow_the_mappings(ops in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..64)) {
        let mut h = GrantEntryV1::permit_access(BACKEND, 1, false).header();
        let (mut readers, mut writers) = (0u32, 0u32);
        for (map, readonly) in ops {
            if map {
                h = h.begin_map(BACKEND, readonly).unwrap();
                if readonly { readers += 1 } else { writers += 1 }
            } else if readonly && readers > 0 || !readonly && writers > 0 {
                if readonly { readers -= 1 } else { writers -= 1 }
                let left = match (readers, writers) {
                    (0, 0) => MapsLeft::None,
                    (_, 0) => MapsLeft::ReadOnly,
                    _ => MapsLeft::Writable,
                };
                h = h.end_map(left);
            }
            prop_assert_eq!(h.flags & GTF_reading != 0, readers + writers > 0);
            prop_assert_eq!(h.flags & GTF_writing != 0, writers > 0);
            prop_assert_eq!(h.can_revoke(), readers + writers == 0);
            prop_assert_eq!(h.revoke().is_ok(), readers + writers == 0);
            prop_assert_eq!(h.entry_type(), GrantType::PermitAccess);
        }
    }
}
