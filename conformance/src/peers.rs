//! The Rust peers: the same request and response rules as `c/ring_peers.c`, and the same loops, written with
//! `xen_abi::ring`.

use xen_abi::ring::{BackRing, FrontRing, RingError, RingMemory, RingProtocol};

/// What a loop did; the layout of `struct peer_stats` in `c/ring_peers.c`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PeerStats {
    /// Notifications sent (push-and-check-notify said yes).
    pub notifications: u64,
    /// Times the loop slept (or spun once) after a final check found nothing.
    pub waits: u64,
    /// Requests answered (back) or responses collected (front).
    pub done: u64,
    /// Requests or responses that were not the expected ones.
    pub bad: u64,
}

/// Event channels between the two ends of a ring, as seen from one end.
pub trait Events: Sync {
    /// Sends an event to the other end.
    fn notify(&self);
    /// Sleeps until an event from the other end arrives (or returns at once if one is pending).
    fn wait(&self);
}

/// A ring protocol with the test rules: request `i`, and the response that checks it.
pub trait Proto: RingProtocol {
    /// Request number `i`.
    fn make_request(i: u64) -> Self::Request;
    /// The answer to `req`: success when `ok`.
    fn make_response(req: &Self::Request, ok: bool) -> Self::Response;
    /// Whether `rsp` is the successful answer to request `i`.
    fn response_ok(i: u64, rsp: &Self::Response) -> bool;
    /// Whether `req` is request `i`, compared byte for byte (as the C peers do with `memcmp`).
    fn request_ok(i: u64, req: &Self::Request) -> bool {
        use zerocopy::IntoBytes;
        req.as_bytes() == Self::make_request(i).as_bytes()
    }
}

/// The blkif ring (`xen_abi::blkif::Blkif`).
pub use xen_abi::blkif::Blkif as blkif;
/// The netif TX ring (`xen_abi::netif::NetifTx`).
pub use xen_abi::netif::NetifTx as netif_tx;

impl Proto for blkif {
    fn make_request(i: u64) -> Self::Request {
        use xen_abi::blkif::BlkifRequest;
        use zerocopy::FromZeros;
        let mut r = BlkifRequest::new_zeroed();
        r.id = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        r.operation = (i % 2) as u8;
        r.nr_segments = (1 + i % 11) as u8;
        r.handle = i.wrapping_mul(7) as u16;
        r.sector_number = i.wrapping_mul(8);
        // Two segments carry values; the rest stay zero. The whole request is compared byte for byte.
        r.seg[0].gref = i.wrapping_mul(16) as u32;
        r.seg[0].last_sect = 7;
        r.seg[10].gref = !(i as u32);
        r.seg[10].first_sect = (i % 8) as u8;
        r.seg[10].last_sect = 7;
        r
    }
    fn make_response(req: &Self::Request, ok: bool) -> Self::Response {
        use xen_abi::blkif::{BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, BlkifResponse};
        BlkifResponse::new(
            req.id,
            req.operation,
            if ok { BLKIF_RSP_OKAY } else { BLKIF_RSP_ERROR },
        )
    }
    fn response_ok(i: u64, rsp: &Self::Response) -> bool {
        rsp.id == i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            && rsp.operation == (i % 2) as u8
            && rsp.status == xen_abi::blkif::BLKIF_RSP_OKAY
    }
}

impl Proto for netif_tx {
    fn make_request(i: u64) -> Self::Request {
        use xen_abi::netif::NetifTxRequest;
        use zerocopy::FromZeros;
        let mut r = NetifTxRequest::new_zeroed();
        r.gref = i.wrapping_mul(3).wrapping_add(1) as u32;
        r.offset = (i % 2048) as u16;
        r.flags = (i % 16) as u16;
        r.id = i as u16;
        r.size = (60 + i % 1400) as u16;
        r
    }
    fn make_response(req: &Self::Request, ok: bool) -> Self::Response {
        use xen_abi::netif::{NETIF_RSP_ERROR, NETIF_RSP_OKAY, NetifTxResponse};
        NetifTxResponse::new(req.id, if ok { NETIF_RSP_OKAY } else { NETIF_RSP_ERROR })
    }
    fn response_ok(i: u64, rsp: &Self::Response) -> bool {
        rsp.id == i as u16 && rsp.status == xen_abi::netif::NETIF_RSP_OKAY
    }
}

/// The Rust front loop, step for step the C one: send requests `0..n`, collect and check the responses,
/// sleep only after a final check found nothing (spin when `events` is `None`).
pub fn rust_front_run<P, M, E>(mem: M, n: u64, events: Option<&E>) -> Result<PeerStats, RingError>
where
    P: Proto,
    M: RingMemory,
    E: Events,
{
    let mut ring = FrontRing::<M, P>::attach(mem, 0)?;
    let mut st = PeerStats::default();
    let (mut sent, mut got) = (0u64, 0u64);
    while got < n {
        let before = got;
        while sent < n && ring.put_request(&P::make_request(sent)).is_ok() {
            sent += 1;
        }
        if ring.push_requests_and_check_notify() {
            st.notifications += 1;
            if let Some(e) = events {
                e.notify();
            }
        }
        loop {
            while let Some(rsp) = ring.pop_response()? {
                if !P::response_ok(got, &rsp) {
                    st.bad += 1;
                }
                got += 1;
            }
            if got == n || (sent < n && !ring.is_full()) || !ring.final_check_for_responses()? {
                break;
            }
        }
        if got == before && got < n && (sent == n || ring.is_full()) {
            st.waits += 1;
            match events {
                Some(e) => e.wait(),
                None => std::hint::spin_loop(),
            }
        }
    }
    st.done = got;
    Ok(st)
}

