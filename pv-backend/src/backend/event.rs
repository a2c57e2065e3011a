//! Event channels, as a back end sees them: it kicks the guest through an [`EventChannel`] (the
//! `EVTCHNOP_send` of the hypervisor layer, the same trait as the XenStore ring's), and it sleeps on a
//! [`Doorbell`] that the hypervisor layer rings when the guest kicks the port (and that the bottom device
//! rings when an I/O completes).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use xen_abi::DomId;

pub use crate::xenstore::ring::EventChannel;

/// A wake-up that is never lost: [`ring`](Self::ring) sets a flag and wakes the sleeper;
/// [`wait`](Self::wait) returns at once if the flag is set, and clears it.
///
/// It is built on an eventfd, so that the kernel can ring it too: an io_uring registers
/// [`as_raw_fd`](Self::as_raw_fd) and its completions wake the sleeper directly. [`ring`](Self::ring) only
/// makes a system call when someone sleeps. Until the eventfd has been handed out
/// ([`as_raw_fd`](Self::as_raw_fd)), only [`ring`](Self::ring) can ring it, and [`wait`](Self::wait)
/// sleeps on a futex instead: one system call to sleep (`FUTEX_WAIT`) and one to wake
/// (`FUTEX_WAKE`), where the eventfd takes a `poll` and a `read` to sleep and a `write` to wake.
#[derive(Debug)]
pub struct Doorbell {
    efd: std::os::fd::OwnedFd,
    /// 1 while rung and not yet taken; the word a futex sleeper waits on.
    rung: AtomicU32,
    /// [`AWAKE`], [`ON_FD`] (sleeping where a write to the eventfd wakes it) or [`ON_FUTEX`].
    sleeping: AtomicU32,
    /// The eventfd was handed out: someone other than [`ring`](Self::ring) may write it, so a
    /// sleeper must watch it.
    fd_shared: AtomicBool,
    rings: AtomicU64,
}

/// Nobody sleeps on the doorbell.
const AWAKE: u32 = 0;
/// The sleeper waits for the eventfd (`poll`, or a read of it in an io_uring).
const ON_FD: u32 = 1;
/// The sleeper waits on the futex word `rung`.
const ON_FUTEX: u32 = 2;

impl Default for Doorbell {
    /// A doorbell that has not been rung (see [`Doorbell::new`]).
    ///
    /// # Panics
    ///
    /// If the process cannot make an eventfd (out of file descriptors); [`Doorbell::try_new`]
    /// returns that as an error.
    fn default() -> Self {
        match Self::make() {
            Ok(d) => d,
            Err(e) => panic!("eventfd for a doorbell: {e}"),
        }
    }
}

impl Doorbell {
    /// A doorbell that has not been rung.
    ///
    /// # Panics
    ///
    /// If the process cannot make an eventfd (out of file descriptors); [`Doorbell::try_new`]
    /// returns that as an error.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A doorbell that has not been rung, or the error of the `eventfd` it needs (typically
    /// `EMFILE`: the process is out of file descriptors; raise `ulimit -n` or serve fewer
    /// devices). Back-ends use this when a front end connects, so that a host out of descriptors
    /// fails that one connection instead of the process.
    pub fn try_new() -> std::io::Result<Arc<Self>> {
        Self::make().map(Arc::new)
    }

