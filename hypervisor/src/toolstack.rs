//! A toolstack: per domain configuration, it writes the XenStore directories the way `xl` (libxl) does,
//! starts pv-backend's back-ends in domain 0 for them, serves the console ring, and tears it all down when
//! the guest goes away.
//!
//! For vbd `devid` of domain `domid` (devid 51712 is `xvda`, as `xl` numbers them):
//!
//! ```text
//! /local/domain/0/backend/vbd/<domid>/<devid>/{frontend, frontend-id, online, state, params, type, mode,
//!                                             device-type, dev, removable, bootable}   owner 0, read domid
//! /local/domain/<domid>/device/vbd/<devid>/{backend, backend-id, state, virtual-device, device-type}
//!                                                                                      owner domid, read 0
//! ```
//!
//! and the same for a vif (`backend/vif/<domid>/<devid>` with `mac`, `handle`, `type`, `bridge`, and
//! `device/vif/<devid>` with `mac` and `handle`). Back-ends are generic over pv-backend's traits: grant
//! access is the guest's own grant table in its memory ([`crate::devices::grant_table`]), events go through
//! interdomain channels between the guest and domain 0 ([`crate::devices::Dom0Evtchns`]), XenStore is the
//! host's one xenstored ([`Xenstored`]). A vbd is served by blkback from an image file ([`FileDevice`]) or
//! from a vhost-user-blk device through blanket-virtio, zero copy ([`crate::devices::vhost_user`]); see
//! [`VbdBackend`]. A vif is a port of the host's in-process [`Switch`] or a TAP device, served by netback.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pv_backend::backend::{LocalXs, XenbusBackend, XenbusDevice, XsHandle};
use pv_backend::blk::{BlkBack, BlkConfig, BlockDevice, FileDevice, FileOptions};
use pv_backend::net::MacAddr;
use pv_backend::net::switch::{Switch, SwitchConfig};
use pv_backend::net::tap::{Tap, TapOptions};
use pv_backend::net::xenbus::{NetBack, NetBackConfig};
use xen_abi::DomId;
use xen_abi::xs_wire::XsPerm;

use crate::devices::console::{ConsoleOutput, ConsoleRing};
use crate::devices::vhost_user::vhost_user_blk;
use crate::devices::xenstored::{StoreRing, Xenstored};
use crate::devices::{DeviceError, Dom0Evtchns, InlineKicks, grant_table};
use crate::domain::{Domain, DomainConfig, DomainError, DomainExit, Hypervisor};

/// The errors of the toolstack.
#[derive(Debug, thiserror::Error)]
pub enum ToolstackError {
    /// The domain could not be created.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// A device could not be attached.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A disk image could not be opened.
    #[error("opening the vbd image {path}: {source}; check the path and its permissions")]
    Image {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A TAP device could not be opened.
    #[error("opening the TAP device '{name}': {source} (TAP needs CAP_NET_ADMIN)")]
    Tap {
        /// The name asked for.
        name: String,
        /// Why.
        #[source]
        source: pv_backend::net::NetError,
    },
    /// The switch could not be created.
    #[error("creating the virtual switch: {0}")]
    Switch(#[source] pv_backend::net::NetError),
    /// A device configuration value is invalid.
    #[error("invalid device configuration: {0}")]
    Config(String),
    /// The process has too few file descriptors left for another guest.
    #[error(
        "no room for another guest: {used} of the process's {limit} file descriptors are in use and this guest needs about {needed} (raise RLIMIT_NOFILE, `ulimit -n`, or run guests in more processes)"
    )]
    OutOfFiles {
        /// Descriptors open now.
        used: u64,
        /// The soft `RLIMIT_NOFILE`.
        limit: u64,
        /// What the guest would need.
        needed: u64,
    },
}

