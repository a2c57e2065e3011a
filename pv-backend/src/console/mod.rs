//! The PV console back end: a guest's `struct xencons_interface` (`io/console.h`) served to a
//! [`ConsoleSink`] (a log file, a pty or a Unix socket), as xenconsoled does.
//!
//! [`ConsoleBackend`] owns the indices it produces (`out_cons`, `in_prod`) privately and only ever
//! writes them to the page; the guest's (`out_prod`, `in_cons`) are loaded once per pass and
//! checked before any byte is copied. A guest whose `prod - cons` exceeds a ring's size has a
//! broken ring: the back end returns [`ConsoleError::RingIndex`] and closes the console (nothing
//! more is read or written for it). The sink's and the guest's speeds are decoupled by a bounded
//! buffer ([`ConsoleConfig::buffer_limit`], xenconsoled's `console/limit`) with xenconsoled's two
//! overflow policies ([`Overflow`]).
//!
//! # Rate limiting
//!
//! xenconsoled (`tools/console/daemon/io.c`) allows each console `RATE_LIMIT_ALLOWANCE` = 30
//! events per `RATE_LIMIT_PERIOD` = 200 ms: once a console has had 30 events in the current
//! period, its event channel stays masked (its ring is not read) until the period ends, when the
//! count is reset. Since each event drains the 2048-byte output ring, that also bounds the bytes
//! per period. [`RateLimit`] has both budgets explicitly: `events` (xenconsoled's) and `bytes`
//! (default 30 × 2048, the bound xenconsoled's event budget implies); the first one exhausted
//! suspends the console until the period ends. A suspension is reported once per flood (a
//! `tracing` warning and [`ConsoleStats::suspensions`]); the guest meanwhile sees a full ring and
//! waits, as under xenconsoled.
//!
//! Time is passed in (`now`), so that the hypervisor's event loop decides when to call, and tests
//! are deterministic; [`ConsoleBackend::resume_at`] says when a suspended console wants its next
//! call.

mod page;
mod sink;
pub mod xs;

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use tracing::warn;
use xen_abi::DomId;
use xen_abi::console::{XENCONS_IN_SIZE, XENCONS_OUT_SIZE, ring_used};
use xen_abi::ring::RingMemory;

pub use page::{ConsoleIndex, ConsolePage, XENCONS_INTERFACE_SIZE};
pub use sink::{ConsoleSink, LogFile, Pty, UnixSocketSink};

pub use crate::xenstore::ring::EventChannel;

/// What can go wrong serving a console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The memory given for the page is smaller than `struct xencons_interface`.
    #[error("console page of {len} bytes is smaller than struct xencons_interface ({need} bytes)")]
    PageTooSmall {
        /// The memory's length.
        len: usize,
        /// The size needed.
        need: usize,
    },
    /// The memory given for the page is not aligned to 4.
    #[error("console page at {addr:#x} is not aligned to 4 bytes (the indices are u32)")]
    PageMisaligned {
        /// The address.
        addr: usize,
    },
    /// The guest's indices claim more bytes than the ring holds: the ring is broken and the
    /// console is closed.
    #[error(
        "domain {domid}: broken console {ring} ring ({source}); the console is closed, reconnect it \
         to serve the guest again"
    )]
    RingIndex {
        /// The domain.
        domid: DomId,
        /// `"out"` or `"in"`.
        ring: &'static str,
        /// The check that failed, with the index values.
        #[source]
        source: xen_abi::console::ConsoleError,
    },
    /// The console was closed earlier (after a broken ring, or by [`ConsoleBackend::close`]).
    #[error("domain {domid}: the console is closed")]
    Closed {
        /// The domain.
        domid: DomId,
    },
    /// The sink failed.
    #[error("domain {domid}: console sink failed")]
    Sink {
        /// The domain.
        domid: DomId,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A configuration value that cannot work.
    #[error("invalid console configuration: {what}")]
    Config {
        /// What is wrong.
        what: String,
    },
}

/// xenconsoled's `RATE_LIMIT_PERIOD`.
pub const XENCONSOLED_RATE_LIMIT_PERIOD: Duration = Duration::from_millis(200);
/// xenconsoled's `RATE_LIMIT_ALLOWANCE`: events per period.
pub const XENCONSOLED_RATE_LIMIT_ALLOWANCE: u32 = 30;

