//! A blkif front end made of ring.h's macros (`c/blkfront.c`), driving a blkback through a real shared
//! page: [`CBlkFront`].

use std::ffi::c_void;

unsafe extern "C" {
    fn c_blkfront_size() -> usize;
    fn c_blkfront_init(f: *mut c_void, page: *mut c_void, bytes: usize) -> u32;
    fn c_blkfront_free(f: *mut c_void) -> u32;
    fn c_blkfront_put_rw(
        f: *mut c_void,
        op: u8,
        id: u64,
        sector: u64,
        grefs: *const u32,
        nseg: u8,
    ) -> i32;
    fn c_blkfront_put_indirect(
        f: *mut c_void,
        op: u8,
        id: u64,
        sector: u64,
        grefs: *const u32,
        nseg: u16,
        indirect_page: *mut c_void,
        indirect_gref: u32,
    ) -> i32;
    fn c_blkfront_push(f: *mut c_void) -> i32;
    fn c_blkfront_pop(
        f: *mut c_void,
        id: *mut u64,
        op: *mut u8,
        status: *mut i16,
        pad_or: *mut u8,
    ) -> i32;
    fn c_blkfront_final_check(f: *mut c_void) -> i32;
}

/// A response as the C front end read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CResponse {
    /// `id`.
    pub id: u64,
    /// `operation`.
    pub operation: u8,
    /// `status`.
    pub status: i16,
    /// Whether every padding byte of the response was zero.
    pub padding_zero: bool,
}

/// `blkif_front_ring_t` over a shared page, driven by `c/blkfront.c`.
#[derive(Debug)]
pub struct CBlkFront {
    state: Vec<u64>,
    page: *mut u8,
}

impl CBlkFront {
    /// `SHARED_RING_INIT` and `FRONT_RING_INIT` on the ring at `page`.
    ///
    /// # Safety
    ///
    /// `page` must be valid for reads and writes of `bytes` bytes, 4096-byte aligned, for as long as the
    /// value is used, and used by nobody but a back end serving the ring.
    pub unsafe fn new(page: *mut u8, bytes: usize) -> Self {
        // SAFETY: a plain size query.
        let size = unsafe { c_blkfront_size() };
        let mut state = vec![0u64; size.div_ceil(8)];
        // SAFETY: `state` is large enough and 8-byte aligned for blkif_front_ring_t; the caller vouches for
        // the page.
        unsafe { c_blkfront_init(state.as_mut_ptr().cast(), page.cast(), bytes) };
        Self { state, page }
    }

    fn f(&mut self) -> *mut c_void {
        self.state.as_mut_ptr().cast()
    }

    /// `RING_FREE_REQUESTS`.
    pub fn free(&mut self) -> u32 {
        // SAFETY: `state` was initialised by `c_blkfront_init`.
        unsafe { c_blkfront_free(self.f()) }
    }

    /// Queues a request with whole-page segments; false if the ring is full.
    pub fn put_rw(&mut self, op: u8, id: u64, sector: u64, grefs: &[u32]) -> bool {
        let n = u8::try_from(grefs.len()).unwrap_or(u8::MAX);
        // SAFETY: `state` is initialised, `grefs` holds `n` entries (checked against 11 in C), and the ring
        // page is valid (the contract of `new`).
        unsafe { c_blkfront_put_rw(self.f(), op, id, sector, grefs.as_ptr(), n) == 0 }
    }

    /// Queues an indirect request whose segments go into `indirect_page` (granted as `indirect_gref`).
    ///
    /// # Safety
    ///
    /// `indirect_page` must be valid for writes of 4096 bytes.
    pub unsafe fn put_indirect(
        &mut self,
        op: u8,
        id: u64,
        sector: u64,
        grefs: &[u32],
        indirect_page: *mut u8,
        indirect_gref: u32,
    ) -> bool {
        let n = u16::try_from(grefs.len()).unwrap_or(u16::MAX);
        // SAFETY: as for `put_rw`; the caller vouches for the indirect page, and C checks `n <= 512`.
        unsafe {
            c_blkfront_put_indirect(
                self.f(),
                op,
                id,
                sector,
                grefs.as_ptr(),
                n,
                indirect_page.cast(),
                indirect_gref,
            ) == 0
        }
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: whether to notify.
    pub fn push(&mut self) -> bool {
        // SAFETY: `state` is initialised and the page valid.
        unsafe { c_blkfront_push(self.f()) != 0 }
    }

    /// Takes one response.
    pub fn pop(&mut self) -> Option<CResponse> {
        let (mut id, mut operation, mut status, mut pad) = (0, 0, 0, 0);
        // SAFETY: `state` is initialised, the page valid, the out-pointers point to locals.
        let got =
            unsafe { c_blkfront_pop(self.f(), &mut id, &mut operation, &mut status, &mut pad) };
        (got != 0).then_some(CResponse {
            id,
            operation,
            status,
            padding_zero: pad == 0,
        })
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`.
    pub fn final_check(&mut self) -> bool {
        // SAFETY: `state` is initialised and the page valid.
        unsafe { c_blkfront_final_check(self.f()) != 0 }
    }

    /// The ring page.
    pub fn page(&self) -> *mut u8 {
        self.page
    }
}
