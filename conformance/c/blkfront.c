/*
 * A blkif front end written with Xen's own io/ring.h macros and io/blkif.h types, for driving a blkback
 * through a real shared page (tests/blkback_c_front.rs). Each function is one step of what Linux's
 * blkfront or mini-os's blkfront does on its ring.
 */
#include <string.h>
#include <stdint.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>

/* xenctrl.h's barriers for x86_64. */
#define xen_barrier() asm volatile ("" ::: "memory")
#define xen_mb()  asm volatile ("lock addl $0, -32(%%rsp)" ::: "memory")
#define xen_rmb() xen_barrier()
#define xen_wmb() xen_barrier()

size_t c_blkfront_size(void)
{
    return sizeof(blkif_front_ring_t);
}

/* SHARED_RING_INIT and FRONT_RING_INIT on `bytes` bytes at `page`; returns RING_SIZE. */
unsigned int c_blkfront_init(blkif_front_ring_t *f, void *page, size_t bytes)
{
    blkif_sring_t *sring = page;
    SHARED_RING_INIT(sring);
    FRONT_RING_INIT(f, sring, bytes);
    return RING_SIZE(f);
}

unsigned int c_blkfront_free(blkif_front_ring_t *f)
{
    return RING_FREE_REQUESTS(f);
}

/* Queues a read/write/flush/barrier with `nseg` whole-page segments (first_sect 0, last_sect 7). */
int c_blkfront_put_rw(blkif_front_ring_t *f, uint8_t op, uint64_t id, uint64_t sector,
                      const uint32_t *grefs, uint8_t nseg)
{
    if (RING_FULL(f) || nseg > BLKIF_MAX_SEGMENTS_PER_REQUEST)
        return -1;
    blkif_request_t *req = RING_GET_REQUEST(f, f->req_prod_pvt);
    memset(req, 0, sizeof(*req));
    req->operation = op;
    req->nr_segments = nseg;
    req->handle = 0;
    req->id = id;
    req->sector_number = sector;
    for (unsigned int i = 0; i < nseg; i++) {
        req->seg[i].gref = grefs[i];
        req->seg[i].first_sect = 0;
        req->seg[i].last_sect = 7;
    }
    f->req_prod_pvt++;
    return 0;
}

/* Queues an indirect read or write: `nseg` whole-page segments written into the indirect page at
 * `indirect_page` (granted to the back end as `indirect_gref`). */
int c_blkfront_put_indirect(blkif_front_ring_t *f, uint8_t op, uint64_t id, uint64_t sector,
                            const uint32_t *grefs, uint16_t nseg, void *indirect_page,
                            uint32_t indirect_gref)
{
    if (RING_FULL(f) || nseg > 4096 / sizeof(struct blkif_request_segment))
        return -1;
    struct blkif_request_segment *segs = indirect_page;
    for (unsigned int i = 0; i < nseg; i++) {
        segs[i].gref = grefs[i];
        segs[i].first_sect = 0;
        segs[i].last_sect = 7;
    }
    blkif_request_indirect_t *req = (blkif_request_indirect_t *)RING_GET_REQUEST(f, f->req_prod_pvt);
    memset(req, 0, sizeof(blkif_request_t));
    req->operation = BLKIF_OP_INDIRECT;
    req->indirect_op = op;
    req->nr_segments = nseg;
    req->id = id;
    req->sector_number = sector;
    req->handle = 0;
    req->indirect_grefs[0] = indirect_gref;
    f->req_prod_pvt++;
    return 0;
}

/* RING_PUSH_REQUESTS_AND_CHECK_NOTIFY: returns whether to notify the back end. */
int c_blkfront_push(blkif_front_ring_t *f)
{
    int notify;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(f, notify);
    return notify;
}

/* Takes one response; returns 1 if there was one, 0 if not. The response's padding is reported too. */
int c_blkfront_pop(blkif_front_ring_t *f, uint64_t *id, uint8_t *op, int16_t *status, uint8_t *pad_or)
{
    if (!RING_HAS_UNCONSUMED_RESPONSES(f))
        return 0;
    blkif_response_t rsp;
    RING_COPY_RESPONSE(f, f->rsp_cons, &rsp);
    f->rsp_cons++;
    *id = rsp.id;
    *op = rsp.operation;
    *status = rsp.status;
    const uint8_t *b = (const uint8_t *)&rsp;
    *pad_or = b[9] | b[12] | b[13] | b[14] | b[15];
    return 1;
}

/* RING_FINAL_CHECK_FOR_RESPONSES: returns whether responses are waiting. */
int c_blkfront_final_check(blkif_front_ring_t *f)
{
    int work;
    RING_FINAL_CHECK_FOR_RESPONSES(f, work);
    return work;
}
