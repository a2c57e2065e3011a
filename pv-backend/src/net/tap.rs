//! A Linux TAP device as a [`NetDevice`]: `/dev/net/tun` opened with `IFF_TAP | IFF_NO_PI`, and
//! `IFF_VNET_HDR` when offloads are used (`Documentation/networking/tuntap.rst`).
//!
//! With a vnet header every frame is preceded by `struct virtio_net_hdr` (10 bytes, the legacy
//! layout, in the host's byte order): its flags carry [`Checksum::Partial`] (`NEEDS_CSUM`) and
//! [`Checksum::Validated`] (`DATA_VALID`), its `gso_type` and `gso_size` carry [`Gso`]. Offloads
//! asked for with `TUNSETOFFLOAD` are what the kernel may hand *us*; on send the kernel accepts
//! partial checksums and TCP GSO whenever the header is on.
//!
//! The device lives as long as the [`Tap`] (it is not made persistent). It can be moved into
//! another network namespace (`ip link set dev NAME netns NS`) and keeps working.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};

use super::{
    Checksum, ETH_HLEN, FrameMeta, Gso, GsoType, MAX_FRAME_LEN, NetDevice, NetError, Offloads,
    RxInfo,
};

/// `IFNAMSIZ`: an interface name's bytes, with its NUL.
const IFNAMSIZ: usize = 16;

/// `struct ifreq` with the `ifr_flags` member of its union (`linux/if.h`); 40 bytes on Linux.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(size_of::<IfReq>() == 40);

/// The length of the legacy `struct virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = 10;

const VNET_F_NEEDS_CSUM: u8 = 1;
const VNET_F_DATA_VALID: u8 = 2;
const VNET_GSO_NONE: u8 = 0;
const VNET_GSO_TCPV4: u8 = 1;
const VNET_GSO_TCPV6: u8 = 4;
const VNET_GSO_ECN: u8 = 0x80;

/// `struct virtio_net_hdr` (legacy, `linux/virtio_net.h`), decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct VnetHdr {
    flags: u8,
    gso_type: u8,
    hdr_len: u16,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
}

impl VnetHdr {
    fn from_meta(meta: &FrameMeta) -> Self {
        let mut h = Self::default();
        match meta.checksum {
            Checksum::None => {}
            Checksum::Partial { start, offset } => {
                h.flags = VNET_F_NEEDS_CSUM;
                h.csum_start = start;
                h.csum_offset = offset;
            }
            Checksum::Validated => h.flags = VNET_F_DATA_VALID,
        }
        if let Some(g) = meta.gso {
            h.gso_type = match g.gso_type {
                GsoType::TcpV6 => VNET_GSO_TCPV6,
                _ => VNET_GSO_TCPV4,
            };
            h.gso_size = g.size;
            h.hdr_len = g.hdr_len;
        }
        h
    }

    fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }

    fn decode(b: &[u8; VNET_HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    fn to_meta(self) -> Result<FrameMeta, NetError> {
        let checksum = if self.flags & VNET_F_NEEDS_CSUM != 0 {
            Checksum::Partial {
                start: self.csum_start,
                offset: self.csum_offset,
            }
        } else if self.flags & VNET_F_DATA_VALID != 0 {
            Checksum::Validated
        } else {
            Checksum::None
        };
        let gso_type = match self.gso_type & !VNET_GSO_ECN {
            VNET_GSO_NONE => None,
            VNET_GSO_TCPV4 => Some(GsoType::TcpV4),
            VNET_GSO_TCPV6 => Some(GsoType::TcpV6),
            other => {
                return Err(NetError::BadMeta {
                    what: format!("the kernel sent virtio-net GSO type {other}, not asked for"),
                });
            }
        };
        Ok(FrameMeta {
            checksum,
            gso: gso_type.map(|gso_type| Gso {
                gso_type,
                size: self.gso_size,
                hdr_len: self.hdr_len,
            }),
        })
    }
}

/// How to open a TAP device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapOptions {
    /// The interface name, or a template such as `"tap%d"`; empty lets the kernel choose.
    pub name: String,
    /// Use `IFF_VNET_HDR`, so that frames carry offload metadata. Without it, only frames with
    /// default metadata can be sent and received frames have complete checksums.
    pub vnet_hdr: bool,
    /// The offloads the kernel may hand us (`TUNSETOFFLOAD`); only with `vnet_hdr`.
    pub rx_offloads: Offloads,
}

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    vnet_hdr: bool,
}

fn io_err(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let op = op.into();
    move |source| NetError::Io { op, source }
}

