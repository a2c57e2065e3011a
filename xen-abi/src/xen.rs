//! The pages Xen shares with a PV guest: `start_info`, `shared_info`, `vcpu_info` and the per-vCPU time
//! record `vcpu_time_info` (`xen.h`, `arch-x86/xen.h`, `arch-x86/xen-x86_64.h`), x86-64 layout.
//!
//! - [`StartInfo`] is the page the domain builder hands a PV kernel at boot (`%rsi` on entry), with
//!   [`SifFlags`] and the console union seen as the domU or dom0 view ([`StartInfoConsole`]).
//! - [`SharedInfo`] is the shared-info page: [`XEN_LEGACY_MAX_VCPUS`] [`VcpuInfo`] records, the 2-level
//!   event-channel bitmaps (`evtchn_pending`, `evtchn_mask`; the `event_channel` module operates on
//!   them), the wall clock and [`ArchSharedInfo`]. Both sides write it: it is plain integers here, and
//!   whoever maps it decides how to access each field.
//! - [`VcpuTimeInfo`] is protected by a version seqlock. [`VcpuTimeInfo::snapshot`] checks a copy
//!   against the version read again after the copy, and [`read_vcpu_time`] retries a bounded number of
//!   times; the result, [`PvClock`], converts a TSC reading to system time with Xen's `pvclock` formula
//!   ([`pvclock_scale_delta`]). [`PvClockScale::from_tsc_hz`] computes the multiplier and shift a
//!   hypervisor publishes for a TSC frequency.
#![forbid(unsafe_code)]

use bitflags::bitflags;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// The errors of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A `vcpu_time_info` copy taken while the hypervisor was updating it (odd `version`).
    #[error("vcpu_time_info version {0} is odd: an update was in progress, read again")]
    TimeUpdateInProgress(u32),
    /// A `vcpu_time_info` whose `version` changed while it was copied.
    #[error(
        "vcpu_time_info version changed from {before} to {after} while it was copied, read again"
    )]
    TimeVersionChanged {
        /// The version in the copy.
        before: u32,
        /// The version read after the copy.
        after: u32,
    },
    /// The wall clock was being updated (odd `wc_version`).
    #[error("shared_info wc_version {0} is odd: a wall-clock update was in progress, read again")]
    WallclockUpdateInProgress(u32),
    /// The wall clock changed while it was copied.
    #[error(
        "shared_info wc_version changed from {before} to {after} while it was copied, read again"
    )]
    WallclockVersionChanged {
        /// The version in the copy.
        before: u32,
        /// The version read after the copy.
        after: u32,
    },
    /// No consistent copy within the caller's number of attempts.
    #[error(
        "no consistent vcpu_time_info copy in {attempts} attempts (the last failure: {last:?})"
    )]
    TimeUnstable {
        /// How many copies were taken.
        attempts: u32,
        /// Why the last one failed (an odd or a changed version); `None` if no attempt was allowed.
        last: Option<SeqlockFailure>,
    },
    /// A TSC frequency of zero.
    #[error("a TSC frequency of 0 Hz has no pvclock scale")]
    ZeroTscFrequency,
    /// A `start_info.magic` that does not start with `xen-3.0-x86_64`.
    #[error("start_info magic {0:?} does not start with \"xen-3.0-x86_64\"")]
    BadStartInfoMagic([u8; 32]),
    /// A command line that does not fit `cmd_line` with its NUL terminator.
    #[error(
        "command line of {len} bytes does not fit start_info.cmd_line (at most {max} bytes before the NUL)"
    )]
    CmdLineTooLong {
        /// The length given.
        len: usize,
        /// `MAX_GUEST_CMDLINE - 1`.
        max: usize,
    },
    /// A command line with a NUL byte inside it.
    #[error("command line has a NUL byte at offset {0}")]
    CmdLineHasNul(usize),
    /// A `start_info.cmd_line` with no NUL terminator in its 1024 bytes.
    #[error("start_info.cmd_line has no NUL terminator in its 1024 bytes")]
    CmdLineUnterminated,
}

