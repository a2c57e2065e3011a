/* The blkif layout entries shared by the native table (blkif.c) and the i386 one (x86_32/blkif.c). */
#ifndef BLANKET_BLKIF_LAYOUT_H
#define BLANKET_BLKIF_LAYOUT_H

#define BLKIF_LAYOUT_ENTRIES \
    ABI_TYPE(struct blkif_request_segment), \
    ABI_OFFSET(struct blkif_request_segment, gref), \
    ABI_OFFSET(struct blkif_request_segment, first_sect), \
    ABI_OFFSET(struct blkif_request_segment, last_sect), \
    \
    ABI_TYPE(blkif_request_t), \
    ABI_OFFSET(blkif_request_t, operation), \
    ABI_OFFSET(blkif_request_t, nr_segments), \
    ABI_OFFSET(blkif_request_t, handle), \
    ABI_OFFSET(blkif_request_t, id), \
    ABI_OFFSET(blkif_request_t, sector_number), \
    ABI_OFFSET(blkif_request_t, seg), \
    \
    ABI_TYPE(blkif_request_discard_t), \
    ABI_OFFSET(blkif_request_discard_t, operation), \
    ABI_OFFSET(blkif_request_discard_t, flag), \
    ABI_OFFSET(blkif_request_discard_t, handle), \
    ABI_OFFSET(blkif_request_discard_t, id), \
    ABI_OFFSET(blkif_request_discard_t, sector_number), \
    ABI_OFFSET(blkif_request_discard_t, nr_sectors), \
    \
    ABI_TYPE(blkif_request_indirect_t), \
    ABI_OFFSET(blkif_request_indirect_t, operation), \
    ABI_OFFSET(blkif_request_indirect_t, indirect_op), \
    ABI_OFFSET(blkif_request_indirect_t, nr_segments), \
    ABI_OFFSET(blkif_request_indirect_t, id), \
    ABI_OFFSET(blkif_request_indirect_t, sector_number), \
    ABI_OFFSET(blkif_request_indirect_t, handle), \
    ABI_OFFSET(blkif_request_indirect_t, indirect_grefs), \
    \
    ABI_TYPE(blkif_response_t), \
    ABI_OFFSET(blkif_response_t, id), \
    ABI_OFFSET(blkif_response_t, operation), \
    ABI_OFFSET(blkif_response_t, status), \
    \
    ABI_TYPE(union blkif_sring_entry), \
    ABI_OFFSET(union blkif_sring_entry, req), \
    ABI_OFFSET(union blkif_sring_entry, rsp),

#endif