/// The Rust back loop, step for step the C one: answer `n` requests, checking each.
pub fn rust_back_run<P, M, E>(mem: M, n: u64, events: Option<&E>) -> Result<PeerStats, RingError>
where
    P: Proto,
    M: RingMemory,
    E: Events,
{
    let mut ring = BackRing::<M, P>::attach(mem, 0)?;
    let mut st = PeerStats::default();
    let mut done = 0u64;
    while done < n {
        while let Some(req) = ring.pop_request()? {
            let ok = P::request_ok(done, &req);
            if !ok {
                st.bad += 1;
            }
            ring.put_response(&P::make_response(&req, ok))?;
            done += 1;
        }
        if ring.push_responses_and_check_notify() {
            st.notifications += 1;
            if let Some(e) = events {
                e.notify();
            }
        }
        if done == n {
            break;
        }
        if !ring.final_check_for_requests()? {
            st.waits += 1;
            match events {
                Some(e) => e.wait(),
                None => std::hint::spin_loop(),
            }
        }
    }
    st.done = done;
    Ok(st)
}

/// The Rust twin of `c_blkif_single_thread`: one thread plays both ends, `rounds` rounds of `batch` requests.
/// Returns the number of wrong entries seen.
pub fn rust_single_thread_run<P, M>(mem: M, rounds: u64, batch: u32) -> Result<u64, RingError>
where
    P: Proto,
    M: RingMemory + Copy,
{
    let mut front = FrontRing::<M, P>::new(mem)?;
    let mut back = BackRing::<M, P>::new(mem)?;
    let (mut sent, mut served, mut got, mut bad) = (0u64, 0u64, 0u64, 0u64);
    for _ in 0..rounds {
        for _ in 0..batch {
            if front.put_request(&P::make_request(sent)).is_err() {
                break;
            }
            sent += 1;
        }
        std::hint::black_box(front.push_requests_and_check_notify());
        while let Some(req) = back.pop_request()? {
            let ok = P::request_ok(served, &req);
            served += 1;
            bad += u64::from(!ok);
            back.put_response(&P::make_response(&req, ok))?;
        }
        std::hint::black_box(back.push_responses_and_check_notify());
        std::hint::black_box(back.final_check_for_requests()?);
        while let Some(rsp) = front.pop_response()? {
            bad += u64::from(!P::response_ok(got, &rsp));
            got += 1;
        }
        std::hint::black_box(front.final_check_for_responses()?);
    }
    Ok(bad)
}

/// Puts requests `i..i + n` (as many as fit) and pushes them with the notify check: the Rust twin of
/// `c_blkif_front_put_batch`. Returns how many were put.
pub fn front_put_batch<P: Proto, M: RingMemory>(ring: &mut FrontRing<M, P>, i: u64, n: u32) -> u32 {
    let mut k = 0;
    while k < n && ring.put_request(&P::make_request(i + u64::from(k))).is_ok() {
        k += 1;
    }
    std::hint::black_box(ring.push_requests_and_check_notify());
    k
}

/// Serves up to `n` requests (expected to be requests `i..`) and pushes the responses with the notify check;
/// counts wrong ones in `bad`. Returns how many were served.
pub fn back_serve_batch<P: Proto, M: RingMemory>(
    ring: &mut BackRing<M, P>,
    i: u64,
    n: u32,
    bad: &mut u64,
) -> Result<u32, RingError> {
    let mut k = 0;
    while k < n {
        let Some(req) = ring.pop_request()? else {
            break;
        };
        let ok = P::request_ok(i + u64::from(k), &req);
        *bad += u64::from(!ok);
        ring.put_response(&P::make_response(&req, ok))?;
        k += 1;
    }
    std::hint::black_box(ring.push_responses_and_check_notify());
    Ok(k)
}

/// Collects up to `n` responses (expected to answer requests `i..`); counts wrong ones in `bad`. Returns how
/// many were collected.
pub fn front_collect_batch<P: Proto, M: RingMemory>(
    ring: &mut FrontRing<M, P>,
    i: u64,
    n: u32,
    bad: &mut u64,
) -> Result<u32, RingError> {
    let mut k = 0;
    while k < n {
        let Some(rsp) = ring.pop_response()? else {
            break;
        };
        *bad += u64::from(!P::response_ok(i + u64::from(k), &rsp));
        k += 1;
    }
    Ok(k)
}