/// Why one seqlock read failed. No C counterpart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqlockFailure {
    /// The version was odd: an update was in progress.
    InProgress(u32),
    /// The version changed during the copy.
    Changed {
        /// The version in the copy.
        before: u32,
        /// The version read after it.
        after: u32,
    },
}

impl core::fmt::Display for SeqlockFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::InProgress(v) => write!(f, "version {v} was odd"),
            Self::Changed { before, after } => {
                write!(f, "version changed from {before} to {after}")
            }
        }
    }
}

/// The error of this module, under a name that says where it comes from.
pub type XenError = Error;

/// `XEN_LEGACY_MAX_VCPUS` in `arch-x86/xen.h`: the vCPUs whose `vcpu_info` lives in `shared_info`.
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;

/// The number of `xen_ulong_t` words in each 2-level event-channel bitmap of `shared_info`
/// (`sizeof(xen_ulong_t) * 8` in `xen.h`): 64 words of 64 bits, 4096 channels. No named C constant.
pub const SHARED_INFO_EVTCHN_WORDS: usize = 64;

// ---------------------------------------------------------------------------------------------------
// vcpu_time_info and pvclock
// ---------------------------------------------------------------------------------------------------

/// `XEN_PVCLOCK_TSC_STABLE_BIT` in `xen.h`: the TSC is stable across vCPUs (`vcpu_time_info.flags`).
pub const XEN_PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;
/// `XEN_PVCLOCK_GUEST_STOPPED` in `xen.h`: the guest was stopped (`vcpu_time_info.flags`).
pub const XEN_PVCLOCK_GUEST_STOPPED: u8 = 1 << 1;

/// The time record of one vCPU: `struct vcpu_time_info` in `xen.h` (32 bytes).
///
/// The hypervisor increments `version` before and after each update, so an odd version means an update
/// is in progress. Current system time is
/// `system_time + ((((tsc - tsc_timestamp) << tsc_shift) * tsc_to_system_mul) >> 32)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuTimeInfo {
    /// The seqlock version: odd while an update is in progress.
    pub version: u32,
    /// Padding, declared in C.
    pub pad0: u32,
    /// The TSC at the last update.
    pub tsc_timestamp: u64,
    /// System time, in nanoseconds since boot, at `tsc_timestamp`.
    pub system_time: u64,
    /// The 32.32 fixed-point multiplier from shifted TSC ticks to nanoseconds.
    pub tsc_to_system_mul: u32,
    /// The shift applied to the TSC delta before the multiplication (negative: right shift).
    pub tsc_shift: i8,
    /// `XEN_PVCLOCK_*` flags.
    pub flags: u8,
    /// Padding, declared in C.
    pub pad1: [u8; 2],
}

/// Xen's `pvclock` scaling of a TSC delta to nanoseconds: shift `delta` left by `tsc_shift` (right if
/// negative), multiply by the 32.32 fixed-point `mul_frac`, keep bits 32 to 95 of the 96-bit product
/// (`scale_delta` in Xen, `pvclock_scale_delta` in Linux). A shift of 64 or more gives 0 where C would
/// be undefined.
pub const fn pvclock_scale_delta(delta: u64, mul_frac: u32, tsc_shift: i8) -> u64 {
    let shift = tsc_shift.unsigned_abs() as u32;
    let shifted = if shift >= 64 {
        0
    } else if tsc_shift < 0 {
        delta >> shift
    } else {
        delta << shift
    };
    ((shifted as u128 * mul_frac as u128) >> 32) as u64
}

/// A consistent copy of a [`VcpuTimeInfo`]: the values that convert a TSC reading to system time. No C
/// counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvClock {
    /// The (even) version the copy was taken at.
    pub version: u32,
    /// `tsc_timestamp`.
    pub tsc_timestamp: u64,
    /// `system_time`.
    pub system_time: u64,
    /// `tsc_to_system_mul`.
    pub tsc_to_system_mul: u32,
    /// `tsc_shift`.
    pub tsc_shift: i8,
    /// `flags`.
    pub flags: u8,
}