/// An output budget per period; the first budget exhausted suspends the console until the period
/// ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// The period (xenconsoled: 200 ms).
    pub period: Duration,
    /// Guest events handled per period (xenconsoled: 30).
    pub events: u32,
    /// Output bytes read from the ring per period (default: 30 × 2048, the bound xenconsoled's
    /// event budget implies).
    pub bytes: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            period: XENCONSOLED_RATE_LIMIT_PERIOD,
            events: XENCONSOLED_RATE_LIMIT_ALLOWANCE,
            bytes: u64::from(XENCONSOLED_RATE_LIMIT_ALLOWANCE) * u64::from(XENCONS_OUT_SIZE),
        }
    }
}

/// What to do when the sink is slower than the guest and the buffer is full (xenconsoled's
/// `--overflow-data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Discard the middle of the buffered output, keeping its oldest and newest halves
    /// (xenconsoled's default): the guest never waits for the sink.
    #[default]
    Discard,
    /// Stop reading the ring while the buffer is full: the guest waits for the sink.
    Keep,
}

/// How a console is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// The flood limit; `None` disables it.
    pub rate_limit: Option<RateLimit>,
    /// The most output bytes held for a slow sink (xenconsoled's `console/limit`). At least 2.
    pub buffer_limit: usize,
    /// What happens at the limit.
    pub overflow: Overflow,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            rate_limit: Some(RateLimit::default()),
            buffer_limit: 1 << 20,
            overflow: Overflow::Discard,
        }
    }
}

/// Counters of one console.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsoleStats {
    /// Bytes read from the guest's output ring.
    pub out_bytes: u64,
    /// Bytes the sink took.
    pub sink_bytes: u64,
    /// Bytes put into the guest's input ring.
    pub in_bytes: u64,
    /// Output bytes discarded at the buffer limit ([`Overflow::Discard`]).
    pub discarded: u64,
    /// Guest events handled (including those that arrived while suspended).
    pub events: u64,
    /// Times the console was suspended by the rate limit.
    pub suspensions: u64,
    /// Floods reported (once per flood: a flood ends after a full period without suspension).
    pub flood_reports: u64,
    /// Notifications sent to the guest.
    pub notifies: u64,
}

/// What one call moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Output bytes read from the ring.
    pub out: usize,
    /// Input bytes put into the ring.
    pub input: usize,
    /// Bytes the sink took.
    pub sink: usize,
}

impl Progress {
    /// Whether anything moved.
    pub fn moved(&self) -> bool {
        self.out + self.input + self.sink > 0
    }
}

/// The rate limiter's window.
#[derive(Debug)]
struct Window {
    limit: RateLimit,
    ends: Instant,
    events: u32,
    bytes: u64,
    suspended: bool,
    /// Whether the current flood was reported (reset after a period without suspension).
    reported: bool,
}

impl Window {
    fn roll(&mut self, now: Instant) {
        if now >= self.ends {
            // A full period without suspension ends a flood: the next one is reported again.
            if !self.suspended || now >= self.ends + self.limit.period {
                self.reported = false;
            }
            self.suspended = false;
            self.events = 0;
            self.bytes = 0;
            self.ends = now + self.limit.period;
        }
    }

    fn byte_budget(&self) -> u64 {
        self.limit.bytes.saturating_sub(self.bytes)
    }
}

/// One guest's console, served to a sink.
#[derive(Debug)]
pub struct ConsoleBackend<M, E, S> {
    page: ConsolePage<M>,
    evtchn: E,
    sink: S,
    domid: DomId,
    config: ConsoleConfig,
    /// Our indices, never read back from the page.
    out_cons: u32,
    in_prod: u32,
    /// Output read from the ring that the sink has not taken yet (at most `buffer_limit`).
    pending: VecDeque<u8>,
    window: Option<Window>,
    stats: ConsoleStats,
    closed: bool,
}

