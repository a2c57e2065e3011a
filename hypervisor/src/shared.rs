//! Live access to a domain's `shared_info` page, which the guest updates concurrently: event bitmaps and
//! flags through atomics, the time record through its seqlock.

use std::mem::offset_of;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use xen_abi::event_channel::{EVTCHN_2L_NR_WORDS, TwoLevel, VcpuEvents};
use xen_abi::xen::{SharedInfo, VcpuInfo, VcpuTimeInfo, XEN_LEGACY_MAX_VCPUS};

use crate::memory::{GuestRam, MemoryError, PAGE_SIZE};

/// A view of one domain's `shared_info`. It holds a raw pointer into guest memory: the owner keeps the
/// [`GuestRam`] alive for as long as the view (both live in the domain).
#[derive(Debug)]
pub struct SharedInfoView {
    base: *mut u8,
}

// SAFETY: the view only hands out atomics and volatile copies of memory that stays mapped while the domain
// lives; sharing it between the vCPU thread and other domains' threads is what the atomics are for.
unsafe impl Send for SharedInfoView {}
// SAFETY: as above: every access through `&self` is atomic.
unsafe impl Sync for SharedInfoView {}

const VCPU0: usize = offset_of!(SharedInfo, vcpu_info);

/// The offset of vCPU `n`'s `vcpu_info` in the page (`n` below [`XEN_LEGACY_MAX_VCPUS`], else vCPU 0's:
/// callers pass vCPU ids the domain has, which are below that bound).
fn vcpu_off(n: u32) -> usize {
    let n = if (n as usize) < XEN_LEGACY_MAX_VCPUS {
        n as usize
    } else {
        0
    };
    VCPU0 + n * size_of::<VcpuInfo>()
}

impl SharedInfoView {
    /// The view of the page at guest-physical `addr` of `ram`.
    pub fn new(ram: &GuestRam, addr: u64) -> Result<Self, MemoryError> {
        debug_assert_eq!(addr % PAGE_SIZE, 0);
        Ok(Self {
            base: ram.host_ptr(addr, PAGE_SIZE)?,
        })
    }

    fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off % 8 == 0 && off + 8 <= PAGE_SIZE as usize);
        // SAFETY: `off` is a field offset inside the mapped, page-aligned page (so 8-byte aligned), and
        // AtomicU64 has u64's layout; the guest's concurrent accesses are to the same memory, as in Xen.
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }

    fn atomic_u8(&self, off: usize) -> &AtomicU8 {
        debug_assert!(off < PAGE_SIZE as usize);
        // SAFETY: inside the mapped page; AtomicU8 has no alignment requirement beyond 1.
        unsafe { &*(self.base.add(off) as *const AtomicU8) }
    }

    fn bitmap(&self, off: usize) -> &[AtomicU64; EVTCHN_2L_NR_WORDS] {
        debug_assert!(off % 8 == 0 && off + EVTCHN_2L_NR_WORDS * 8 <= PAGE_SIZE as usize);
        // SAFETY: the bitmap is 64 u64 words inside the page, 8-byte aligned; same layout as the array.
        unsafe { &*(self.base.add(off) as *const [AtomicU64; EVTCHN_2L_NR_WORDS]) }
    }

    /// The 2-level event bitmaps.
    pub fn two_level(&self) -> TwoLevel<'_> {
        TwoLevel::new(
            self.bitmap(offset_of!(SharedInfo, evtchn_pending)),
            self.bitmap(offset_of!(SharedInfo, evtchn_mask)),
        )
    }

    /// vCPU `n`'s selector and upcall flag.
    pub fn vcpu_events(&self, n: u32) -> VcpuEvents<'_> {
        let off = vcpu_off(n);
        VcpuEvents {
            pending_sel: self.atomic_u64(off + offset_of!(VcpuInfo, evtchn_pending_sel)),
            upcall_pending: self.atomic_u8(off + offset_of!(VcpuInfo, evtchn_upcall_pending)),
        }
    }

    /// Sets vCPU `n`'s `arch.cr2` (the faulting address of a page fault bounced to the guest).
    pub fn set_cr2(&self, n: u32, cr2: u64) {
        let off =
            vcpu_off(n) + offset_of!(VcpuInfo, arch) + offset_of!(xen_abi::xen::ArchVcpuInfo, cr2);
        self.atomic_u64(off).store(cr2, Ordering::SeqCst);
    }

    /// vCPU `n`'s `evtchn_upcall_pending`.
    pub fn upcall_pending(&self, n: u32) -> bool {
        self.atomic_u8(vcpu_off(n) + offset_of!(VcpuInfo, evtchn_upcall_pending))
            .load(Ordering::SeqCst)
            != 0
    }

    /// vCPU `n`'s `evtchn_upcall_mask`.
    pub fn upcall_mask(&self, n: u32) -> &AtomicU8 {
        self.atomic_u8(vcpu_off(n) + offset_of!(VcpuInfo, evtchn_upcall_mask))
    }

    /// Publishes vCPU `n`'s time record under its seqlock (version odd while writing, then even).
    pub fn write_time(
        &self,
        n: u32,
        tsc_timestamp: u64,
        system_time: u64,
        scale: xen_abi::xen::PvClockScale,
    ) {
        let off = vcpu_off(n) + offset_of!(VcpuInfo, time);
        let version = self.atomic_u32(off + offset_of!(VcpuTimeInfo, version));
        let v = version.load(Ordering::SeqCst);
        let next = (v | 1).wrapping_add(1);
        version.store(v | 1, Ordering::SeqCst);
        let rec = VcpuTimeInfo::new(
            next,
            tsc_timestamp,
            system_time,
            scale,
            xen_abi::xen::XEN_PVCLOCK_TSC_STABLE_BIT,
        );
        let bytes = zerocopy::IntoBytes::as_bytes(&rec);
        // Everything but the version word (the first 4 bytes), as 8-byte atomics where aligned.
        let start = off + 8;
        for (i, chunk) in bytes[8..].chunks_exact(8).enumerate() {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            self.atomic_u64(start + i * 8).store(word, Ordering::SeqCst);
        }
        version.store(next, Ordering::SeqCst);
    }

    fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off % 4 == 0 && off + 4 <= PAGE_SIZE as usize);
        // SAFETY: inside the mapped page and 4-byte aligned.
        unsafe { &*(self.base.add(off) as *const AtomicU32) }
    }

    /// Writes the wall clock (`wc_sec`, `wc_nsec`, `wc_sec_hi`) under `wc_version`.
    pub fn write_wallclock(&self, sec: u64, nsec: u32) {
        let ver = self.atomic_u32(offset_of!(SharedInfo, wc_version));
        let v = ver.load(Ordering::SeqCst);
        ver.store(v | 1, Ordering::SeqCst);
        self.atomic_u32(offset_of!(SharedInfo, wc_sec))
            .store(sec as u32, Ordering::SeqCst);
        self.atomic_u32(offset_of!(SharedInfo, wc_nsec))
            .store(nsec, Ordering::SeqCst);
        self.atomic_u32(offset_of!(SharedInfo, wc_sec_hi))
            .store((sec >> 32) as u32, Ordering::SeqCst);
        ver.store((v | 1).wrapping_add(1), Ordering::SeqCst);
    }
}