impl PvClock {
    /// The system time, in nanoseconds, at TSC reading `tsc`: `system_time + scale(tsc -
    /// tsc_timestamp)`, in wrapping arithmetic as the C code does.
    pub const fn system_time_at(&self, tsc: u64) -> u64 {
        let delta = tsc.wrapping_sub(self.tsc_timestamp);
        self.system_time.wrapping_add(pvclock_scale_delta(
            delta,
            self.tsc_to_system_mul,
            self.tsc_shift,
        ))
    }

    /// The TSC frequency this scale describes, `((10^9 << 32) / tsc_to_system_mul) >> tsc_shift` as
    /// `xen.h` gives it; `None` for a zero multiplier or a result that does not fit in `u64`.
    pub fn tsc_frequency_hz(&self) -> Option<u64> {
        PvClockScale {
            tsc_to_system_mul: self.tsc_to_system_mul,
            tsc_shift: self.tsc_shift,
        }
        .tsc_frequency_hz()
    }

    /// Whether `XEN_PVCLOCK_TSC_STABLE_BIT` is set.
    pub const fn is_tsc_stable(&self) -> bool {
        self.flags & XEN_PVCLOCK_TSC_STABLE_BIT != 0
    }
}

/// The multiplier and shift that scale TSC ticks to nanoseconds. No C counterpart (Xen's private
/// `struct time_scale`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvClockScale {
    /// The 32.32 multiplier (`tsc_to_system_mul`).
    pub tsc_to_system_mul: u32,
    /// The shift (`tsc_shift`).
    pub tsc_shift: i8,
}

impl PvClockScale {
    /// The scale for a TSC running at `hz`: the shift puts `hz << shift` in `(10^9, 2 * 10^9]`, so the
    /// multiplier `(10^9 << 32) / (hz << shift)` keeps 31 to 32 significant bits.
    pub fn from_tsc_hz(hz: u64) -> Result<Self, Error> {
        const NS: u128 = 1_000_000_000;
        if hz == 0 {
            return Err(Error::ZeroTscFrequency);
        }
        let hz = hz as u128;
        // hz is in [1, 2^64): shift is in [-34, 30]. The bounded loop finds the smallest shift with
        // hz * 2^shift > 10^9; then hz * 2^(shift - 1) <= 10^9, so hz * 2^shift <= 2 * 10^9.
        let mut shift: i32 = -40;
        while shift < 40 {
            let above = if shift >= 0 {
                hz << shift > NS
            } else {
                hz > NS << -shift
            };
            if above {
                break;
            }
            shift += 1;
        }
        let mul = if shift >= 0 {
            (NS << 32) / (hz << shift)
        } else {
            (NS << (32 - shift)) / hz
        };
        Ok(Self {
            tsc_to_system_mul: mul as u32,
            tsc_shift: shift as i8,
        })
    }

    /// The TSC frequency this scale describes: `((10^9 << 32) / tsc_to_system_mul) >> tsc_shift`
    /// (`xen.h`); `None` for a zero multiplier or a result that does not fit in `u64`.
    pub fn tsc_frequency_hz(&self) -> Option<u64> {
        if self.tsc_to_system_mul == 0 {
            return None;
        }
        let base = (1_000_000_000u128 << 32) / self.tsc_to_system_mul as u128;
        let shift = self.tsc_shift.unsigned_abs() as u32;
        let hz = if self.tsc_shift >= 0 {
            base >> shift
        } else {
            base.checked_shl(shift)?
        };
        u64::try_from(hz).ok()
    }

    /// Scales a TSC delta to nanoseconds ([`pvclock_scale_delta`]).
    pub const fn scale(&self, delta: u64) -> u64 {
        pvclock_scale_delta(delta, self.tsc_to_system_mul, self.tsc_shift)
    }
}

impl VcpuTimeInfo {
    /// A record with the given values, version `version`, and the padding zeroed.
    pub const fn new(
        version: u32,
        tsc_timestamp: u64,
        system_time: u64,
        scale: PvClockScale,
        flags: u8,
    ) -> Self {
        Self {
            version,
            pad0: 0,
            tsc_timestamp,
            system_time,
            tsc_to_system_mul: scale.tsc_to_system_mul,
            tsc_shift: scale.tsc_shift,
            flags,
            pad1: [0; 2],
        }
    }

