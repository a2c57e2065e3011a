/*
 * ring.h's own macros as the other end of a ring: the C peers of the interop tests and of the benchmark.
 *
 * For each protocol (blkif, and netif's tx ring) this file defines
 *   - a step API over ring.h's front/back ring structs, one macro each (for the lock-step tests);
 *   - front and back loops that serve n requests on one shared page, with event callbacks for sleeping
 *     (for the concurrent tests and the throughput benchmark).
 *
 * Request i and its response are built and checked with the same rules as the Rust peers in
 * src/ring_c.rs: the back end recomputes request i and answers with status 0 only if every field matches.
 */
#include <string.h>
#include <stdint.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>

/* xenctrl.h's barriers for x86_64. */
#define xen_barrier() asm volatile ("" ::: "memory")
#define xen_mb()  asm volatile ("lock addl $0, -32(%%rsp)" ::: "memory")
#define xen_rmb() xen_barrier()
#define xen_wmb() xen_barrier()

static inline void cpu_relax(void) { asm volatile ("pause" ::: "memory"); }

typedef void (*event_fn)(void *ctx);

/* What a loop did: notifications sent, sleeps taken, requests or responses handled, bad ones seen. */
struct peer_stats {
    uint64_t notifications;
    uint64_t waits;
    uint64_t done;
    uint64_t bad;
};

/* ---- request and response rules ---- */

static void blkif_make_request(uint64_t i, blkif_request_t *r)
{
    memset(r, 0, sizeof(*r));
    r->id = i * 0x9E3779B97F4A7C15ull;
    r->operation = (uint8_t)(i % 2);
    r->nr_segments = (uint8_t)(1 + i % 11);
    r->handle = (uint16_t)(i * 7);
    r->sector_number = i * 8;
    /* Two segments carry values; the rest stay zero. The whole request is compared byte for byte. */
    r->seg[0].gref = (grant_ref_t)(i * 16);
    r->seg[0].last_sect = 7;
    r->seg[10].gref = ~(grant_ref_t)i;
    r->seg[10].first_sect = (uint8_t)(i % 8);
    r->seg[10].last_sect = 7;
}

/* Both sides compare whole requests byte for byte (padding is zero on both: built zeroed). */
static int blkif_request_ok(uint64_t i, const blkif_request_t *got)
{
    blkif_request_t want;
    blkif_make_request(i, &want);
    return memcmp(got, &want, sizeof(want)) == 0;
}

static void blkif_make_response(const blkif_request_t *req, int ok, blkif_response_t *rsp)
{
    rsp->id = req->id;
    rsp->operation = req->operation;
    rsp->status = ok ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
}

static int blkif_response_ok(uint64_t i, const blkif_response_t *rsp)
{
    return rsp->id == i * 0x9E3779B97F4A7C15ull && rsp->operation == (uint8_t)(i % 2) &&
           rsp->status == BLKIF_RSP_OKAY;
}

static void netif_tx_make_request(uint64_t i, netif_tx_request_t *r)
{
    memset(r, 0, sizeof(*r));
    r->gref = (grant_ref_t)(i * 3 + 1);
    r->offset = (uint16_t)(i % 2048);
    r->flags = (uint16_t)(i % 16);
    r->id = (uint16_t)i;
    r->size = (uint16_t)(60 + i % 1400);
}

static int netif_tx_request_ok(uint64_t i, const netif_tx_request_t *got)
{
    netif_tx_request_t want;
    netif_tx_make_request(i, &want);
    return memcmp(got, &want, sizeof(want)) == 0;
}

static void netif_tx_make_response(const netif_tx_request_t *req, int ok, netif_tx_response_t *rsp)
{
    rsp->id = req->id;
    rsp->status = ok ? NETIF_RSP_OKAY : NETIF_RSP_ERROR;
}

static int netif_tx_response_ok(uint64_t i, const netif_tx_response_t *rsp)
{
    return rsp->id == (uint16_t)i && rsp->status == NETIF_RSP_OKAY;
}

/* ---- step API and loops, per protocol ---- */

#define DEFINE_PEERS(P, REQ_T, RSP_T)                                                                    \
                                                                                                         \
