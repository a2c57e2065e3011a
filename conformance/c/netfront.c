/*
 * A netif front end written with Xen's own io/ring.h macros and io/netif.h types, for driving pv-backend's
 * netback through real shared pages (tests/netback_c_front.rs). Each function is one step of what a
 * netfront does on its TX or RX ring.
 */
#include <string.h>
#include <stdint.h>
#include <xen/io/ring.h>
#include <xen/io/netif.h>

/* xenctrl.h's barriers for x86_64. */
#define xen_barrier() asm volatile ("" ::: "memory")
#define xen_mb()  asm volatile ("lock addl $0, -32(%%rsp)" ::: "memory")
#define xen_rmb() xen_barrier()
#define xen_wmb() xen_barrier()

struct c_netfront {
    netif_tx_front_ring_t tx;
    netif_rx_front_ring_t rx;
};

size_t c_netfront_size(void);
size_t c_netfront_size(void)
{
    return sizeof(struct c_netfront);
}

/* SHARED_RING_INIT and FRONT_RING_INIT on one page each; returns the TX ring's size. */
unsigned int c_netfront_init(struct c_netfront *f, void *tx_page, void *rx_page);
unsigned int c_netfront_init(struct c_netfront *f, void *tx_page, void *rx_page)
{
    netif_tx_sring_t *txs = tx_page;
    netif_rx_sring_t *rxs = rx_page;
    SHARED_RING_INIT(txs);
    FRONT_RING_INIT(&f->tx, txs, 4096);
    SHARED_RING_INIT(rxs);
    FRONT_RING_INIT(&f->rx, rxs, 4096);
    return RING_SIZE(&f->tx);
}

/* Queues one TX request slot. */
int c_netfront_put_tx(struct c_netfront *f, uint32_t gref, uint16_t offset, uint16_t flags, uint16_t id,
                      uint16_t size);
int c_netfront_put_tx(struct c_netfront *f, uint32_t gref, uint16_t offset, uint16_t flags, uint16_t id,
                      uint16_t size)
{
    if (RING_FULL(&f->tx))
        return -1;
    netif_tx_request_t *req = RING_GET_REQUEST(&f->tx, f->tx.req_prod_pvt);
    req->gref = gref;
    req->offset = offset;
    req->flags = flags;
    req->id = id;
    req->size = size;
    f->tx.req_prod_pvt++;
    return 0;
}

/* Queues a GSO extra-info slot (after a request with NETTXF_extra_info). */
int c_netfront_put_tx_gso(struct c_netfront *f, uint16_t size, uint8_t type, uint8_t flags);
int c_netfront_put_tx_gso(struct c_netfront *f, uint16_t size, uint8_t type, uint8_t flags)
{
    if (RING_FULL(&f->tx))
        return -1;
    struct netif_extra_info *e = (struct netif_extra_info *)RING_GET_REQUEST(&f->tx, f->tx.req_prod_pvt);
    memset(e, 0, sizeof(*e));
    e->type = XEN_NETIF_EXTRA_TYPE_GSO;
    e->flags = flags;
    e->u.gso.size = size;
    e->u.gso.type = type;
    e->u.gso.features = 0;
    f->tx.req_prod_pvt++;
    return 0;
}

/* RING_PUSH_REQUESTS_AND_CHECK_NOTIFY on the TX ring; returns whether to notify. */
int c_netfront_push_tx(struct c_netfront *f);
int c_netfront_push_tx(struct c_netfront *f)
{
    int notify;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&f->tx, notify);
    return notify;
}

/* Takes one TX response; returns 1 if there was one. */
int c_netfront_pop_tx(struct c_netfront *f, uint16_t *id, int16_t *status);
int c_netfront_pop_tx(struct c_netfront *f, uint16_t *id, int16_t *status)
{
    if (!RING_HAS_UNCONSUMED_RESPONSES(&f->tx))
        return 0;
    xen_rmb();
    netif_tx_response_t *rsp = RING_GET_RESPONSE(&f->tx, f->tx.rsp_cons);
    *id = rsp->id;
    *status = rsp->status;
    f->tx.rsp_cons++;
    return 1;
}

/* RING_FINAL_CHECK_FOR_RESPONSES on the TX ring. */
int c_netfront_final_check_tx(struct c_netfront *f);
int c_netfront_final_check_tx(struct c_netfront *f)
{
    int more;
    RING_FINAL_CHECK_FOR_RESPONSES(&f->tx, more);
    return more;
}

/* Posts one RX buffer; returns -1 if the ring is full. */
int c_netfront_put_rx(struct c_netfront *f, uint16_t id, uint32_t gref);
int c_netfront_put_rx(struct c_netfront *f, uint16_t id, uint32_t gref)
{
    if (RING_FULL(&f->rx))
        return -1;
    netif_rx_request_t *req = RING_GET_REQUEST(&f->rx, f->rx.req_prod_pvt);
    req->id = id;
    req->gref = gref;
    f->rx.req_prod_pvt++;
    return 0;
}

int c_netfront_push_rx(struct c_netfront *f);
int c_netfront_push_rx(struct c_netfront *f)
{
    int notify;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&f->rx, notify);
    return notify;
}

/* Takes one RX response slot as its 8 raw bytes (a response, or an extra info after NETRXF_extra_info);
 * returns 1 if there was one. */
int c_netfront_pop_rx(struct c_netfront *f, uint8_t out[8]);
int c_netfront_pop_rx(struct c_netfront *f, uint8_t out[8])
{
    if (!RING_HAS_UNCONSUMED_RESPONSES(&f->rx))
        return 0;
    xen_rmb();
    memcpy(out, RING_GET_RESPONSE(&f->rx, f->rx.rsp_cons), 8);
    f->rx.rsp_cons++;
    return 1;
}