    /// Checks this copy against the seqlock: `version_after` is `version` read again from shared memory
    /// after the copy (behind a read barrier). The copy is consistent if the version is even and did not
    /// change.
    pub fn snapshot(&self, version_after: u32) -> Result<PvClock, Error> {
        match seqlock_check(self.version, version_after) {
            Some(SeqlockFailure::InProgress(v)) => Err(Error::TimeUpdateInProgress(v)),
            Some(SeqlockFailure::Changed { before, after }) => {
                Err(Error::TimeVersionChanged { before, after })
            }
            None => Ok(PvClock {
                version: self.version,
                tsc_timestamp: self.tsc_timestamp,
                system_time: self.system_time,
                tsc_to_system_mul: self.tsc_to_system_mul,
                tsc_shift: self.tsc_shift,
                flags: self.flags,
            }),
        }
    }
}

fn seqlock_check(before: u32, after: u32) -> Option<SeqlockFailure> {
    if before & 1 != 0 {
        Some(SeqlockFailure::InProgress(before))
    } else if before != after {
        Some(SeqlockFailure::Changed { before, after })
    } else {
        None
    }
}

/// Reads a consistent [`PvClock`] with at most `max_attempts` copies. Each call of `read` copies the
/// record out of shared memory once and then reads `version` again (with a read barrier in between),
/// returning both; the loop is bounded, so a hypervisor that never finishes an update cannot hang the
/// reader.
pub fn read_vcpu_time<F>(max_attempts: u32, mut read: F) -> Result<PvClock, Error>
where
    F: FnMut() -> (VcpuTimeInfo, u32),
{
    let mut last = None;
    for _ in 0..max_attempts {
        let (copy, version_after) = read();
        match seqlock_check(copy.version, version_after) {
            None => return copy.snapshot(version_after),
            failure => last = failure,
        }
    }
    Err(Error::TimeUnstable {
        attempts: max_attempts,
        last,
    })
}

// ---------------------------------------------------------------------------------------------------
// vcpu_info, arch_vcpu_info
// ---------------------------------------------------------------------------------------------------

/// `struct arch_vcpu_info` in `arch-x86/xen-x86_64.h` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ArchVcpuInfo {
    /// The faulting address of the last page fault delivered to the guest.
    pub cr2: u64,
    /// Padding, declared in C (keeps `vcpu_info` at 64 bytes).
    pub pad: u64,
}

/// The per-vCPU part of `shared_info`: `struct vcpu_info` in `xen.h` (64 bytes on x86).
///
/// `evtchn_upcall_pending` is set by the hypervisor and cleared by the guest; `evtchn_upcall_mask` is the
/// guest's "interrupts disabled" flag; `evtchn_pending_sel` has one bit per word of
/// `shared_info.evtchn_pending` with a pending, unmasked channel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuInfo {
    /// Non-zero: an event upcall is pending.
    pub evtchn_upcall_pending: u8,
    /// Non-zero: event upcalls are masked (`XEN_HAVE_PV_UPCALL_MASK` is set on x86).
    pub evtchn_upcall_mask: u8,
    _pad0: [u8; 6],
    /// The selector: bit `i` says word `i` of `evtchn_pending` may have pending channels.
    pub evtchn_pending_sel: u64,
    /// The architecture-specific part.
    pub arch: ArchVcpuInfo,
    /// The vCPU's time record.
    pub time: VcpuTimeInfo,
}

impl VcpuInfo {
    /// A zeroed record (padding included).
    pub fn new() -> Self {
        Self::new_zeroed()
    }
}

impl Default for VcpuInfo {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------------------
// shared_info, arch_shared_info
// ---------------------------------------------------------------------------------------------------

/// `struct arch_shared_info` in `arch-x86/xen.h`, x86-64 layout (48 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ArchSharedInfo {
    /// The number of valid entries in the P2M table(s).
    pub max_pfn: u64,
    /// The frame of the list of frames of the list of P2M frames (0: not set up, `!0`: invalid, use
    /// `p2m_vaddr`).
    pub pfn_to_mfn_frame_list_list: u64,
    /// The NMI reason bits.
    pub nmi_reason: u64,
    /// The cr3 of the address space in which `p2m_vaddr` is valid (0: the next two fields are unused).
    pub p2m_cr3: u64,
    /// The virtual address of the linear P2M list.
    pub p2m_vaddr: u64,
    /// The P2M generation count (odd while the guest updates a mapping).
    pub p2m_generation: u64,
}