/// What serves a vbd's blocks, under blkback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VbdBackend {
    /// A raw image file (or block device), through pv-backend's [`FileDevice`]. XenStore: `type = file`,
    /// `params = PATH`.
    Image(PathBuf),
    /// A vhost-user-blk device listening on this Unix socket (such as `qemu-storage-daemon --export
    /// type=vhost-user-blk,addr.type=unix,addr.path=SOCKET`), through blanket-virtio's virtio-blk driver with
    /// the guest's memory shared for zero copy ([`crate::devices::vhost_user`]). XenStore:
    /// `type = vhost-user-blk`, `params = SOCKET`.
    VhostUser(PathBuf),
}

impl VbdBackend {
    /// The XenStore `type` and `params` of the back-end directory.
    fn type_and_params(&self) -> (&'static str, String) {
        match self {
            Self::Image(p) => ("file", p.display().to_string()),
            Self::VhostUser(p) => ("vhost-user-blk", p.display().to_string()),
        }
    }
}

/// A virtual block device served by blkback.
#[derive(Clone, Debug)]
pub struct VbdConfig {
    /// The device number (`xvda` is 51712, `xvdb` 51728, ...; see [`xvd_devid`]).
    pub devid: u32,
    /// What serves its blocks.
    pub backend: VbdBackend,
    /// Present the disk read-only (`mode = r`), whatever the image or device allows.
    pub read_only: bool,
    /// Serve the vbd's queues on the guest's own vCPU threads while nobody else does (blkback's
    /// [`BlkConfig::inline`]): a kick takes the requests and submits them on the exit of the guest's
    /// `EVTCHNOP_send`, and a vCPU that blocks waits for their completions in the disk's io_uring and
    /// answers them itself, so no thread wakes in between (see pv-backend's README, "Inline serving").
    /// An image is then served by io_uring (by the thread pool if this kernel has no io_uring, which
    /// inline serving does not help). On by default for images ([`VbdConfig::image`]).
    pub inline: bool,
    /// Register the guest's memory with the image's io_uring (pv-backend's fixed buffers,
    /// `BlkBack::with_fixed_memory`): one-buffer reads and writes then pin no pages per request
    /// (`Toolstack::fixed_ios` counts them). It pins all of the guest's memory while the vbd is
    /// connected, and from then on ballooning zeroes the frames a guest gives back instead of
    /// returning their memory to the host ([`Domain::fixed_memory`]). Images on io_uring only (with
    /// `inline`, or alone, which then also serves the image by io_uring). Off by default.
    pub fixed_memory: bool,
}

impl VbdConfig {
    /// A writable vbd `devid` on the raw image file at `path`.
    pub fn image(devid: u32, path: impl Into<PathBuf>) -> Self {
        Self {
            devid,
            backend: VbdBackend::Image(path.into()),
            read_only: false,
            inline: true,
            fixed_memory: false,
        }
    }

    /// A writable vbd `devid` on the vhost-user-blk device listening on `socket`.
    pub fn vhost_user(devid: u32, socket: impl Into<PathBuf>) -> Self {
        Self {
            devid,
            backend: VbdBackend::VhostUser(socket.into()),
            read_only: false,
            inline: false,
            fixed_memory: false,
        }
    }
}

/// The device number `xl` gives `xvd<letter>` (`(202 << 8) | (index << 4)`), for indices 0 to 15.
pub fn xvd_devid(index: u32) -> u32 {
    (202 << 8) | ((index & 15) << 4)
}

/// Where a vif's frames go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VifLink {
    /// A port of the host's in-process switch.
    Switch,
    /// A TAP device of this name (a template such as `blanket%d`, or empty, lets the kernel choose).
    Tap(String),
}

/// A virtual network interface served by netback.
#[derive(Clone, Debug)]
pub struct VifConfig {
    /// The device number (0, 1, ...).
    pub devid: u32,
    /// The interface's MAC address (`mac`).
    pub mac: MacAddr,
    /// Its link.
    pub link: VifLink,
}