impl<M: RingMemory, E: EventChannel, S: ConsoleSink> ConsoleBackend<M, E, S> {
    /// Serves domain `domid`'s console page in `mem`. The indices we own start from what the page
    /// holds now (a fresh page has zeroes; a reconnected one keeps its position).
    pub fn new(
        mem: M,
        evtchn: E,
        sink: S,
        domid: DomId,
        config: ConsoleConfig,
        now: Instant,
    ) -> Result<Self, ConsoleError> {
        if config.buffer_limit < 2 {
            return Err(ConsoleError::Config {
                what: format!(
                    "buffer_limit {} is below 2 bytes; use at least a few KiB",
                    config.buffer_limit
                ),
            });
        }
        if let Some(l) = config.rate_limit
            && (l.period.is_zero() || l.events == 0 || l.bytes == 0)
        {
            return Err(ConsoleError::Config {
                what: format!(
                    "rate limit {l:?} has a zero period or budget; use None to disable it"
                ),
            });
        }
        let page = ConsolePage::new(mem)?;
        let out_cons = page.load(ConsoleIndex::OutCons);
        let in_prod = page.load(ConsoleIndex::InProd);
        Ok(Self {
            page,
            evtchn,
            sink,
            domid,
            config,
            out_cons,
            in_prod,
            pending: VecDeque::new(),
            window: config.rate_limit.map(|limit| Window {
                limit,
                ends: now + limit.period,
                events: 0,
                bytes: 0,
                suspended: false,
                reported: false,
            }),
            stats: ConsoleStats::default(),
            closed: false,
        })
    }

    /// The guest's event channel fired: counts the event against the rate limit and serves the
    /// console (unless it is suspended, in which case the work waits for [`resume_at`](Self::resume_at)).
    pub fn handle_event(&mut self, now: Instant) -> Result<Progress, ConsoleError> {
        self.check_open()?;
        self.stats.events += 1;
        if let Some(w) = &mut self.window {
            w.roll(now);
            if !w.suspended {
                w.events = w.events.saturating_add(1);
            }
        }
        self.process(now)
    }

    /// Moves what can move: buffered output to the sink, the guest's output ring into the buffer
    /// (within the rate limit and buffer limit), and the sink's input into the guest's input ring.
    /// Call it on guest events (through [`handle_event`](Self::handle_event)), when the sink is
    /// ready, and at [`resume_at`](Self::resume_at).
    pub fn process(&mut self, now: Instant) -> Result<Progress, ConsoleError> {
        self.check_open()?;
        let mut progress = Progress::default();
        progress.sink += self.flush()?;
        progress.out += self.read_output(now)?;
        progress.sink += self.flush()?;
        progress.input += self.write_input()?;
        if progress.out + progress.input > 0 {
            self.stats.notifies += 1;
            self.evtchn.notify();
        }
        Ok(progress)
    }

    /// When a suspended console should be served again; `None` if it is not suspended.
    pub fn resume_at(&self) -> Option<Instant> {
        self.window.as_ref().filter(|w| w.suspended).map(|w| w.ends)
    }

    /// Whether the rate limit has suspended the console (at `now`).
    pub fn is_suspended(&self, now: Instant) -> bool {
        self.window
            .as_ref()
            .is_some_and(|w| w.suspended && now < w.ends)
    }

    /// Closes the console: nothing more is read or written for it.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Whether the console is closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The counters.
    pub fn stats(&self) -> ConsoleStats {
        self.stats
    }

    /// Output bytes waiting for the sink.
    pub fn pending_output(&self) -> usize {
        self.pending.len()
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The sink, mutably.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// The page.
    pub fn page(&self) -> &ConsolePage<M> {
        &self.page
    }

    fn check_open(&self) -> Result<(), ConsoleError> {
        if self.closed {
            Err(ConsoleError::Closed { domid: self.domid })
        } else {
            Ok(())
        }
    }

    fn broken(
        &mut self,
        ring: &'static str,
        source: xen_abi::console::ConsoleError,
    ) -> ConsoleError {
        let domid = self.domid;
        warn!(domid, ring, %source, "console ring broken; console closed");
        self.closed = true;
        ConsoleError::RingIndex {
            domid,
            ring,
            source,
        }
    }

    /// Gives the sink what it takes of the buffered output.
    fn flush(&mut self) -> Result<usize, ConsoleError> {
        let mut total = 0;
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            let n = self
                .sink
                .write_output(front)
                .map_err(|source| ConsoleError::Sink {
                    domid: self.domid,
                    source,
                })?;
            if n == 0 {
                break;
            }
            let n = n.min(front.len());
            self.pending.drain(..n);
            total += n;
        }
        self.stats.sink_bytes += total as u64;
        Ok(total)
    }