/// The shared-info page: `struct shared_info` in `xen.h`, x86-64 layout (3136 bytes, in a 4096-byte
/// page).
///
/// Both the hypervisor and the guest write it; the 2-level event-channel bitmaps `evtchn_pending` and
/// `evtchn_mask` are operated on by the `event_channel` module.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SharedInfo {
    /// The `vcpu_info` of vCPUs 0 to 31 (later vCPUs register theirs elsewhere with `VCPUOP_register_vcpu_info`).
    pub vcpu_info: [VcpuInfo; XEN_LEGACY_MAX_VCPUS],
    /// The PENDING bits of event channels 0 to 4095, cleared by the guest.
    pub evtchn_pending: [u64; SHARED_INFO_EVTCHN_WORDS],
    /// The MASK bits of event channels 0 to 4095, written only by the guest.
    pub evtchn_mask: [u64; SHARED_INFO_EVTCHN_WORDS],
    /// The wall-clock seqlock version (as `vcpu_time_info.version`).
    pub wc_version: u32,
    /// Wall-clock seconds since the Unix epoch at system time 0, low 32 bits.
    pub wc_sec: u32,
    /// Wall-clock nanoseconds.
    pub wc_nsec: u32,
    /// Wall-clock seconds, high 32 bits.
    pub wc_sec_hi: u32,
    /// The architecture-specific part.
    pub arch: ArchSharedInfo,
}

/// A consistent copy of the wall clock of `shared_info`. No C counterpart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    /// Seconds since the Unix epoch at system time 0 (`wc_sec | wc_sec_hi << 32`).
    pub sec: u64,
    /// Nanoseconds (`wc_nsec`).
    pub nsec: u32,
}

impl SharedInfo {
    /// A zeroed page.
    pub fn new() -> Self {
        Self::new_zeroed()
    }

    /// The `vcpu_info` of `vcpu`, if it is below [`XEN_LEGACY_MAX_VCPUS`].
    pub fn vcpu(&self, vcpu: usize) -> Option<&VcpuInfo> {
        self.vcpu_info.get(vcpu)
    }

    /// The `vcpu_info` of `vcpu`, mutably, if it is below [`XEN_LEGACY_MAX_VCPUS`].
    pub fn vcpu_mut(&mut self, vcpu: usize) -> Option<&mut VcpuInfo> {
        self.vcpu_info.get_mut(vcpu)
    }

    /// The wall clock of this copy, checked against `wc_version_after` (`wc_version` read again after
    /// the copy).
    pub fn wallclock(&self, wc_version_after: u32) -> Result<WallClock, Error> {
        match seqlock_check(self.wc_version, wc_version_after) {
            Some(SeqlockFailure::InProgress(v)) => Err(Error::WallclockUpdateInProgress(v)),
            Some(SeqlockFailure::Changed { before, after }) => {
                Err(Error::WallclockVersionChanged { before, after })
            }
            None => Ok(WallClock {
                sec: u64::from(self.wc_sec) | u64::from(self.wc_sec_hi) << 32,
                nsec: self.wc_nsec,
            }),
        }
    }

    /// Stores a wall clock (both halves of the seconds); the caller brackets it with `wc_version`
    /// increments.
    pub fn set_wallclock(&mut self, clock: WallClock) {
        self.wc_sec = clock.sec as u32;
        self.wc_sec_hi = (clock.sec >> 32) as u32;
        self.wc_nsec = clock.nsec;
    }
}