/// A locally administered MAC for vif `devid` of domain `domid` (`02:42:4c:<domid>:<devid>`).
pub fn default_mac(domid: DomId, devid: u32) -> MacAddr {
    let d = domid.to_be_bytes();
    [0x02, 0x42, 0x4c, d[0], d[1], devid as u8]
}

/// A guest to create: the domain and its devices.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// The domain.
    pub domain: DomainConfig,
    /// Its disks.
    pub vbds: Vec<VbdConfig>,
    /// Its network interfaces; a [`VifConfig::mac`] of all zeroes gets [`default_mac`].
    pub vifs: Vec<VifConfig>,
    /// Where its console ring goes.
    pub console: ConsoleOutput,
}

impl GuestConfig {
    /// A guest with no devices and its console ring to the domain's console sink.
    pub fn new(domain: DomainConfig) -> Self {
        let sink = domain.console.clone();
        Self {
            domain,
            vbds: Vec::new(),
            vifs: Vec::new(),
            console: ConsoleOutput::Lines(sink),
        }
    }
}

/// The host side: the hypervisor, its one xenstored, domain 0's event channels and the virtual switch.
#[derive(Clone, Debug)]
pub struct Toolstack {
    hv: Hypervisor,
    xs: Xenstored,
    evtchns: Dom0Evtchns,
    switch: Arc<Switch>,
    /// See [`Toolstack::inline_kicks`].
    inline_kicks: Arc<AtomicU64>,
    /// See [`Toolstack::fixed_ios`]: what vbds gone since counted, and the counters of the others.
    fixed_ios: Arc<Mutex<(u64, Vec<Arc<AtomicU64>>)>>,
}

impl Toolstack {
    /// A toolstack over `hv`, with a new xenstored and switch.
    pub fn new(hv: Hypervisor) -> Result<Self, ToolstackError> {
        let switch = Switch::new(SwitchConfig::default()).map_err(ToolstackError::Switch)?;
        let evtchns = Dom0Evtchns::new(&hv);
        Ok(Self {
            hv,
            xs: Xenstored::new(),
            evtchns,
            switch: Arc::new(switch),
            inline_kicks: Arc::default(),
            fixed_ios: Arc::default(),
        })
    }

    /// The hypervisor.
    pub fn hypervisor(&self) -> &Hypervisor {
        &self.hv
    }

    /// The host's xenstored.
    pub fn xenstored(&self) -> &Xenstored {
        &self.xs
    }

    /// The virtual switch the vifs with [`VifLink::Switch`] are plugged into.
    pub fn switch(&self) -> &Arc<Switch> {
        &self.switch
    }

    /// Events the back-ends sent to guests so far (the notifications that cost guests an upcall or a wake).
    pub fn backend_notifications(&self) -> u64 {
        self.evtchns.sent.load(Ordering::Relaxed)
    }

    /// Guests' kicks of their vbds that the vCPU thread served itself so far ([`VbdConfig::inline`]),
    /// no queue thread woken.
    pub fn inline_kicks(&self) -> u64 {
        self.inline_kicks.load(Ordering::Relaxed)
    }

    /// Reads and writes that image vbds with [`VbdConfig::fixed_memory`] sent on the guest's
    /// registered memory (io_uring fixed buffers), over every guest this toolstack served.
    pub fn fixed_ios(&self) -> u64 {
        let mut g = self.fixed_ios.lock().unwrap_or_else(|e| e.into_inner());
        let (gone, live) = &mut *g;
        live.retain(|c| {
            // A counter only this list still holds: its vbd is gone; fold it in.
            let keep = Arc::strong_count(c) > 1;
            if !keep {
                *gone += c.load(Ordering::Relaxed);
            }
            keep
        });
        *gone + live.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>()
    }