impl Tap {
    /// Creates a TAP device (it needs `CAP_NET_ADMIN`). The interface is down; bring it up with
    /// `ip link set dev NAME up`.
    pub fn open(opts: &TapOptions) -> Result<Self, NetError> {
        if opts.name.len() >= IFNAMSIZ || opts.name.as_bytes().contains(&0) {
            return Err(NetError::BadMeta {
                what: format!(
                    "interface name {:?} must be under {IFNAMSIZ} bytes without NUL",
                    opts.name
                ),
            });
        }
        if !opts.vnet_hdr && opts.rx_offloads != Offloads::NONE {
            return Err(NetError::Unsupported {
                what: "receive offloads without IFF_VNET_HDR",
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .map_err(io_err("opening /dev/net/tun"))?;
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        req.name[..opts.name.len()].copy_from_slice(opts.name.as_bytes());
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if opts.vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        req.flags = flags as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is (40 bytes, the name
        // NUL-terminated since its length was checked to be below IFNAMSIZ); the fd is open.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(NetError::Io {
                op: format!("TUNSETIFF {:?} (it needs CAP_NET_ADMIN)", opts.name),
                source: std::io::Error::last_os_error(),
            });
        }
        let end = req.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
        let name = String::from_utf8_lossy(&req.name[..end]).into_owned();
        if opts.vnet_hdr {
            let hdr_len: libc::c_int = VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is valid.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
            if rc < 0 {
                return Err(io_err("TUNSETVNETHDRSZ")(std::io::Error::last_os_error()));
            }
            let mut off: libc::c_uint = 0;
            if opts.rx_offloads.csum {
                off |= libc::TUN_F_CSUM;
            }
            if opts.rx_offloads.tso4 {
                off |= libc::TUN_F_TSO4;
            }
            if opts.rx_offloads.tso6 {
                off |= libc::TUN_F_TSO6;
            }
            if (opts.rx_offloads.tso4 || opts.rx_offloads.tso6) && !opts.rx_offloads.csum {
                return Err(NetError::Unsupported {
                    what: "TSO without checksum offload",
                });
            }
            // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long of flags).
            let rc = unsafe {
                libc::ioctl(
                    file.as_raw_fd(),
                    libc::TUNSETOFFLOAD,
                    libc::c_ulong::from(off),
                )
            };
            if rc < 0 {
                return Err(io_err(format!("TUNSETOFFLOAD {off:#x}"))(
                    std::io::Error::last_os_error(),
                ));
            }
        }
        Ok(Self {
            file,
            name,
            vnet_hdr: opts.vnet_hdr,
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether frames carry a vnet header.
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }
}

impl NetDevice for Tap {
    fn offloads(&self) -> Offloads {
        if self.vnet_hdr {
            Offloads::ALL
        } else {
            Offloads::NONE
        }
    }

    fn max_frame_len(&self) -> usize {
        MAX_FRAME_LEN
    }

    fn send(&mut self, frame: &[u8], meta: &FrameMeta) -> Result<(), NetError> {
        if frame.len() < ETH_HLEN {
            return Err(NetError::FrameTooShort { len: frame.len() });
        }
        if frame.len() > MAX_FRAME_LEN {
            return Err(NetError::FrameTooLong {
                len: frame.len(),
                max: MAX_FRAME_LEN,
            });
        }
        meta.validate(frame.len())?;
        self.offloads().allows(meta)?;
        let hdr = VnetHdr::from_meta(meta).encode();
        let bufs = [IoSlice::new(&hdr), IoSlice::new(frame)];
        let bufs = if self.vnet_hdr { &bufs[..] } else { &bufs[1..] };
        let want = bufs.iter().map(|b| b.len()).sum::<usize>();
        match self.file.write_vectored(bufs) {
            Ok(n) if n == want => Ok(()),
            Ok(n) => Err(NetError::Io {
                op: format!(
                    "writing a frame of {want} bytes to {} (wrote {n})",
                    self.name
                ),
                source: std::io::Error::from(ErrorKind::WriteZero),
            }),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Err(NetError::WouldBlock),
            Err(e) => Err(NetError::Io {
                op: format!("writing a frame of {want} bytes to {}", self.name),
                source: e,
            }),
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<RxInfo>, NetError> {
        // The kernel truncates a frame to the buffer silently, so the buffer must hold the
        // largest one.
        if buf.len() < MAX_FRAME_LEN {
            return Err(NetError::BufferTooSmall {
                len: buf.len(),
                need: MAX_FRAME_LEN,
            });
        }
        let mut hdr = [0u8; VNET_HDR_LEN];
        let r = if self.vnet_hdr {
            self.file
                .read_vectored(&mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(buf)])
        } else {
            self.file.read(buf)
        };
        let n = match r {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return Ok(None);
            }
            Err(e) => return Err(io_err(format!("reading from {}", self.name))(e)),
        };
        let len = if self.vnet_hdr {
            if n < VNET_HDR_LEN {
                return Err(NetError::FrameTooShort { len: n });
            }
            n - VNET_HDR_LEN
        } else {
            n
        };
        let meta = if self.vnet_hdr {
            VnetHdr::decode(&hdr).to_meta()?
        } else {
            FrameMeta::default()
        };
        Ok(Some(RxInfo { len, meta }))
    }

    fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(&self.file))
    }

    fn wait_readable(&self, timeout: Duration) -> Result<bool, NetError> {
        let ts = Timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&self.file, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(n) => Ok(n > 0),
            Err(rustix::io::Errno::INTR) => Ok(false),
            Err(e) => Err(io_err(format!("polling {}", self.name))(e.into())),
        }
    }
}