impl Default for SharedInfo {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------------------
// start_info
// ---------------------------------------------------------------------------------------------------

/// `MAX_GUEST_CMDLINE` in `xen.h`: the size of `start_info.cmd_line`, NUL included.
pub const MAX_GUEST_CMDLINE: usize = 1024;

/// The prefix of `start_info.magic` for a 64-bit x86 PV guest (`"xen-<version>-<platform>"`; the ABI
/// version is 3.0). No C constant.
pub const START_INFO_MAGIC_PREFIX: &[u8] = b"xen-3.0-x86_64";

/// `SIF_PRIVILEGED` in `xen.h`: the domain is privileged.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// `SIF_INITDOMAIN` in `xen.h`: this is the initial control domain.
pub const SIF_INITDOMAIN: u32 = 1 << 1;
/// `SIF_MULTIBOOT_MOD` in `xen.h`: `mod_start` is a multiboot module list.
pub const SIF_MULTIBOOT_MOD: u32 = 1 << 2;
/// `SIF_MOD_START_PFN` in `xen.h`: `mod_start` is a PFN, not a virtual address.
pub const SIF_MOD_START_PFN: u32 = 1 << 3;
/// `SIF_VIRT_P2M_4TOOLS` in `xen.h`: the tools understand a virtually mapped P2M.
pub const SIF_VIRT_P2M_4TOOLS: u32 = 1 << 4;
/// `SIF_PM_MASK` in `xen.h`: one byte reserved for xen-pm options.
pub const SIF_PM_MASK: u32 = 0xFF << 8;

bitflags! {
    /// `start_info.flags` (`SIF_*` in `xen.h`). Unknown bits are kept (`from_bits_retain`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct SifFlags: u32 {
        /// `SIF_PRIVILEGED`.
        const PRIVILEGED = SIF_PRIVILEGED;
        /// `SIF_INITDOMAIN`.
        const INITDOMAIN = SIF_INITDOMAIN;
        /// `SIF_MULTIBOOT_MOD`.
        const MULTIBOOT_MOD = SIF_MULTIBOOT_MOD;
        /// `SIF_MOD_START_PFN`.
        const MOD_START_PFN = SIF_MOD_START_PFN;
        /// `SIF_VIRT_P2M_4TOOLS`.
        const VIRT_P2M_4TOOLS = SIF_VIRT_P2M_4TOOLS;
    }
}

/// The `console` union of `start_info` (16 bytes): as plain words, read through the domU view
/// ([`ConsoleDomU`]) or the dom0 view ([`ConsoleDom0`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct StartInfoConsole {
    /// The union's bytes as two little-endian words: `domU.mfn`, then `domU.evtchn` in the low half of
    /// the second; or `dom0.info_off` and `dom0.info_size` as the two halves of the first.
    pub words: [u64; 2],
}

/// The domU view of `start_info.console` (`console.domU` in `xen.h`). No separate C type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleDomU {
    /// The machine frame of the console ring page.
    pub mfn: u64,
    /// The event channel of the console.
    pub evtchn: u32,
}

/// The dom0 view of `start_info.console` (`console.dom0` in `xen.h`). No separate C type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleDom0 {
    /// The offset of the `dom0_vga_console_info` in the start-info page.
    pub info_off: u32,
    /// The size of that `dom0_vga_console_info`.
    pub info_size: u32,
}

impl StartInfoConsole {
    /// The union holding the domU view (the padding after `evtchn` zeroed).
    pub const fn from_domu(view: ConsoleDomU) -> Self {
        Self {
            words: [view.mfn, view.evtchn as u64],
        }
    }

    /// The union holding the dom0 view (the second word zeroed).
    pub const fn from_dom0(view: ConsoleDom0) -> Self {
        Self {
            words: [view.info_off as u64 | (view.info_size as u64) << 32, 0],
        }
    }

    /// The domU view.
    pub const fn domu(&self) -> ConsoleDomU {
        ConsoleDomU {
            mfn: self.words[0],
            evtchn: self.words[1] as u32,
        }
    }

    /// The dom0 view.
    pub const fn dom0(&self) -> ConsoleDom0 {
        ConsoleDom0 {
            info_off: self.words[0] as u32,
            info_size: (self.words[0] >> 32) as u32,
        }
    }
}