    /// Creates the domain, writes its XenStore directories, starts its back-ends and its console; the
    /// domain is not started ([`Guest::start`]).
    ///
    /// A guest that would leave the process with too few file descriptors is refused with
    /// [`ToolstackError::OutOfFiles`] before anything is created (rather than fail half-way, where some of
    /// the back-ends' set-up cannot report it).
    pub fn create(&self, config: GuestConfig) -> Result<Guest, ToolstackError> {
        check_files(&config)?;
        let domain = self.hv.create_domain(config.domain.clone())?;
        let mut guest = Guest {
            xs: self.xs.clone(),
            domain: Some(domain),
            backends: Vec::new(),
            console: None,
            store: None,
            config: config.clone(),
            restarts: 0,
        };
        let domain = guest.domain.as_ref().expect("just set");
        guest.store = Some(self.xs.introduce(&self.hv, domain)?);
        guest.console = ConsoleRing::attach(&self.hv, domain, config.console.clone())?;
        self.write_console_dir(domain, &config.console, guest.console_pty())?;
        for vbd in &config.vbds {
            let b = self.add_vbd(domain, vbd)?;
            guest.backends.push(b);
        }
        for vif in &config.vifs {
            let b = self.add_vif(domain, vif)?;
            guest.backends.push(b);
        }
        Ok(guest)
    }

    /// The guest's `console` directory, as libxl writes it for a PV console served by xenconsoled:
    /// `ring-ref` (the ring's frame), `port` (its event channel), `type`, `output` and, for a pty, `tty`
    /// (the slave's path). Owned by domain 0, readable by the guest.
    fn write_console_dir(
        &self,
        domain: &Domain,
        output: &ConsoleOutput,
        pty: Option<&std::path::Path>,
    ) -> Result<(), ToolstackError> {
        let domid = domain.domid();
        let dir = format!("/local/domain/{domid}/console");
        let perms = XsPerm::owner_and_reader(0, domid);
        let port = crate::devices::boot_ports(domain)?.1;
        let kind = match output {
            ConsoleOutput::None => "none",
            ConsoleOutput::Lines(_) => "lines",
            ConsoleOutput::LogFile(_) => "file",
            ConsoleOutput::Pty => "pty",
        };
        let mut keys = vec![
            (
                "ring-ref",
                (domain.layout().console / crate::memory::PAGE_SIZE).to_string(),
            ),
            ("port", port.to_string()),
            ("type", "xenconsoled".to_string()),
            ("output", kind.to_string()),
        ];
        if let Some(p) = pty {
            keys.push(("tty", p.display().to_string()));
        }
        self.xs.write_with_perms(&dir, b"", &perms)?;
        for (k, v) in keys {
            self.xs
                .write_with_perms(&format!("{dir}/{k}"), v.as_bytes(), &perms)?;
        }
        Ok(())
    }

    /// Restarts a guest that ended, as xl does for `on_reboot = "restart"` (use it when
    /// [`Guest::wait`] gave [`DomainExit::Shutdown`] with reason reboot): the old domain is destroyed (its
    /// back-ends stopped, its XenStore directories removed, `@releaseDomain` fired), then a new domain is
    /// created from the same [`GuestConfig`] (the same name, kernel, command line, images, sockets and
    /// links; a new domid, as under xl) and started. [`Guest::restarts`] counts the restarts.
    pub fn restart(&self, guest: Guest) -> Result<Guest, ToolstackError> {
        let config = guest.config.clone();
        let restarts = guest.restarts.saturating_add(1);
        drop(guest);
        let mut next = self.create(config)?;
        next.restarts = restarts;
        next.start()?;
        Ok(next)
    }

