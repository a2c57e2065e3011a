//! `xen_abi::grant_table` against `grant_table.h` (x86_64 layout).
//!
//! Left out because they have no C counterpart: `GRANT_ENTRIES_V1_PER_FRAME`, `GRANT_ENTRIES_V2_PER_FRAME`,
//! the private `_pad` fields, and the last 4 bytes of `GrantEntryV2Transitive` (the C `transitive` member
//! is 12 bytes; the Rust view spans the whole 16-byte union, so its size is compared as the end of `gref`).
//! The C unions `gnttab_copy_ptr.u` and `gnttab_cache_flush.a` are both `RefOrFrame`.

use std::ffi::{CStr, c_char};

use blanket_conformance::{Entry, c_table, check, const_as, consts, layout, offset};
use xen_abi::grant_table::{
    GnttabCacheFlush, GnttabCopy, GnttabCopyPtr, GnttabDumpTable, GnttabGetStatusFrames,
    GnttabGetVersion, GnttabMapGrantRef, GnttabQuerySize, GnttabSetVersion, GnttabSetupTable,
    GnttabStatus, GnttabSwapGrantRef, GnttabTransfer, GnttabUnmapAndReplace, GnttabUnmapGrantRef,
    GrantEntryHeader, GrantEntryV1, GrantEntryV2, GrantEntryV2FullPage, GrantEntryV2SubPage,
    GrantEntryV2Transitive, GrantHandle, GrantRef, GrantStatus, RefOrFrame,
};

fn size_align<T>(c: &str) -> Vec<Entry> {
    vec![
        Entry::new(format!("size:{c}"), size_of::<T>() as i64),
        Entry::new(format!("align:{c}"), align_of::<T>() as i64),
    ]
}