unsigned long c_##P##_front_ring_size(void);                                                             \
unsigned long c_##P##_front_ring_size(void) { return sizeof(P##_front_ring_t); }                         \
                                                                                                         \
/* XEN_FRONT_RING_INIT when init_shared, else FRONT_RING_ATTACH at idx. */                               \
void c_##P##_front_init(P##_front_ring_t *r, void *page, unsigned long bytes, int init_shared,           \
                        RING_IDX idx);                                                                   \
void c_##P##_front_init(P##_front_ring_t *r, void *page, unsigned long bytes, int init_shared,           \
                        RING_IDX idx)                                                                    \
{                                                                                                        \
    P##_sring_t *s = page;                                                                               \
    if (init_shared) {                                                                                   \
        XEN_FRONT_RING_INIT(r, s, bytes);                                                                \
    } else {                                                                                             \
        FRONT_RING_ATTACH(r, s, idx, bytes);                                                             \
    }                                                                                                    \
}                                                                                                        \
                                                                                                         \
void c_##P##_back_init(P##_back_ring_t *r, void *page, unsigned long bytes, RING_IDX idx);               \
void c_##P##_back_init(P##_back_ring_t *r, void *page, unsigned long bytes, RING_IDX idx)                \
{                                                                                                        \
    BACK_RING_ATTACH(r, (P##_sring_t *)page, idx, bytes);                                                \
}                                                                                                        \
                                                                                                         \
/* Writes request i privately; 0, or -1 when RING_FULL. */                                               \
int c_##P##_front_put(P##_front_ring_t *r, uint64_t i);                                                  \
int c_##P##_front_put(P##_front_ring_t *r, uint64_t i)                                                   \
{                                                                                                        \
    if (RING_FULL(r))                                                                                    \
        return -1;                                                                                       \
    P##_make_request(i, RING_GET_REQUEST(r, r->req_prod_pvt));                                           \
    r->req_prod_pvt++;                                                                                   \
    return 0;                                                                                            \
}                                                                                                        \
                                                                                                         \
int c_##P##_front_push_notify(P##_front_ring_t *r);                                                      \
int c_##P##_front_push_notify(P##_front_ring_t *r)                                                       \
{                                                                                                        \
    int notify;                                                                                          \
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(r, notify);                                                      \
    return notify;                                                                                       \
}                                                                                                        \
                                                                                                         \
void c_##P##_front_push(P##_front_ring_t *r);                                                            \
void c_##P##_front_push(P##_front_ring_t *r) { RING_PUSH_REQUESTS(r); }                                  \
                                                                                                         \
/* Takes the next response and checks it is the answer to request i: 1 good, 0 none, -1 bad. */         \
int c_##P##_front_pop(P##_front_ring_t *r, uint64_t i);                                                  \
int c_##P##_front_pop(P##_front_ring_t *r, uint64_t i)                                                   \
{                                                                                                        \
    RSP_T rsp;                                                                                           \
    if (!RING_HAS_UNCONSUMED_RESPONSES(r))                                                               \
        return 0;                                                                                        \
    xen_rmb();                                                                                           \
    RING_COPY_RESPONSE(r, r->rsp_cons, &rsp);                                                            \
    r->rsp_cons++;                                                                                       \
    return P##_response_ok(i, &rsp) ? 1 : -1;                                                            \
}                                                                                                        \
                                                                                                         \
int c_##P##_front_final_check(P##_front_ring_t *r);                                                      \
int c_##P##_front_final_check(P##_front_ring_t *r)                                                       \
{                                                                                                        \
    int more;                                                                                            \
    RING_FINAL_CHECK_FOR_RESPONSES(r, more);                                                             \
    return more != 0;                                                                                    \
}                                                                                                        \
                                                                                                         \
/* Takes the next request, checks it is request i and answers it (privately): 1 good, 0 none, -1 bad. */ \
int c_##P##_back_serve_one(P##_back_ring_t *r, uint64_t i);                                              \
int c_##P##_back_serve_one(P##_back_ring_t *r, uint64_t i)                                               \
{                                                                                                        \
    REQ_T req;                                                                                           \
    int ok;                                                                                              \
    if (!RING_HAS_UNCONSUMED_REQUESTS(r) || RING_REQUEST_CONS_OVERFLOW(r, r->req_cons))                  \
        return 0;                                                                                        \
    xen_rmb();                                                                                           \
    RING_COPY_REQUEST(r, r->req_cons, &req);                                                             \
    r->req_cons++;                                                                                       \
    ok = P##_request_ok(i, &req);                                                                        \
    P##_make_response(&req, ok, RING_GET_RESPONSE(r, r->rsp_prod_pvt));                                  \
    r->rsp_prod_pvt++;                                                                                   \
    return ok ? 1 : -1;                                                                                  \
}                                                                                                        \
                                                                                                         \
int c_##P##_back_push_notify(P##_back_ring_t *r);                                                        \
int c_##P##_back_push_notify(P##_back_ring_t *r)                                                         \
{                                                                                                        \
    int notify;                                                                                          \
    RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(r, notify);                                                     \
    return notify;                                                                                       \
}                                                                                                        \
                                                                                                         \
void c_##P##_back_push(P##_back_ring_t *r);                                                              \
void c_##P##_back_push(P##_back_ring_t *r) { RING_PUSH_RESPONSES(r); }                                   \
                                                                                                         \
int c_##P##_back_final_check(P##_back_ring_t *r);                                                        \
int c_##P##_back_final_check(P##_back_ring_t *r)                                                         \
{                                                                                                        \
    int more;                                                                                            \
    RING_FINAL_CHECK_FOR_REQUESTS(r, more);                                                              \
    return more != 0;                                                                                    \
}                                                                                                        \
                                                                                                         \
/* Batches, for the push and pop benchmarks: requests i.. put and pushed with the notify check; requests i..  \
 * served and their responses pushed with the notify check; responses i.. collected. Each returns how many  \
 * entries it handled (a bad one is counted in *bad). */                                                  \
unsigned c_##P##_front_put_batch(P##_front_ring_t *r, uint64_t i, unsigned n);                          \
unsigned c_##P##_front_put_batch(P##_front_ring_t *r, uint64_t i, unsigned n)                           \
{                                                                                                        \
    unsigned k;                                                                                          \
    int notify;                                                                                          \
    for (k = 0; k < n && !RING_FULL(r); k++) {                                                           \
        P##_make_request(i + k, RING_GET_REQUEST(r, r->req_prod_pvt));                                   \
        r->req_prod_pvt++;                                                                               \
    }                                                                                                    \
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(r, notify);                                                      \
    (void)notify;                                                                                        \
    return k;                                                                                            \
}                                                                                                        \
                                                                                                         \
unsigned c_##P##_back_serve_batch(P##_back_ring_t *r, uint64_t i, unsigned n, uint64_t *bad);           \
unsigned c_##P##_back_serve_batch(P##_back_ring_t *r, uint64_t i, unsigned n, uint64_t *bad)            \
{                                                                                                        \
    unsigned k = 0;                                                                                      \
    int notify;                                                                                          \
    while (k < n && RING_HAS_UNCONSUMED_REQUESTS(r)) {                                                   \
        REQ_T req;                                                                                       \
        int ok;                                                                                          \
        RING_COPY_REQUEST(r, r->req_cons, &req);                                                         \
        r->req_cons++;                                                                                   \
        ok = P##_request_ok(i + k, &req);                                                                \
        *bad += !ok;                                                                                     \
        P##_make_response(&req, ok, RING_GET_RESPONSE(r, r->rsp_prod_pvt));                              \
        r->rsp_prod_pvt++;                                                                               \
        k++;                                                                                             \
    }                                                                                                    \
    RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(r, notify);                                                     \
    (void)notify;                                                                                        \
    return k;                                                                                            \
}                                                                                                        \
                                                                                                         \
unsigned c_##P##_front_collect_batch(P##_front_ring_t *r, uint64_t i, unsigned n, uint64_t *bad);       \
unsigned c_##P##_front_collect_batch(P##_front_ring_t *r, uint64_t i, unsigned n, uint64_t *bad)        \
{                                                                                                        \
    unsigned k = 0;                                                                                      \
    while (k < n && RING_HAS_UNCONSUMED_RESPONSES(r)) {                                                  \
        RSP_T rsp;                                                                                       \
        RING_COPY_RESPONSE(r, r->rsp_cons, &rsp);                                                        \
        r->rsp_cons++;                                                                                   \
        *bad += !P##_response_ok(i + k, &rsp);                                                           \
        k++;                                                                                             \
    }                                                                                                    \
    return k;                                                                                            \
}                                                                                                        \
                                                                                                         \
/* Front loop: sends requests 0..n, collects and checks their n responses. Sleeps with `wait` (or spins  \
 * when it is NULL) only after RING_FINAL_CHECK_FOR_RESPONSES found nothing. */                          \
void c_##P##_front_run(void *page, unsigned long bytes, uint64_t n, event_fn notify, event_fn wait,      \
                       void *ctx, struct peer_stats *st);                                                \
void c_##P##_front_run(void *page, unsigned long bytes, uint64_t n, event_fn notify, event_fn wait,      \
                       void *ctx, struct peer_stats *st)                                                 \
{                                                                                                        \
    P##_front_ring_t ring, *r = &ring;                                                                   \
    uint64_t sent = 0, got = 0;                                                                          \
    FRONT_RING_ATTACH(r, (P##_sring_t *)page, 0, bytes);                                                 \
    while (got < n) {                                                                                    \
        int notify_now, more;                                                                            \
        uint64_t before = got;                                                                           \
        while (sent < n && !RING_FULL(r)) {                                                              \
            P##_make_request(sent, RING_GET_REQUEST(r, r->req_prod_pvt));                                \
            r->req_prod_pvt++;                                                                           \
            sent++;                                                                                      \
        }                                                                                                \
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(r, notify_now);                                              \
        if (notify_now) {                                                                                \
            st->notifications++;                                                                         \
            if (notify)                                                                                  \
                notify(ctx);                                                                             \
        }                                                                                                \
        do {                                                                                             \
            RING_IDX rp = r->sring->rsp_prod, rc = r->rsp_cons;                                          \
            xen_rmb();                                                                                   \
            for (; rc != rp; rc++) {                                                                     \
                RSP_T rsp;                                                                               \
                RING_COPY_RESPONSE(r, rc, &rsp);                                                         \
                if (!P##_response_ok(got, &rsp))                                                         \
                    st->bad++;                                                                           \
                got++;                                                                                   \
            }                                                                                            \
            r->rsp_cons = rc;                                                                            \
            if (got == n)                                                                                \
                break;                                                                                   \
            if (sent < n && !RING_FULL(r))                                                               \
                break;                                                                                   \
            RING_FINAL_CHECK_FOR_RESPONSES(r, more);                                                     \
        } while (more);                                                                                  \
        if (got == before && got < n && (sent == n || RING_FULL(r))) {                                   \
            st->waits++;                                                                                 \
            if (wait)                                                                                    \
                wait(ctx);                                                                               \
            else                                                                                         \
                cpu_relax();                                                                             \
        }                                                                                                \
    }                                                                                                    \
    st->done = got;                                                                                      \
}                                                                                                        \
                                                                                                         \
/* Back loop: answers n requests, checking each, and sleeps only after RING_FINAL_CHECK_FOR_REQUESTS. */ \
void c_##P##_back_run(void *page, unsigned long bytes, uint64_t n, event_fn notify, event_fn wait,       \
                      void *ctx, struct peer_stats *st);                                                 \
void c_##P##_back_run(void *page, unsigned long bytes, uint64_t n, event_fn notify, event_fn wait,       \
                      void *ctx, struct peer_stats *st)                                                  \
{                                                                                                        \
    P##_back_ring_t ring, *r = &ring;                                                                    \
    uint64_t done = 0;                                                                                   \
    BACK_RING_ATTACH(r, (P##_sring_t *)page, 0, bytes);                                                  \
    while (done < n) {                                                                                   \
        int notify_now, more;                                                                            \
        RING_IDX rp = r->sring->req_prod, rc = r->req_cons;                                              \
        xen_rmb();                                                                                       \
        for (; rc != rp && !RING_REQUEST_CONS_OVERFLOW(r, rc); rc++) {                                   \
            REQ_T req;                                                                                   \
            int ok;                                                                                      \
            RING_COPY_REQUEST(r, rc, &req);                                                              \
            ok = P##_request_ok(done, &req);                                                             \
            if (!ok)                                                                                     \
                st->bad++;                                                                               \
            P##_make_response(&req, ok, RING_GET_RESPONSE(r, r->rsp_prod_pvt));                          \
            r->rsp_prod_pvt++;                                                                           \
            done++;                                                                                      \
        }                                                                                                \
        r->req_cons = rc;                                                                                \
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(r, notify_now);                                             \
        if (notify_now) {                                                                                \
            st->notifications++;                                                                         \
            if (notify)                                                                                  \
                notify(ctx);                                                                             \
        }                                                                                                \
        if (done == n)                                                                                   \
            break;                                                                                       \
        RING_FINAL_CHECK_FOR_REQUESTS(r, more);                                                          \
        if (!more) {                                                                                     \
            st->waits++;                                                                                 \
            if (wait)                                                                                    \
                wait(ctx);                                                                               \
            else                                                                                         \
                cpu_relax();                                                                             \
        }                                                                                                \
    }                                                                                                    \
    st->done = done;                                                                                     \
}

/* One thread plays both ends: rounds of `batch` requests put, pushed, served, pushed back and collected.
 * Returns the number of bad entries seen. This is the single-thread cost of the macros, inlined. */
#define DEFINE_SINGLE_THREAD(P, REQ_T, RSP_T)                                                            \
uint64_t c_##P##_single_thread(void *page, unsigned long bytes, uint64_t rounds, unsigned batch);        \
uint64_t c_##P##_single_thread(void *page, unsigned long bytes, uint64_t rounds, unsigned batch)         \
{                                                                                                        \
    P##_front_ring_t front, *f = &front;                                                                 \
    P##_back_ring_t back, *b = &back;                                                                    \
    uint64_t round, sent = 0, served = 0, got = 0, bad = 0;                                              \
    int notify;                                                                                          \
    XEN_FRONT_RING_INIT(f, (P##_sring_t *)page, bytes);                                                  \
    BACK_RING_INIT(b, (P##_sring_t *)page, bytes);                                                       \
    for (round = 0; round < rounds; round++) {                                                           \
        unsigned k;                                                                                      \
        for (k = 0; k < batch && !RING_FULL(f); k++) {                                                   \
            P##_make_request(sent++, RING_GET_REQUEST(f, f->req_prod_pvt));                              \
            f->req_prod_pvt++;                                                                           \
        }                                                                                                \
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(f, notify);                                                  \
        while (RING_HAS_UNCONSUMED_REQUESTS(b)) {                                                        \
            REQ_T req;                                                                                   \
            int ok;                                                                                      \
            RING_COPY_REQUEST(b, b->req_cons, &req);                                                     \
            b->req_cons++;                                                                               \
            ok = P##_request_ok(served++, &req);                                                         \
            bad += !ok;                                                                                  \
            P##_make_response(&req, ok, RING_GET_RESPONSE(b, b->rsp_prod_pvt));                          \
            b->rsp_prod_pvt++;                                                                           \
        }                                                                                                \
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(b, notify);                                                 \
        RING_FINAL_CHECK_FOR_REQUESTS(b, notify);                                                        \
        while (RING_HAS_UNCONSUMED_RESPONSES(f)) {                                                       \
            RSP_T rsp;                                                                                   \
            RING_COPY_RESPONSE(f, f->rsp_cons, &rsp);                                                    \
            f->rsp_cons++;                                                                               \
            bad += !P##_response_ok(got++, &rsp);                                                        \
        }                                                                                                \
        RING_FINAL_CHECK_FOR_RESPONSES(f, notify);                                                       \
    }                                                                                                    \
    (void)notify;                                                                                        \
    return bad;                                                                                          \
}

DEFINE_PEERS(blkif, blkif_request_t, blkif_response_t)
DEFINE_PEERS(netif_tx, netif_tx_request_t, netif_tx_response_t)
DEFINE_SINGLE_THREAD(blkif, blkif_request_t, blkif_response_t)
DEFINE_SINGLE_THREAD(netif_tx, netif_tx_request_t, netif_tx_response_t)