    fn write_dirs(
        &self,
        domid: DomId,
        class: &str,
        devid: u32,
        back: &[(&str, String)],
        front: &[(&str, String)],
    ) -> Result<String, ToolstackError> {
        let be = format!("/local/domain/0/backend/{class}/{domid}/{devid}");
        let fe = format!("/local/domain/{domid}/device/{class}/{devid}");
        let back_perms = XsPerm::owner_and_reader(0, domid);
        let front_perms = XsPerm::owner_and_reader(domid, 0);
        self.xs.write_with_perms(&be, b"", &back_perms)?;
        let common_back = [
            ("frontend", fe.clone()),
            ("frontend-id", domid.to_string()),
            ("online", "1".into()),
            ("state", "1".into()),
        ];
        for (k, v) in common_back.iter().chain(back) {
            self.xs
                .write_with_perms(&format!("{be}/{k}"), v.as_bytes(), &back_perms)?;
        }
        self.xs.write_with_perms(&fe, b"", &front_perms)?;
        let common_front = [
            ("backend", be.clone()),
            ("backend-id", "0".into()),
            ("state", "1".into()),
        ];
        for (k, v) in common_front.iter().chain(front) {
            self.xs
                .write_with_perms(&format!("{fe}/{k}"), v.as_bytes(), &front_perms)?;
        }
        Ok(be)
    }

    fn add_vbd(&self, domain: &Domain, vbd: &VbdConfig) -> Result<Backend, ToolstackError> {
        let domid = domain.domid();
        let mut inline = vbd.inline;
        let mut fixed = vbd.fixed_memory && matches!(vbd.backend, VbdBackend::Image(_));
        let dev: Arc<dyn BlockDevice> = match &vbd.backend {
            VbdBackend::Image(path) => {
                let open = |io_uring| {
                    let opts = FileOptions {
                        read_only: vbd.read_only,
                        threads: 2,
                        io_uring,
                        ..FileOptions::default()
                    };
                    FileDevice::open(path, opts).map_err(|source| ToolstackError::Image {
                        path: path.clone(),
                        source,
                    })
                };
                let mut dev = open(inline || fixed)?;
                // Inline serving waits in the queue's io_uring, and fixed buffers are io_uring's:
                // without one (a kernel built without it, or `kernel.io_uring_disabled`), the thread
                // pool serves the image as before.
                if (inline || fixed) && dev.open_queue().is_err() {
                    tracing::warn!(
                        path = %path.display(),
                        "no io_uring here: the vbd is served by blkback's threads, not inline, without fixed buffers"
                    );
                    inline = false;
                    fixed = false;
                    dev = open(false)?;
                }
                if fixed {
                    let mut g = self.fixed_ios.lock().unwrap_or_else(|e| e.into_inner());
                    g.1.push(dev.fixed_io_counter());
                }
                Arc::new(dev)
            }
            VbdBackend::VhostUser(socket) => vhost_user_blk(domain, socket, vbd.read_only)?,
        };
        let (kind, params) = vbd.backend.type_and_params();
        let index = (vbd.devid >> 4) & 15;
        let name = format!("xvd{}", (b'a' + index as u8) as char);
        let be = self.write_dirs(
            domid,
            "vbd",
            vbd.devid,
            &[
                ("params", params),
                ("type", kind.into()),
                ("mode", if vbd.read_only { "r" } else { "w" }.into()),
                ("device-type", "disk".into()),
                ("dev", name),
                ("removable", "0".into()),
                ("bootable", "1".into()),
            ],
            &[
                ("virtual-device", vbd.devid.to_string()),
                ("device-type", "disk".into()),
            ],
        )?;
        let kicks = InlineKicks::new(self.inline_kicks.clone());
        let evtchns = if inline {
            self.evtchns.kicking_inline(kicks.clone())
        } else {
            self.evtchns.clone()
        };
        let mut blk = BlkBack::new(
            Arc::new(grant_table(domain)?),
            Arc::new(evtchns),
            dev,
            BlkConfig {
                inline,
                ..BlkConfig::default()
            },
        );
        if fixed && let Some(memory) = domain.fixed_memory() {
            blk = blk.with_fixed_memory(memory);
        }
        if inline {
            let dev = blk.inline();
            kicks.set(dev.clone());
            domain.add_blocked_service(Arc::new(dev));
        }
        Backend::spawn(&self.xs, be, format!("vbd-{domid}-{}", vbd.devid), blk)
    }