    /// Reads the guest's output ring into the buffer, as much as the limits allow.
    fn read_output(&mut self, now: Instant) -> Result<usize, ConsoleError> {
        // The window: a new period lifts a suspension.
        let mut budget = u64::MAX;
        if let Some(w) = &mut self.window {
            w.roll(now);
            if w.suspended {
                return Ok(0);
            }
            budget = w.byte_budget();
        }
        if self.config.overflow == Overflow::Keep {
            budget = budget.min(self.config.buffer_limit.saturating_sub(self.pending.len()) as u64);
        }
        // Copy the guest's index once and validate it against our private consumer index.
        let prod = self.page.load(ConsoleIndex::OutProd);
        let used = match ring_used(XENCONS_OUT_SIZE, self.out_cons, prod) {
            Ok(u) => u,
            Err(e) => return Err(self.broken("out", e)),
        };
        let n = u64::from(used).min(budget) as usize;
        if n > 0 {
            let mut buf = [0u8; XENCONS_OUT_SIZE as usize];
            let buf = &mut buf[..n];
            self.page.read_out(self.out_cons, buf);
            self.out_cons = self.out_cons.wrapping_add(n as u32);
            self.page.store(ConsoleIndex::OutCons, self.out_cons);
            self.pending.extend(buf.iter());
            self.stats.out_bytes += n as u64;
            self.discard_overflow();
        }
        // Charge the budget; suspend when either is exhausted and output is still waiting or the
        // event budget is spent.
        if let Some(w) = &mut self.window {
            w.bytes = w.bytes.saturating_add(n as u64);
            let over_events = w.events >= w.limit.events;
            let over_bytes = w.bytes >= w.limit.bytes && (used as usize) > n;
            if over_events || over_bytes {
                w.suspended = true;
                self.stats.suspensions += 1;
                if !w.reported {
                    w.reported = true;
                    self.stats.flood_reports += 1;
                    warn!(
                        domid = self.domid,
                        events = w.events,
                        bytes = w.bytes,
                        period_ms = w.limit.period.as_millis() as u64,
                        "console output flood: console suspended until the period ends \
                         (reported once per flood)"
                    );
                }
            }
        }
        Ok(n)
    }

    /// Discards the middle of the buffer at the limit, keeping the oldest and newest halves.
    fn discard_overflow(&mut self) {
        let limit = self.config.buffer_limit;
        if self.config.overflow != Overflow::Discard || self.pending.len() <= limit {
            return;
        }
        let keep_old = limit / 2;
        let keep_new = limit - keep_old;
        let drop = self.pending.len() - keep_old - keep_new;
        self.pending.drain(keep_old..keep_old + drop);
        self.stats.discarded += drop as u64;
    }

    /// Puts what the sink has of input into the guest's input ring, as much as fits.
    fn write_input(&mut self) -> Result<usize, ConsoleError> {
        let cons = self.page.load(ConsoleIndex::InCons);
        let used = match ring_used(XENCONS_IN_SIZE, cons, self.in_prod) {
            Ok(u) => u,
            Err(e) => return Err(self.broken("in", e)),
        };
        let free = (XENCONS_IN_SIZE - used) as usize;
        if free == 0 {
            return Ok(0);
        }
        let mut buf = [0u8; XENCONS_IN_SIZE as usize];
        let n = self
            .sink
            .read_input(&mut buf[..free])
            .map_err(|source| ConsoleError::Sink {
                domid: self.domid,
                source,
            })?
            .min(free);
        if n > 0 {
            self.page.write_in(self.in_prod, &buf[..n]);
            self.in_prod = self.in_prod.wrapping_add(n as u32);
            self.page.store(ConsoleIndex::InProd, self.in_prod);
            self.stats.in_bytes += n as u64;
        }
        Ok(n)
    }
}
