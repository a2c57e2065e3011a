//! Event channels, as a back end sees them: it kicks the guest through an [`EventChannel`] (the
//! `EVTCHNOP_send` of the hypervisor layer, the same trait as the XenStore ring's), and it sleeps on a
//! [`Doorbell`] that the hypervisor layer rings when the guest kicks the port (and that the bottom device
//! rings when an I/O completes).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use xen_abi::DomId;

pub use crate::xenstore::ring::EventChannel;

/// A wake-up that is never lost: [`ring`](Self::ring) sets a flag and wakes the sleeper;
/// [`wait`](Self::wait) returns at once if the flag is set, and clears it.
///
/// It is built on an eventfd, so that the kernel can ring it too: an io_uring registers
/// [`as_raw_fd`](Self::as_raw_fd) and its completions wake the sleeper directly. [`ring`](Self::ring) only
/// makes a system call when someone sleeps.
#[derive(Debug)]
pub struct Doorbell {
    efd: std::os::fd::OwnedFd,
    rung: AtomicBool,
    sleeping: AtomicBool,
    rings: AtomicU64,
}

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
            rung: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            rings: AtomicU64::new(0),
        })
    }

    /// The eventfd behind the doorbell: writing to it rings it (io_uring's `register_eventfd`).
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.efd)
    }

    /// Wakes the sleeper (or makes its next wait return at once).
    pub fn ring(&self) {
        self.rings.fetch_add(1, Ordering::Relaxed);
        if !self.rung.swap(true, Ordering::SeqCst) && self.sleeping.load(Ordering::SeqCst) {
            self.kick();
        }
    }

    fn kick(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a local to our own eventfd (it cannot overflow in practice:
        // the sleeper drains it).
        unsafe { libc::write(self.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    fn drain(&self) -> bool {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a local from our own non-blocking eventfd.
        let n = unsafe { libc::read(self.as_raw_fd(), (&raw mut v).cast(), 8) };
        n == 8
    }

    /// Sleeps until rung or until `timeout` passes; returns whether it was rung, and clears it.
    pub fn wait(&self, timeout: Duration) -> bool {
        if self.rung.swap(false, Ordering::SeqCst) {
            return true;
        }
        self.sleeping.store(true, Ordering::SeqCst);
        if self.rung.swap(false, Ordering::SeqCst) {
            self.sleeping.store(false, Ordering::SeqCst);
            return true;
        }
        let mut pfd = libc::pollfd {
            fd: self.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one pollfd on the stack, for our own descriptor.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        self.sleeping.store(false, Ordering::SeqCst);
        let kicked = self.drain();
        self.rung.swap(false, Ordering::SeqCst) || kicked
    }

    /// As [`wait`](Self::wait), and also returns when `fd` becomes readable (a device's descriptor,
    /// such as a TAP device's), so that one sleep covers a ring's events and a device that cannot ring
    /// the doorbell itself. Returns whether the doorbell was rung; the caller looks at the device anyway.
    pub fn wait_or_readable(&self, fd: std::os::fd::RawFd, timeout: Duration) -> bool {
        if self.rung.swap(false, Ordering::SeqCst) {
            return true;
        }
        self.sleeping.store(true, Ordering::SeqCst);
        if self.rung.swap(false, Ordering::SeqCst) {
            self.sleeping.store(false, Ordering::SeqCst);
            return true;
        }
        let mut pfds = [
            libc::pollfd {
                fd: self.as_raw_fd(),
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
        self.sleeping.store(false, Ordering::SeqCst);
        let kicked = self.drain();
        self.rung.swap(false, Ordering::SeqCst) || kicked
    }

    /// Clears the flag without sleeping; returns whether it was set.
    pub fn take(&self) -> bool {
        let kicked = self.drain();
        self.rung.swap(false, Ordering::SeqCst) || kicked
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