/// The start-of-day page of a PV guest: `struct start_info` in `xen.h`, x86-64 layout (1168 bytes).
///
/// The domain builder writes it; the kernel finds it in `%rsi` on entry. The first block is refilled on
/// resume; the rest is only valid at first boot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct StartInfo {
    /// `"xen-<version>-<platform>"`, NUL-padded: `xen-3.0-x86_64` for this layout.
    pub magic: [u8; 32],
    /// Total pages allocated to the domain.
    pub nr_pages: u64,
    /// The machine address of the shared-info page.
    pub shared_info: u64,
    /// `SIF_*` flags.
    pub flags: u32,
    _pad0: [u8; 4],
    /// The machine frame of the XenStore ring page.
    pub store_mfn: u64,
    /// The event channel of XenStore.
    pub store_evtchn: u32,
    _pad1: [u8; 4],
    /// The console: the domU view (ring frame and event channel) or the dom0 view (VGA info location).
    pub console: StartInfoConsole,
    /// The virtual address of the initial page directory (first boot only).
    pub pt_base: u64,
    /// The number of bootstrap page-table frames.
    pub nr_pt_frames: u64,
    /// The virtual address of the page-frame list (the P2M).
    pub mfn_list: u64,
    /// The virtual address (or PFN with `SIF_MOD_START_PFN`) of the pre-loaded module (initrd).
    pub mod_start: u64,
    /// The size of the pre-loaded module, in bytes.
    pub mod_len: u64,
    /// The kernel command line, NUL-terminated (C `int8_t[MAX_GUEST_CMDLINE]`).
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    /// The first PFN of the initial P2M table.
    pub first_p2m_pfn: u64,
    /// The number of PFNs of the initial P2M table.
    pub nr_p2m_frames: u64,
}

impl StartInfo {
    /// A zeroed page with the x86-64 magic `xen-3.0-x86_64`.
    pub fn new() -> Self {
        let mut info = Self::new_zeroed();
        if let Some(dst) = info.magic.get_mut(..START_INFO_MAGIC_PREFIX.len()) {
            dst.copy_from_slice(START_INFO_MAGIC_PREFIX);
        }
        info
    }

    /// The flags, unknown bits kept.
    pub const fn sif_flags(&self) -> SifFlags {
        SifFlags::from_bits_retain(self.flags)
    }

    /// The magic up to its first NUL.
    pub fn magic_str(&self) -> &[u8] {
        let end = self
            .magic
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.magic.len());
        self.magic.get(..end).unwrap_or_default()
    }

    /// Stores a command line: at most `MAX_GUEST_CMDLINE - 1` bytes, no NUL inside; the rest of the
    /// field is zeroed.
    pub fn set_cmd_line(&mut self, line: &[u8]) -> Result<(), Error> {
        if let Some(at) = line.iter().position(|&b| b == 0) {
            return Err(Error::CmdLineHasNul(at));
        }
        let dst = self
            .cmd_line
            .get_mut(..line.len())
            .filter(|_| line.len() < MAX_GUEST_CMDLINE)
            .ok_or(Error::CmdLineTooLong {
                len: line.len(),
                max: MAX_GUEST_CMDLINE - 1,
            })?;
        dst.copy_from_slice(line);
        self.cmd_line
            .iter_mut()
            .skip(line.len())
            .for_each(|b| *b = 0);
        Ok(())
    }

    /// The command line, up to its NUL terminator, which must be inside the field.
    pub fn cmd_line(&self) -> Result<&[u8], Error> {
        let end = self
            .cmd_line
            .iter()
            .position(|&b| b == 0)
            .ok_or(Error::CmdLineUnterminated)?;
        Ok(self.cmd_line.get(..end).unwrap_or_default())
    }

    /// Checks this copy: the x86-64 magic and a NUL-terminated command line.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.magic.starts_with(START_INFO_MAGIC_PREFIX) {
            return Err(Error::BadStartInfoMagic(self.magic));
        }
        self.cmd_line().map(|_| ())
    }
}

impl Default for StartInfo {
    fn default() -> Self {
        Self::new()
    }
}

/// One module of a multiboot module list (`SIF_MULTIBOOT_MOD`): `struct xen_multiboot_mod_list` in
/// `xen.h` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct XenMultibootModList {
    /// The address of the first byte of the module.
    pub mod_start: u32,
    /// The address of the last byte of the module (inclusive).
    pub mod_end: u32,
    /// The address of the module's NUL-terminated command line.
    pub cmdline: u32,
    /// Unused, must be zero.
    pub pad: u32,
}
