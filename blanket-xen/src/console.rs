//! The PV console front-end: the guest's side of `struct xencons_interface` (`io/console.h`).
//!
//! The page holds two byte rings: `out` (2048 bytes, guest to back-end) and `in` (1024 bytes, back-end to
//! guest), each with a free-running producer and consumer index. The guest owns `out_prod` and `in_cons`
//! and keeps them privately; the back-end's `out_cons` and `in_prod` are copied once per call and checked,
//! so indices claiming more bytes than a ring holds are [`ConsoleFrontError::Ring`], never a read or write
//! outside the rings. Barriers are those of Linux's `hvc_xen` and mini-os: bytes are written before the
//! producer index (write barrier), and read before the consumer index is given back (full barrier); the
//! back-end is notified after each index update that moved bytes.

use core::sync::atomic::{Ordering, fence};

use xen_abi::console::{ConsoleError, XENCONS_IN_SIZE, XENCONS_OUT_SIZE, ring_used};
use xen_abi::event_channel::EvtchnPort;
use xen_abi::ring::RingMemory;

use crate::platform::{EventChannels, PlatformError, WaitEvent};
use crate::shmem;

const IN: usize = 0;
const OUT: usize = XENCONS_IN_SIZE as usize;
const IN_CONS: usize = OUT + XENCONS_OUT_SIZE as usize;
const IN_PROD: usize = IN_CONS + 4;
const OUT_CONS: usize = IN_CONS + 8;
const OUT_PROD: usize = IN_CONS + 12;
const PAGE_NEED: usize = IN_CONS + 16;

/// What can go wrong on the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleFrontError {
    /// The back-end's index is inconsistent with ours.
    #[error("console back-end's {ring} index is inconsistent: {source}")]
    Ring {
        /// `"out"` or `"in"`.
        ring: &'static str,
        /// The check that failed.
        #[source]
        source: ConsoleError,
    },
    /// The back-end did not make room for the output in time.
    #[error(
        "the console back-end consumed nothing for {timeout_ns} ns; {written} bytes were written"
    )]
    Timeout {
        /// The timeout.
        timeout_ns: u64,
        /// Bytes written before it passed.
        written: usize,
    },
    /// The page is too small to be a console page.
    #[error("console page of {len} bytes is too small (needs {need})")]
    PageTooSmall {
        /// Its length.
        len: usize,
        /// What it needs.
        need: usize,
    },
    /// The page is not 4-byte aligned (its indices are `u32`).
    #[error("console page at {addr:#x} is not 4-byte aligned")]
    PageMisaligned {
        /// Its address.
        addr: usize,
    },
    /// The event channel failed.
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

/// The guest side of a PV console.
pub struct ConsoleFront<P, M> {
    platform: P,
    page: M,
    port: EvtchnPort,
    timeout_ns: u64,
    out_prod: u32,
    in_cons: u32,
}

impl<P, M> core::fmt::Debug for ConsoleFront<P, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ConsoleFront")
            .field("port", &self.port)
            .field("out_prod", &self.out_prod)
            .field("in_cons", &self.in_cons)
            .finish_non_exhaustive()
    }
}

impl<P: EventChannels + WaitEvent, M: RingMemory> ConsoleFront<P, M> {
    /// The console on `page` (`start_info.console.domU.mfn`) and `port` (`.evtchn`); blocking writes give up
    /// after `timeout_ns` without progress. The guest's own indices start from what the page holds.
    pub fn new(
        platform: P,
        page: M,
        port: EvtchnPort,
        timeout_ns: u64,
    ) -> Result<Self, ConsoleFrontError> {
        if page.len() < PAGE_NEED {
            return Err(ConsoleFrontError::PageTooSmall {
                len: page.len(),
                need: PAGE_NEED,
            });
        }
        let addr = page.as_ptr() as usize;
        if addr % 4 != 0 {
            return Err(ConsoleFrontError::PageMisaligned { addr });
        }
        let out_prod = shmem::atomic_u32(&page, OUT_PROD).load(Ordering::Acquire);
        let in_cons = shmem::atomic_u32(&page, IN_CONS).load(Ordering::Acquire);
        Ok(Self {
            platform,
            page,
            port,
            timeout_ns,
            out_prod,
            in_cons,
        })
    }