    fn add_vif(&self, domain: &Domain, vif: &VifConfig) -> Result<Backend, ToolstackError> {
        let domid = domain.domid();
        let mac = if vif.mac == [0; 6] {
            default_mac(domid, vif.devid)
        } else {
            vif.mac
        };
        let mac_s = format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
        );
        let bridge = match &vif.link {
            VifLink::Switch => "blanket-switch".to_string(),
            VifLink::Tap(n) => n.clone(),
        };
        let be = self.write_dirs(
            domid,
            "vif",
            vif.devid,
            &[
                ("mac", mac_s.clone()),
                ("handle", vif.devid.to_string()),
                ("type", "vif".into()),
                ("bridge", bridge),
            ],
            &[("mac", mac_s), ("handle", vif.devid.to_string())],
        )?;
        let name = format!("vif{domid}.{}", vif.devid);
        let grants = Arc::new(grant_table(domain)?);
        let evtchns = Arc::new(self.evtchns.clone());
        match &vif.link {
            VifLink::Switch => {
                let port = self.switch.add_port();
                let nb = NetBack::new(grants, evtchns, port, NetBackConfig::default());
                Backend::spawn(&self.xs, be, name, nb)
            }
            VifLink::Tap(tap) => {
                let dev = Tap::open(&TapOptions {
                    name: tap.clone(),
                    ..TapOptions::default()
                })
                .map_err(|source| ToolstackError::Tap {
                    name: tap.clone(),
                    source,
                })?;
                let nb = NetBack::new(grants, evtchns, dev, NetBackConfig::default());
                Backend::spawn(&self.xs, be, name, nb)
            }
        }
    }
}

/// File descriptors a guest may open, with room to spare: the VM, its vCPUs, its memfd, the XenStore and
/// console doorbells, and per device its doorbells, files, sockets and eventfds.
fn files_needed(config: &GuestConfig) -> u64 {
    let vbds: u64 = config
        .vbds
        .iter()
        .map(|v| match v.backend {
            VbdBackend::Image(_) => 8,
            // The socket, the guest's memfd again, a kick and a call eventfd per queue, the relays.
            VbdBackend::VhostUser(_) => 24,
        })
        .sum();
    16 + u64::from(config.domain.vcpus) + vbds + 8 * config.vifs.len() as u64
}

/// Refuses `config` if the process has fewer descriptors left than it needs.
fn check_files(config: &GuestConfig) -> Result<(), ToolstackError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return Ok(());
    }
    // Bounded by the limit itself.
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Ok(());
    };
    let used = dir.count() as u64;
    let needed = files_needed(config);
    if used.saturating_add(needed) > lim.rlim_cur {
        return Err(ToolstackError::OutOfFiles {
            used,
            limit: lim.rlim_cur,
            needed,
        });
    }
    Ok(())
}

/// One back-end's XenBus handshake and device, served on a thread until stopped.
struct Backend {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    error: Arc<Mutex<Option<String>>>,
    path: String,
}

