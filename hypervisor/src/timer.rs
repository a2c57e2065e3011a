//! The host's timer thread: fires the domains' one-shot timers (`set_timer_op`) at their deadlines, also
//! for vCPUs that are running guest code rather than blocked.
//!
//! One armed deadline per vCPU is kept; stale heap entries (a timer re-armed or cancelled) are skipped when
//! they come due, and the heap is rebuilt from the armed deadlines whenever it grows beyond a few entries per
//! domain, so a guest re-arming its timer in a loop cannot grow it without bound.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use xen_abi::DomId;

use crate::domain::HostInner;

/// When, for which (domain, vCPU), at which system time.
type Entry = (Instant, (DomId, u32), u64);

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Entry>>,
    armed: HashMap<(DomId, u32), (Instant, u64)>,
}

/// The deadlines of all domains.
#[derive(Default)]
pub(crate) struct TimerQueue {
    q: Mutex<Queue>,
    cv: Condvar,
}

impl TimerQueue {
    /// Arms the timer of vCPU `vcpu` of `dom` for `at` (system time `deadline`), replacing its previous one.
    pub(crate) fn add(&self, at: Instant, dom: DomId, vcpu: u32, deadline: u64) {
        let dom = (dom, vcpu);
        let mut q = self.q.lock().unwrap_or_else(|e| e.into_inner());
        q.armed.insert(dom, (at, deadline));
        q.heap.push(Reverse((at, dom, deadline)));
        if q.heap.len() > 4 * q.armed.len() + 64 {
            let fresh: BinaryHeap<_> = q
                .armed
                .iter()
                .map(|(&d, &(at, dl))| Reverse((at, d, dl)))
                .collect();
            q.heap = fresh;
        }
        drop(q);
        self.cv.notify_one();
    }
}

/// Starts the timer thread; it ends once `host` is gone.
pub(crate) fn start(timers: Arc<TimerQueue>, host: Weak<HostInner>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("blanket-timers".into())
        .spawn(move || run(&timers, &host))?;
    Ok(())
}

fn run(timers: &TimerQueue, host: &Weak<HostInner>) {
    let mut q = timers.q.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if host.strong_count() == 0 {
            return;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(Reverse((at, dom, deadline))) = q.heap.peek().copied() {
            if at > now {
                break;
            }
            q.heap.pop();
            if q.armed.get(&dom) == Some(&(at, deadline)) {
                q.armed.remove(&dom);
                due.push((dom, deadline));
            }
        }
        if !due.is_empty() {
            drop(q);
            if let Some(h) = host.upgrade() {
                for (dom, deadline) in due {
                    if let Some(d) = h.domain(dom.0) {
                        d.timer_expired(dom.1, deadline);
                    }
                }
            }
            q = timers.q.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        // Wake at the next deadline, and at least once a second to notice that the host is gone.
        let wait = q
            .heap
            .peek()
            .map(|Reverse((at, _, _))| at.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        q = timers
            .cv
            .wait_timeout(q, wait)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_re_armed_in_a_loop_does_not_grow_the_queue() {
        let q = TimerQueue::default();
        let now = Instant::now();
        for i in 0..100_000u64 {
            q.add(now + Duration::from_secs(3600 + i), 7, 0, i);
        }
        q.add(now + Duration::from_secs(10), 8, 1, 1);
        let inner = q.q.lock().unwrap();
        assert!(
            inner.heap.len() <= 4 * 2 + 64 + 1,
            "{} entries",
            inner.heap.len()
        );
        assert_eq!(
            inner.armed.get(&(7, 0)).map(|&(_, d)| d),
            Some(99_999),
            "the last one counts"
        );
        assert_eq!(inner.armed.len(), 2);
    }
}