#[test]
fn layout_matches_grant_table_h() {
    let transitive_end =
        core::mem::offset_of!(GrantEntryV2Transitive, gref) + size_of::<GrantRef>();
    assert_eq!(
        size_of::<GrantEntryV2Transitive>(),
        size_of::<GrantEntryV2>()
    );
    let rust = [
        const_as!("sizeof(grant_ref_t)" = size_of::<GrantRef>()),
        const_as!("sizeof(grant_handle_t)" = size_of::<GrantHandle>()),
        const_as!("sizeof(grant_status_t)" = size_of::<GrantStatus>()),
        const_as!("sizeof(xen_pfn_t)" = size_of::<u64>()),
        layout!(GrantEntryV1 => "struct grant_entry_v1" { flags, domid, frame }),
        layout!(GrantEntryHeader => "struct grant_entry_header" { flags, domid }),
        layout!(GrantEntryV2 => "union grant_entry_v2" { hdr }),
        size_align::<GrantEntryV2FullPage>("union grant_entry_v2.full_page"),
        offset!(GrantEntryV2FullPage => "union grant_entry_v2"."full_page.hdr" = hdr),
        offset!(GrantEntryV2FullPage => "union grant_entry_v2"."full_page.pad0" = pad0),
        offset!(GrantEntryV2FullPage => "union grant_entry_v2"."full_page.frame" = frame),
        size_align::<GrantEntryV2SubPage>("union grant_entry_v2.sub_page"),
        offset!(GrantEntryV2SubPage => "union grant_entry_v2"."sub_page.hdr" = hdr),
        offset!(GrantEntryV2SubPage => "union grant_entry_v2"."sub_page.page_off" = page_off),
        offset!(GrantEntryV2SubPage => "union grant_entry_v2"."sub_page.length" = length),
        offset!(GrantEntryV2SubPage => "union grant_entry_v2"."sub_page.frame" = frame),
        vec![
            Entry::new("size:union grant_entry_v2.transitive", transitive_end as i64),
            Entry::new("align:union grant_entry_v2.transitive", align_of::<GrantEntryV2Transitive>() as i64),
        ],
        offset!(GrantEntryV2Transitive => "union grant_entry_v2"."transitive.hdr" = hdr),
        offset!(GrantEntryV2Transitive => "union grant_entry_v2"."transitive.trans_domid" = trans_domid),
        offset!(GrantEntryV2Transitive => "union grant_entry_v2"."transitive.pad0" = pad0),
        offset!(GrantEntryV2Transitive => "union grant_entry_v2"."transitive.gref" = gref),
        layout!(GnttabMapGrantRef => "struct gnttab_map_grant_ref" {
            host_addr, flags, dom, status, handle, dev_bus_addr
        }),
        offset!(GnttabMapGrantRef => "struct gnttab_map_grant_ref"."ref" = r#ref),
        layout!(GnttabUnmapGrantRef => "struct gnttab_unmap_grant_ref" { host_addr, dev_bus_addr, handle, status }),
        layout!(GnttabSetupTable => "struct gnttab_setup_table" { dom, nr_frames, status, frame_list }),
        vec![Entry::new("size:struct gnttab_setup_table.frame_list", size_of::<u64>() as i64)],
        layout!(GnttabDumpTable => "struct gnttab_dump_table" { dom, status }),
        layout!(GnttabTransfer => "struct gnttab_transfer" { mfn, domid, status }),
        offset!(GnttabTransfer => "struct gnttab_transfer"."ref" = r#ref),
        layout!(GnttabCopyPtr => "struct gnttab_copy_ptr" { u, domid, offset }),
        offset!(GnttabCopyPtr => "struct gnttab_copy_ptr"."u.ref" = u),
        offset!(GnttabCopyPtr => "struct gnttab_copy_ptr"."u.gmfn" = u),
        size_align::<RefOrFrame>("struct gnttab_copy_ptr.u"),
        layout!(GnttabCopy => "struct gnttab_copy" { source, dest, len, flags, status }),
        layout!(GnttabQuerySize => "struct gnttab_query_size" { dom, nr_frames, max_nr_frames, status }),
        layout!(GnttabUnmapAndReplace => "struct gnttab_unmap_and_replace" { host_addr, new_addr, handle, status }),
        layout!(GnttabSetVersion => "struct gnttab_set_version" { version }),
        layout!(GnttabGetStatusFrames => "struct gnttab_get_status_frames" { nr_frames, dom, status, frame_list }),
        vec![Entry::new("size:struct gnttab_get_status_frames.frame_list", size_of::<u64>() as i64)],
        layout!(GnttabGetVersion => "struct gnttab_get_version" { dom, pad, version }),
        layout!(GnttabSwapGrantRef => "struct gnttab_swap_grant_ref" { ref_a, ref_b, status }),
        layout!(GnttabCacheFlush => "struct gnttab_cache_flush" { a, offset, length, op }),
        offset!(GnttabCacheFlush => "struct gnttab_cache_flush"."a.dev_bus_addr" = a),
        offset!(GnttabCacheFlush => "struct gnttab_cache_flush"."a.ref" = a),
        size_align::<RefOrFrame>("struct gnttab_cache_flush.a"),
        consts!(xen_abi::grant_table;
            GNTTAB_NR_RESERVED_ENTRIES, GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE,
            GTF_invalid, GTF_permit_access, GTF_accept_transfer, GTF_transitive, GTF_type_mask,
            _GTF_readonly, GTF_readonly, _GTF_reading, GTF_reading, _GTF_writing, GTF_writing,
            _GTF_PWT, GTF_PWT, _GTF_PCD, GTF_PCD, _GTF_PAT, GTF_PAT, _GTF_sub_page, GTF_sub_page,
            _GTF_transfer_committed, GTF_transfer_committed, _GTF_transfer_completed, GTF_transfer_completed,
            GNTTABOP_map_grant_ref, GNTTABOP_unmap_grant_ref, GNTTABOP_setup_table, GNTTABOP_dump_table,
            GNTTABOP_transfer, GNTTABOP_copy, GNTTABOP_query_size, GNTTABOP_unmap_and_replace,
            GNTTABOP_set_version, GNTTABOP_get_status_frames, GNTTABOP_get_version, GNTTABOP_swap_grant_ref,
            GNTTABOP_cache_flush,
            _GNTCOPY_source_gref, GNTCOPY_source_gref, _GNTCOPY_dest_gref, GNTCOPY_dest_gref,
            GNTTAB_CACHE_CLEAN, GNTTAB_CACHE_INVAL, GNTTAB_CACHE_SOURCE_GREF,
            _GNTMAP_device_map, GNTMAP_device_map, _GNTMAP_host_map, GNTMAP_host_map,
            _GNTMAP_readonly, GNTMAP_readonly, _GNTMAP_application_map, GNTMAP_application_map,
            _GNTMAP_contains_pte, GNTMAP_contains_pte, _GNTMAP_guest_avail0, GNTMAP_guest_avail_mask,
            GNTST_okay, GNTST_general_error, GNTST_bad_domain, GNTST_bad_gntref, GNTST_bad_handle,
            GNTST_bad_virt_addr, GNTST_bad_dev_addr, GNTST_no_device_space, GNTST_permission_denied,
            GNTST_bad_page, GNTST_bad_copy_arg, GNTST_address_too_big, GNTST_eagain, GNTST_no_space,
        ),
    ]
    .concat();
    check("grant_table", &c_table!(abi_table_grant_table), &rust);
}

unsafe extern "C" {
    fn blanket_gnttab_error_msg(i: usize) -> *const c_char;
}

/// `GNTTABOP_error_msgs` of the header, message by message, and the `GnttabStatus` that each indexes.
#[test]
fn error_messages_match_gnttabop_error_msgs() {
    let mut n = 0;
    loop {
        // SAFETY: the C function returns NULL or a pointer to a static NUL-terminated string literal.
        let ptr = unsafe { blanket_gnttab_error_msg(n) };
        if ptr.is_null() {
            break;
        }
        // SAFETY: non-null, so a static NUL-terminated string, as above.
        let c = unsafe { CStr::from_ptr(ptr) }
            .to_str()
            .expect("ASCII message");
        assert_eq!(
            xen_abi::grant_table::GNTTABOP_error_msgs.get(n).copied(),
            Some(c),
            "message {n}"
        );
        let status = GnttabStatus::try_from(-(n as i16)).expect("a GNTST_* code for each message");
        assert_eq!(status.message(), c);
        n += 1;
    }
    assert_eq!(n, xen_abi::grant_table::GNTTABOP_error_msgs.len());
}