impl Backend {
    fn spawn<D: XenbusDevice + 'static>(
        xs: &Xenstored,
        path: String,
        name: String,
        device: D,
    ) -> Result<Self, ToolstackError> {
        let xsh: Arc<dyn XsHandle> = Arc::new(LocalXs::connect(xs.store().clone(), 0));
        let mut be = XenbusBackend::new(xsh, path.clone(), device)
            .map_err(|e| ToolstackError::Config(format!("back-end {path}: {e}")))?;
        be.start()
            .map_err(|e| ToolstackError::Config(format!("back-end {path}: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let error: Arc<Mutex<Option<String>>> = Arc::default();
        let thread = {
            let (stop, error, path) = (stop.clone(), error.clone(), path.clone());
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Err(e) = be.poll(Duration::from_millis(20)) {
                            tracing::warn!(backend = %path, %e, "back-end handshake failed");
                            *error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                            break;
                        }
                    }
                    be.device_mut().disconnect();
                })
                .map_err(|source| DeviceError::Io {
                    what: "starting a back-end thread".into(),
                    source,
                })?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            error,
            path,
        })
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A guest created by the [`Toolstack`], with its back-ends, console and XenStore connection. Dropping it
/// stops the back-ends, serves the console one last time, removes the guest's XenStore directories (its home
/// and its back-end directories, as libxl does), releases the domain in xenstored (`@releaseDomain` fires)
/// and destroys the domain.
pub struct Guest {
    xs: Xenstored,
    domain: Option<Domain>,
    backends: Vec<Backend>,
    console: Option<ConsoleRing>,
    store: Option<StoreRing>,
    config: GuestConfig,
    restarts: u32,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("domain", &self.domain)
            .field("backends", &self.backends.len())
            .finish_non_exhaustive()
    }
}

impl Guest {
    /// The domain.
    pub fn domain(&self) -> &Domain {
        self.domain.as_ref().expect("present until drop")
    }

    /// The configuration the guest was created from.
    pub fn config(&self) -> &GuestConfig {
        &self.config
    }

    /// How many times [`Toolstack::restart`] restarted this guest (0 for its first boot).
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Starts the domain.
    pub fn start(&mut self) -> Result<(), DomainError> {
        self.domain_mut().start()
    }

    fn domain_mut(&mut self) -> &mut Domain {
        self.domain.as_mut().expect("present until drop")
    }

    /// Waits until the domain ends, then stops its devices (the console is drained first).
    pub fn wait(&mut self) -> DomainExit {
        let exit = self.domain_mut().wait();
        self.stop_devices();
        exit
    }

    /// Waits at most `timeout`; on expiry the domain is destroyed. Devices are stopped either way.
    pub fn wait_timeout(&mut self, timeout: Duration) -> DomainExit {
        let exit = match self.domain_mut().wait_timeout(timeout) {
            Some(e) => e,
            None => {
                self.domain().destroy();
                self.domain_mut().wait()
            }
        };
        self.stop_devices();
        exit
    }

    /// Stops the back-ends and the console (after a last pass over its ring).
    pub fn stop_devices(&mut self) {
        for b in &mut self.backends {
            b.shutdown();
        }
        if let Some(c) = &mut self.console {
            c.stop();
        }
    }

    /// Back-end errors so far (handshake failures), with the back-end's path.
    pub fn backend_errors(&self) -> Vec<String> {
        self.backends
            .iter()
            .filter_map(|b| {
                b.error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .map(|e| format!("{}: {e}", b.path))
            })
            .collect()
    }

    /// What the guest wrote to its console ring (empty without a console ring).
    pub fn console_ring_output(&self) -> String {
        self.console
            .as_ref()
            .map(|c| c.output())
            .unwrap_or_default()
    }

    /// The console's pty, with [`ConsoleOutput::Pty`].
    pub fn console_pty(&self) -> Option<&std::path::Path> {
        self.console.as_ref().and_then(|c| c.pty_path())
    }

    /// What the guest printed with `console_io` and on its console ring.
    pub fn all_output(&self) -> String {
        format!(
            "{}{}",
            self.domain().console_output(),
            self.console_ring_output()
        )
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(d) = &self.domain {
            d.destroy();
        }
        self.stop_devices();
        self.backends.clear();
        self.console = None;
        // As libxl does at destroy: the guest's home and its back-end directories go, then xenstored
        // forgets the domain (`@releaseDomain`).
        if let Some(d) = &self.domain {
            let domid = d.domid();
            self.xs.rm(&format!("/local/domain/{domid}"));
            for class in ["vbd", "vif"] {
                self.xs
                    .rm(&format!("/local/domain/0/backend/{class}/{domid}"));
            }
        }
        self.store = None;
        self.domain = None;
    }
}