    fn make() -> std::io::Result<Self> {
        // SAFETY: eventfd takes integer arguments only; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            efd: unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) },
            rung: AtomicU32::new(0),
            sleeping: AtomicU32::new(AWAKE),
            fd_shared: AtomicBool::new(false),
            rings: AtomicU64::new(0),
        })
    }

    /// The eventfd behind the doorbell: writing to it rings it (io_uring's `register_eventfd`).
    /// From the first call on, [`wait`](Self::wait) sleeps on the eventfd (`poll`) rather than on a
    /// futex, so take it before anyone sleeps.
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd_shared.store(true, Ordering::SeqCst);
        self.fd()
    }

    fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.efd)
    }

    /// Wakes the sleeper (or makes its next wait return at once).
    pub fn ring(&self) {
        self.rings.fetch_add(1, Ordering::Relaxed);
        // The swap and the load below pair with the sleeper's store of `sleeping` and its swap of
        // `rung` (all SeqCst): either it sees the ring, or this sees it asleep and wakes it.
        if self.rung.swap(1, Ordering::SeqCst) == 0 {
            match self.sleeping.load(Ordering::SeqCst) {
                ON_FD => self.kick(),
                ON_FUTEX => self.futex_wake(),
                _ => {}
            }
        }
    }

    /// Writes the eventfd, whether or not anyone sleeps.
    pub(crate) fn kick(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a local to our own eventfd (it cannot overflow in practice:
        // the sleeper drains it).
        unsafe { libc::write(self.fd(), (&raw const one).cast(), 8) };
    }

    fn futex_wake(&self) {
        // SAFETY: FUTEX_WAKE on the address of our own `rung` word, which lives as long as `self`;
        // the kernel only uses the address to find the waiters.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.rung.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                1,
            )
        };
    }

    /// Sleeps on the futex word `rung` while it is 0, for at most `timeout`.
    fn futex_wait(&self, timeout: Duration) {
        let ts = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
        };
        // SAFETY: FUTEX_WAIT on our own `rung` word (an aligned u32 that lives as long as `self`),
        // with a relative timeout on the stack; it returns at once if the word is not 0. Wake-ups,
        // EAGAIN, ETIMEDOUT and EINTR all end the wait; the caller looks at the word.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.rung.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                0u32,
                &raw const ts,
            )
        };
    }

    fn drain(&self) -> bool {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a local from our own non-blocking eventfd.
        let n = unsafe { libc::read(self.fd(), (&raw mut v).cast(), 8) };
        n == 8
    }

    /// Takes the ring: whether it was rung (and clears it).
    fn take_rung(&self) -> bool {
        self.rung.swap(0, Ordering::SeqCst) != 0
    }

    /// Marks the sleeper as sleeping `how`, unless the doorbell was rung already (then it returns
    /// `false` and the caller does not sleep).
    fn fall_asleep(&self, how: u32) -> bool {
        if self.take_rung() {
            return false;
        }
        self.sleeping.store(how, Ordering::SeqCst);
        if self.take_rung() {
            self.sleeping.store(AWAKE, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Sleeps until rung or until `timeout` passes; returns whether it was rung, and clears it.
    pub fn wait(&self, timeout: Duration) -> bool {
        if !self.fd_shared.load(Ordering::SeqCst) {
            if !self.fall_asleep(ON_FUTEX) {
                return true;
            }
            self.futex_wait(timeout);
            self.sleeping.store(AWAKE, Ordering::SeqCst);
            return self.take_rung();
        }
        if !self.fall_asleep(ON_FD) {
            return true;
        }
        let mut pfd = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one pollfd on the stack, for our own descriptor.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        self.sleeping.store(AWAKE, Ordering::SeqCst);
        // Read the eventfd only when poll saw it written (not after a timeout).
        let kicked = n > 0 && self.drain();
        self.take_rung() || kicked
    }

    /// As [`wait`](Self::wait), for a sleeper that waits for the eventfd elsewhere: unless the
    /// doorbell was rung already, it marks itself asleep and calls `block`, which must return once the
    /// eventfd is written (or at its own timeout) and drain it itself, such as an io_uring wait with a
    /// `READ` of [`as_raw_fd`](Self::as_raw_fd) outstanding in the same ring. A [`ring`](Self::ring)
    /// makes its system call only while `block` runs. Returns whether the doorbell was rung, and
    /// clears it.
    pub fn wait_with(&self, block: impl FnOnce()) -> bool {
        if !self.fall_asleep(ON_FD) {
            return true;
        }
        block();
        self.sleeping.store(AWAKE, Ordering::SeqCst);
        self.take_rung()
    }

    /// As [`wait`](Self::wait), and also returns when `fd` becomes readable (a device's descriptor,
    /// such as a TAP device's), so that one sleep covers a ring's events and a device that cannot ring
    /// the doorbell itself. Returns whether the doorbell was rung; the caller looks at the device anyway.
    pub fn wait_or_readable(&self, fd: std::os::fd::RawFd, timeout: Duration) -> bool {
        if !self.fall_asleep(ON_FD) {
            return true;
        }
        let mut pfds = [
            libc::pollfd {
                fd: self.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = libc::c_int::try_from(timeout.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: two pollfds on the stack; poll only reads and writes them (a closed `fd` is
        // reported as POLLNVAL, not undefined behaviour).
        unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
        self.sleeping.store(AWAKE, Ordering::SeqCst);
        let kicked = pfds[0].revents & libc::POLLIN != 0 && self.drain();
        self.take_rung() || kicked
    }

    /// Clears the flag without sleeping; returns whether it was set.
    pub fn take(&self) -> bool {
        let kicked = self.fd_shared.load(Ordering::SeqCst) && self.drain();
        self.take_rung() || kicked
    }

    /// How many times it was rung since it was made (by [`ring`](Self::ring); not counting the kernel's).
    pub fn rings(&self) -> u64 {
        self.rings.load(Ordering::Relaxed)
    }
}

/// Why an event channel could not be bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventChannelError {
    /// The guest has no such port, or it is not an unbound port offered to this back end.
    #[error("domain {domid} has no event channel port {port} that this back end may bind")]
    NoSuchPort {
        /// The guest.
        domid: DomId,
        /// The port it named.
        port: u32,
    },
}

/// The hypervisor layer's event channels: binds a guest's port (`EVTCHNOP_bind_interdomain`).
pub trait EventChannels: Send + Sync {
    /// Binds port `port` of domain `domid`: events the guest sends on it ring `doorbell`; the returned
    /// channel sends events to the guest.
    fn bind(
        &self,
        domid: DomId,
        port: u32,
        doorbell: Arc<Doorbell>,
    ) -> Result<Arc<dyn EventChannel>, EventChannelError>;
}

impl<T: EventChannels + ?Sized> EventChannels for Arc<T> {
    fn bind(
        &self,
        domid: DomId,
        port: u32,
        doorbell: Arc<Doorbell>,
    ) -> Result<Arc<dyn EventChannel>, EventChannelError> {
        (**self).bind(domid, port, doorbell)
    }
}

/// Event channels between back ends and front ends in one process: each port the front end allocates with
/// [`LocalEventChannels::alloc`] has a doorbell for the front end (rung when the back end notifies) and, once
/// a back end binds it, one for the back end (rung by [`LocalEventChannels::send`]).
#[derive(Debug, Default)]
pub struct LocalEventChannels {
    ports: Mutex<Vec<LocalPort>>,
}

#[derive(Debug)]
struct LocalPort {
    domid: DomId,
    port: u32,
    front: Arc<Doorbell>,
    back: Option<Arc<Doorbell>>,
    to_front: Arc<AtomicU64>,
}

/// One side's view of a local port: the back end's notifier.
#[derive(Debug)]
struct LocalNotifier {
    front: Arc<Doorbell>,
    count: Arc<AtomicU64>,
}

impl EventChannel for LocalNotifier {
    fn notify(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.front.ring();
    }
}

impl LocalEventChannels {
    /// No ports yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Domain `domid` allocates an unbound port (`EVTCHNOP_alloc_unbound`); returns the port and the
    /// doorbell the back end's notifications ring.
    pub fn alloc(&self, domid: DomId) -> (u32, Arc<Doorbell>) {
        let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        let port = u32::try_from(ports.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let front = Doorbell::new();
        ports.push(LocalPort {
            domid,
            port,
            front: front.clone(),
            back: None,
            to_front: Arc::new(AtomicU64::new(0)),
        });
        (port, front)
    }

    /// The front end kicks its port (`EVTCHNOP_send`): rings the bound back end's doorbell. Returns false if
    /// no back end is bound.
    pub fn send(&self, domid: DomId, port: u32) -> bool {
        let ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        match ports
            .iter()
            .find(|p| p.domid == domid && p.port == port)
            .and_then(|p| p.back.clone())
        {
            Some(back) => {
                drop(ports);
                back.ring();
                true
            }
            None => false,
        }
    }

    /// How many notifications the back end sent to the front end on this port.
    pub fn notifications_to_front(&self, domid: DomId, port: u32) -> u64 {
        let ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        ports
            .iter()
            .find(|p| p.domid == domid && p.port == port)
            .map_or(0, |p| p.to_front.load(Ordering::Relaxed))
    }
}

impl EventChannels for LocalEventChannels {
    fn bind(
        &self,
        domid: DomId,
        port: u32,
        doorbell: Arc<Doorbell>,
    ) -> Result<Arc<dyn EventChannel>, EventChannelError> {
        let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        let p = ports
            .iter_mut()
            .find(|p| p.domid == domid && p.port == port)
            .ok_or(EventChannelError::NoSuchPort { domid, port })?;
        p.back = Some(doorbell);
        Ok(Arc::new(LocalNotifier {
            front: p.front.clone(),
            count: p.to_front.clone(),
        }))
    }
}
