/* Layouts and constants of grant_table.h (x86_64), for conformance/tests/layout_grant_table.rs. */
#include "abi_table.h"
#include <xen/xen.h>
#include <xen/grant_table.h>

#define MEMBER_SIZE(T, M) sizeof(((T *)0)->M)
#define MEMBER_ALIGN(T, M) _Alignof(__typeof__(((T *)0)->M))

static const struct abi_entry entries[] = {
    ABI_CONST(sizeof(grant_ref_t)),
    ABI_CONST(sizeof(grant_handle_t)),
    ABI_CONST(sizeof(grant_status_t)),
    ABI_CONST(sizeof(xen_pfn_t)),

    ABI_TYPE(struct grant_entry_v1),
    ABI_OFFSET(struct grant_entry_v1, flags),
    ABI_OFFSET(struct grant_entry_v1, domid),
    ABI_OFFSET(struct grant_entry_v1, frame),

    ABI_TYPE(struct grant_entry_header),
    ABI_OFFSET(struct grant_entry_header, flags),
    ABI_OFFSET(struct grant_entry_header, domid),

    ABI_TYPE(union grant_entry_v2),
    ABI_OFFSET(union grant_entry_v2, hdr),
    { "size:union grant_entry_v2.full_page", MEMBER_SIZE(union grant_entry_v2, full_page) },
    { "align:union grant_entry_v2.full_page", MEMBER_ALIGN(union grant_entry_v2, full_page) },
    ABI_OFFSET(union grant_entry_v2, full_page.hdr),
    ABI_OFFSET(union grant_entry_v2, full_page.pad0),
    ABI_OFFSET(union grant_entry_v2, full_page.frame),
    { "size:union grant_entry_v2.sub_page", MEMBER_SIZE(union grant_entry_v2, sub_page) },
    { "align:union grant_entry_v2.sub_page", MEMBER_ALIGN(union grant_entry_v2, sub_page) },
    ABI_OFFSET(union grant_entry_v2, sub_page.hdr),
    ABI_OFFSET(union grant_entry_v2, sub_page.page_off),
    ABI_OFFSET(union grant_entry_v2, sub_page.length),
    ABI_OFFSET(union grant_entry_v2, sub_page.frame),
    { "size:union grant_entry_v2.transitive", MEMBER_SIZE(union grant_entry_v2, transitive) },
    { "align:union grant_entry_v2.transitive", MEMBER_ALIGN(union grant_entry_v2, transitive) },
    ABI_OFFSET(union grant_entry_v2, transitive.hdr),
    ABI_OFFSET(union grant_entry_v2, transitive.trans_domid),
    ABI_OFFSET(union grant_entry_v2, transitive.pad0),
    ABI_OFFSET(union grant_entry_v2, transitive.gref),

    ABI_TYPE(struct gnttab_map_grant_ref),
    ABI_OFFSET(struct gnttab_map_grant_ref, host_addr),
    ABI_OFFSET(struct gnttab_map_grant_ref, flags),
    ABI_OFFSET(struct gnttab_map_grant_ref, ref),
    ABI_OFFSET(struct gnttab_map_grant_ref, dom),
    ABI_OFFSET(struct gnttab_map_grant_ref, status),
    ABI_OFFSET(struct gnttab_map_grant_ref, handle),
    ABI_OFFSET(struct gnttab_map_grant_ref, dev_bus_addr),

    ABI_TYPE(struct gnttab_unmap_grant_ref),
    ABI_OFFSET(struct gnttab_unmap_grant_ref, host_addr),
    ABI_OFFSET(struct gnttab_unmap_grant_ref, dev_bus_addr),
    ABI_OFFSET(struct gnttab_unmap_grant_ref, handle),
    ABI_OFFSET(struct gnttab_unmap_grant_ref, status),

    ABI_TYPE(struct gnttab_setup_table),
    ABI_OFFSET(struct gnttab_setup_table, dom),
    ABI_OFFSET(struct gnttab_setup_table, nr_frames),
    ABI_OFFSET(struct gnttab_setup_table, status),
    ABI_OFFSET(struct gnttab_setup_table, frame_list),
    { "size:struct gnttab_setup_table.frame_list", MEMBER_SIZE(struct gnttab_setup_table, frame_list) },

    ABI_TYPE(struct gnttab_dump_table),
    ABI_OFFSET(struct gnttab_dump_table, dom),
    ABI_OFFSET(struct gnttab_dump_table, status),

    ABI_TYPE(struct gnttab_transfer),
    ABI_OFFSET(struct gnttab_transfer, mfn),
    ABI_OFFSET(struct gnttab_transfer, domid),
    ABI_OFFSET(struct gnttab_transfer, ref),
    ABI_OFFSET(struct gnttab_transfer, status),

    ABI_TYPE(struct gnttab_copy_ptr),
    ABI_OFFSET(struct gnttab_copy_ptr, u),
    ABI_OFFSET(struct gnttab_copy_ptr, u.ref),
    ABI_OFFSET(struct gnttab_copy_ptr, u.gmfn),
    { "size:struct gnttab_copy_ptr.u", MEMBER_SIZE(struct gnttab_copy_ptr, u) },
    { "align:struct gnttab_copy_ptr.u", MEMBER_ALIGN(struct gnttab_copy_ptr, u) },
    ABI_OFFSET(struct gnttab_copy_ptr, domid),
    ABI_OFFSET(struct gnttab_copy_ptr, offset),

    ABI_TYPE(struct gnttab_copy),
    ABI_OFFSET(struct gnttab_copy, source),
    ABI_OFFSET(struct gnttab_copy, dest),
    ABI_OFFSET(struct gnttab_copy, len),
    ABI_OFFSET(struct gnttab_copy, flags),
    ABI_OFFSET(struct gnttab_copy, status),

    ABI_TYPE(struct gnttab_query_size),
    ABI_OFFSET(struct gnttab_query_size, dom),
    ABI_OFFSET(struct gnttab_query_size, nr_frames),
    ABI_OFFSET(struct gnttab_query_size, max_nr_frames),
    ABI_OFFSET(struct gnttab_query_size, status),

    ABI_TYPE(struct gnttab_unmap_and_replace),
    ABI_OFFSET(struct gnttab_unmap_and_replace, host_addr),
    ABI_OFFSET(struct gnttab_unmap_and_replace, new_addr),
    ABI_OFFSET(struct gnttab_unmap_and_replace, handle),
    ABI_OFFSET(struct gnttab_unmap_and_replace, status),

    ABI_TYPE(struct gnttab_set_version),
    ABI_OFFSET(struct gnttab_set_version, version),

    ABI_TYPE(struct gnttab_get_status_frames),
    ABI_OFFSET(struct gnttab_get_status_frames, nr_frames),
    ABI_OFFSET(struct gnttab_get_status_frames, dom),
    ABI_OFFSET(struct gnttab_get_status_frames, status),
    ABI_OFFSET(struct gnttab_get_status_frames, frame_list),
    { "size:struct gnttab_get_status_frames.frame_list", MEMBER_SIZE(struct gnttab_get_status_frames, frame_list) },

    ABI_TYPE(struct gnttab_get_version),
    ABI_OFFSET(struct gnttab_get_version, dom),
    ABI_OFFSET(struct gnttab_get_version, pad),
    ABI_OFFSET(struct gnttab_get_version, version),

    ABI_TYPE(struct gnttab_swap_grant_ref),
    ABI_OFFSET(struct gnttab_swap_grant_ref, ref_a),
    ABI_OFFSET(struct gnttab_swap_grant_ref, ref_b),
    ABI_OFFSET(struct gnttab_swap_grant_ref, status),

    ABI_TYPE(struct gnttab_cache_flush),
    ABI_OFFSET(struct gnttab_cache_flush, a),
    ABI_OFFSET(struct gnttab_cache_flush, a.dev_bus_addr),
    ABI_OFFSET(struct gnttab_cache_flush, a.ref),
    { "size:struct gnttab_cache_flush.a", MEMBER_SIZE(struct gnttab_cache_flush, a) },
    { "align:struct gnttab_cache_flush.a", MEMBER_ALIGN(struct gnttab_cache_flush, a) },
    ABI_OFFSET(struct gnttab_cache_flush, offset),
    ABI_OFFSET(struct gnttab_cache_flush, length),
    ABI_OFFSET(struct gnttab_cache_flush, op),

    ABI_CONST(GNTTAB_NR_RESERVED_ENTRIES),
    ABI_CONST(GNTTAB_RESERVED_CONSOLE),
    ABI_CONST(GNTTAB_RESERVED_XENSTORE),

    ABI_CONST(GTF_invalid),
    ABI_CONST(GTF_permit_access),
    ABI_CONST(GTF_accept_transfer),
    ABI_CONST(GTF_transitive),
    ABI_CONST(GTF_type_mask),
    ABI_CONST(_GTF_readonly),
    ABI_CONST(GTF_readonly),
    ABI_CONST(_GTF_reading),
    ABI_CONST(GTF_reading),
    ABI_CONST(_GTF_writing),
    ABI_CONST(GTF_writing),
    ABI_CONST(_GTF_PWT),
    ABI_CONST(GTF_PWT),
    ABI_CONST(_GTF_PCD),
    ABI_CONST(GTF_PCD),
    ABI_CONST(_GTF_PAT),
    ABI_CONST(GTF_PAT),
    ABI_CONST(_GTF_sub_page),
    ABI_CONST(GTF_sub_page),
    ABI_CONST(_GTF_transfer_committed),
    ABI_CONST(GTF_transfer_committed),
    ABI_CONST(_GTF_transfer_completed),
    ABI_CONST(GTF_transfer_completed),

    ABI_CONST(GNTTABOP_map_grant_ref),
    ABI_CONST(GNTTABOP_unmap_grant_ref),
    ABI_CONST(GNTTABOP_setup_table),
    ABI_CONST(GNTTABOP_dump_table),
    ABI_CONST(GNTTABOP_transfer),
    ABI_CONST(GNTTABOP_copy),
    ABI_CONST(GNTTABOP_query_size),
    ABI_CONST(GNTTABOP_unmap_and_replace),
    ABI_CONST(GNTTABOP_set_version),
    ABI_CONST(GNTTABOP_get_status_frames),
    ABI_CONST(GNTTABOP_get_version),
    ABI_CONST(GNTTABOP_swap_grant_ref),
    ABI_CONST(GNTTABOP_cache_flush),

    ABI_CONST(_GNTCOPY_source_gref),
    ABI_CONST(GNTCOPY_source_gref),
    ABI_CONST(_GNTCOPY_dest_gref),
    ABI_CONST(GNTCOPY_dest_gref),

    ABI_CONST(GNTTAB_CACHE_CLEAN),
    ABI_CONST(GNTTAB_CACHE_INVAL),
    ABI_CONST(GNTTAB_CACHE_SOURCE_GREF),

    ABI_CONST(_GNTMAP_device_map),
    ABI_CONST(GNTMAP_device_map),
    ABI_CONST(_GNTMAP_host_map),
    ABI_CONST(GNTMAP_host_map),
    ABI_CONST(_GNTMAP_readonly),
    ABI_CONST(GNTMAP_readonly),
    ABI_CONST(_GNTMAP_application_map),
    ABI_CONST(GNTMAP_application_map),
    ABI_CONST(_GNTMAP_contains_pte),
    ABI_CONST(GNTMAP_contains_pte),
    ABI_CONST(_GNTMAP_guest_avail0),
    ABI_CONST(GNTMAP_guest_avail_mask),

    ABI_CONST(GNTST_okay),
    ABI_CONST(GNTST_general_error),
    ABI_CONST(GNTST_bad_domain),
    ABI_CONST(GNTST_bad_gntref),
    ABI_CONST(GNTST_bad_handle),
    ABI_CONST(GNTST_bad_virt_addr),
    ABI_CONST(GNTST_bad_dev_addr),
    ABI_CONST(GNTST_no_device_space),
    ABI_CONST(GNTST_permission_denied),
    ABI_CONST(GNTST_bad_page),
    ABI_CONST(GNTST_bad_copy_arg),
    ABI_CONST(GNTST_address_too_big),
    ABI_CONST(GNTST_eagain),
    ABI_CONST(GNTST_no_space),
};

ABI_TABLE(grant_table, entries)

/* GNTTABOP_error_msgs, for comparing the messages: the message of status -i, or NULL past the end. */
const char *blanket_gnttab_error_msg(size_t i);
const char *blanket_gnttab_error_msg(size_t i)
{
    static const char *const msgs[] = GNTTABOP_error_msgs;
    return i < sizeof(msgs) / sizeof(msgs[0]) ? msgs[i] : NULL;
}