    /// Writes as much of `data` as fits into the `out` ring now, notifies the back-end if anything was
    /// written, and returns how many bytes were.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, ConsoleFrontError> {
        let cons = shmem::atomic_u32(&self.page, OUT_CONS).load(Ordering::Acquire);
        let used = ring_used(XENCONS_OUT_SIZE, cons, self.out_prod).map_err(|source| {
            ConsoleFrontError::Ring {
                ring: "out",
                source,
            }
        })?;
        let n = data.len().min((XENCONS_OUT_SIZE - used) as usize);
        if n == 0 {
            return Ok(0);
        }
        let start = (self.out_prod & (XENCONS_OUT_SIZE - 1)) as usize;
        let first = n.min(XENCONS_OUT_SIZE as usize - start);
        shmem::write(&self.page, OUT + start, &data[..first]);
        shmem::write(&self.page, OUT, &data[first..n]);
        // `wmb()`: the bytes before the index that publishes them.
        fence(Ordering::Release);
        self.out_prod = self.out_prod.wrapping_add(n as u32);
        shmem::atomic_u32(&self.page, OUT_PROD).store(self.out_prod, Ordering::Release);
        self.page.mark_dirty(OUT_PROD, 4);
        self.platform.notify(self.port)?;
        Ok(n)
    }

    /// Writes all of `data`, waiting for the back-end to make room; gives up after the timeout passes
    /// without progress.
    pub fn write_all(&mut self, mut data: &[u8]) -> Result<(), ConsoleFrontError> {
        let mut written = 0;
        let mut deadline = self.platform.now_ns().saturating_add(self.timeout_ns);
        while !data.is_empty() {
            let n = self.write(data)?;
            if n > 0 {
                written += n;
                data = &data[n..];
                deadline = self.platform.now_ns().saturating_add(self.timeout_ns);
                continue;
            }
            let now = self.platform.now_ns();
            if now >= deadline {
                return Err(ConsoleFrontError::Timeout {
                    timeout_ns: self.timeout_ns,
                    written,
                });
            }
            self.platform.wait(self.port, deadline - now)?;
        }
        Ok(())
    }

    /// Copies the input waiting in the `in` ring into `buf` (as much as fits), gives the room back to the
    /// back-end, and returns how many bytes were read.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ConsoleFrontError> {
        let prod = shmem::atomic_u32(&self.page, IN_PROD).load(Ordering::Acquire);
        let used = ring_used(XENCONS_IN_SIZE, self.in_cons, prod)
            .map_err(|source| ConsoleFrontError::Ring { ring: "in", source })?;
        let n = buf.len().min(used as usize);
        if n == 0 {
            return Ok(0);
        }
        let start = (self.in_cons & (XENCONS_IN_SIZE - 1)) as usize;
        let first = n.min(XENCONS_IN_SIZE as usize - start);
        let (a, b) = buf[..n].split_at_mut(first);
        shmem::read(&self.page, IN + start, a);
        shmem::read(&self.page, IN, b);
        // `mb()`: the bytes are read before their room is given back.
        fence(Ordering::SeqCst);
        self.in_cons = self.in_cons.wrapping_add(n as u32);
        shmem::atomic_u32(&self.page, IN_CONS).store(self.in_cons, Ordering::Release);
        self.page.mark_dirty(IN_CONS, 4);
        self.platform.notify(self.port)?;
        Ok(n)
    }

    /// Waits up to `timeout_ns` for input, then reads it as [`read`](Self::read) does (0 when none came).
    pub fn read_wait(
        &mut self,
        buf: &mut [u8],
        timeout_ns: u64,
    ) -> Result<usize, ConsoleFrontError> {
        let deadline = self.platform.now_ns().saturating_add(timeout_ns);
        // Bounded by the deadline.
        loop {
            let n = self.read(buf)?;
            let now = self.platform.now_ns();
            if n > 0 || now >= deadline || buf.is_empty() {
                return Ok(n);
            }
            self.platform.wait(self.port, deadline - now)?;
        }
    }
}
