//! The platform layer: the v1 grant table against the emulated hypervisor's grant mapping, and event
//! channels between the guest and a back-end domain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use blanket_xen::emulated::{BackendDomain, EmulatedXen, EmulationError};
use blanket_xen::platform::{
    EventChannels, GrantAccess, PlatformError, Translate, WaitEvent, Wake,
};
use xen_abi::XEN_PAGE_SIZE;
use xen_abi::grant_table::{GTF_permit_access, GTF_reading, GTF_readonly, GTF_writing, GrantError};
use xen_abi::ring::RingMemory;

fn setup() -> (Arc<EmulatedXen>, BackendDomain) {
    let xen = EmulatedXen::new(1, 16, 1);
    let back = BackendDomain::new(Arc::clone(&xen), 0);
    (xen, back)
}

#[test]
fn grant_writes_a_v1_entry_that_the_backend_can_map() {
    let (xen, back) = setup();
    let page = xen.alloc_pages(1).unwrap();
    let frame = xen.frame_of(page.as_ptr() as usize).unwrap();
    let gref = xen.grant_access(0, frame, false).unwrap();
    assert!(gref >= 8, "reserved entries are never handed out");
    let e = xen.grant_table().entry(gref).unwrap();
    assert_eq!(
        (e.flags, e.domid, u64::from(e.frame)),
        (GTF_permit_access, 0, frame)
    );
    let m = back.map_grant(gref, false).unwrap();
    let e = xen.grant_table().entry(gref).unwrap();
    assert_eq!(e.flags, GTF_permit_access | GTF_reading | GTF_writing);
    m.write(10, b"hello");
    let mut out = [0u8; 5];
    m.read(10, &mut out);
    assert_eq!(&out, b"hello");
    drop(m);
    assert_eq!(
        xen.grant_table().entry(gref).unwrap().flags,
        GTF_permit_access
    );
    xen.end_access(gref).unwrap();
    assert_eq!(xen.grant_table().entry(gref).unwrap().flags, 0);
}

#[test]
fn grant_in_use_by_the_backend_is_not_reclaimed() {
    let (xen, back) = setup();
    let page = xen.alloc_pages(1).unwrap();
    let frame = xen.frame_of(page.as_ptr() as usize).unwrap();
    let gref = xen.grant_access(0, frame, true).unwrap();
    let m = back.map_grant(gref, true).unwrap();
    let flags = GTF_permit_access | GTF_readonly | GTF_reading;
    assert_eq!(
        xen.end_access(gref),
        Err(PlatformError::GrantInUse { gref, flags })
    );
    // The entry is untouched and still counted as granted.
    assert_eq!(xen.grant_table().entry(gref).unwrap().flags, flags);
    assert_eq!(xen.grant_table().granted(), 1);
    // A second mapping still works: the grant was not revoked.
    let m2 = back.map_grant(gref, true).unwrap();
    drop(m);
    assert!(matches!(
        xen.end_access(gref),
        Err(PlatformError::GrantInUse { .. })
    ));
    drop(m2);
    xen.end_access(gref).unwrap();
    assert_eq!(xen.grant_table().granted(), 0);
    // After the end, the back-end cannot map the page again.
    assert!(matches!(
        back.map_grant(gref, true),
        Err(EmulationError::Grant {
            source: GrantError::NotPermitAccess { .. },
            ..
        })
    ));
}

#[test]
fn end_access_twice_or_on_a_reserved_or_unknown_ref() {
    let (xen, _back) = setup();
    let page = xen.alloc_pages(1).unwrap();
    let frame = xen.frame_of(page.as_ptr() as usize).unwrap();
    let gref = xen.grant_access(0, frame, false).unwrap();
    xen.end_access(gref).unwrap();
    assert!(matches!(
        xen.end_access(gref),
        Err(PlatformError::NotGranted { .. })
    ));
    assert!(matches!(
        xen.end_access(1),
        Err(PlatformError::BadGrantRef { gref: 1, .. })
    ));
    assert!(matches!(
        xen.end_access(512),
        Err(PlatformError::BadGrantRef { gref: 512, .. })
    ));
    assert!(matches!(
        xen.end_access(u32::MAX),
        Err(PlatformError::BadGrantRef { .. })
    ));
}

#[test]
fn readonly_grant_refuses_a_writable_mapping_and_other_domains() {
    let (xen, back) = setup();
    let page = xen.alloc_pages(1).unwrap();
    let frame = xen.frame_of(page.as_ptr() as usize).unwrap();
    let gref = xen.grant_access(0, frame, true).unwrap();
    assert!(matches!(
        back.map_grant(gref, false),
        Err(EmulationError::Grant {
            source: GrantError::ReadOnly { .. },
            ..
        })
    ));
    let other = BackendDomain::new(Arc::clone(&xen), 7);
    assert!(matches!(
        other.map_grant(gref, true),
        Err(EmulationError::Grant {
            source: GrantError::WrongDomain {
                granted_to: 0,
                requester: 7
            },
            ..
        })
    ));
    assert!(matches!(
        back.map_grant(100_000, true),
        Err(EmulationError::BadRef { .. })
    ));
    // A read-only mapping cannot write.
    let m = back.map_grant(gref, true).unwrap();
    assert_eq!(m.write(0, b"x"), 0);
}

#[test]
fn grant_table_exhaustion_is_a_typed_error() {
    let (xen, _back) = setup();
    // One frame: 512 entries, 8 reserved.
    let mut refs = Vec::new();
    for _ in 0..504 {
        refs.push(xen.grant_access(0, 0x1000, true).unwrap());
    }
    assert_eq!(
        xen.grant_access(0, 0x1000, true),
        Err(PlatformError::NoFreeGrant { capacity: 504 })
    );
    xen.end_access(refs[100]).unwrap();
    assert_eq!(xen.grant_access(0, 0x1000, true), Ok(refs[100]));
    assert!(matches!(
        xen.grant_access(0, 1 << 40, true),
        Err(PlatformError::FrameTooLarge { .. })
    ));
}

#[test]
fn grant_entry_is_complete_whenever_its_flags_are_valid() {
    // A reader thread acting as the hypervisor checks that every entry it sees valid already holds the
    // frame and domid of that grant (frame and domid are written before the flags).
    let (xen, _back) = setup();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (xen, stop) = (Arc::clone(&xen), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut seen = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for gref in 8..16 {
                    let e = xen.grant_table().entry(gref).unwrap();
                    if e.flags & 3 == GTF_permit_access {
                        assert_eq!(
                            u64::from(e.domid),
                            u64::from(e.frame) % 5,
                            "entry {gref}: {e:?}"
                        );
                        seen += 1;
                    }
                }
            }
            seen
        })
    };
    for i in 0..20_000u32 {
        let gref = xen
            .grant_access((i % 5) as u16, u64::from(i * 5 + i % 5), false)
            .unwrap();
        xen.end_access(gref).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
}

#[test]
fn frame_of_accepts_only_guest_pages() {
    let (xen, _back) = setup();
    let page = xen.alloc_pages(2).unwrap();
    let base = page.as_ptr() as usize;
    let f0 = xen.frame_of(base).unwrap();
    assert_eq!(xen.frame_of(base + XEN_PAGE_SIZE).unwrap(), f0 + 1);
    assert!(matches!(
        xen.frame_of(base + 1),
        Err(PlatformError::NotTranslatable { .. })
    ));
    let local = [0u8; 16];
    assert!(matches!(
        xen.frame_of(local.as_ptr() as usize),
        Err(PlatformError::NotTranslatable { .. })
    ));
}

#[test]
fn event_channels_between_guest_and_backend() {
    let (xen, back) = setup();
    let port = xen.alloc_unbound(0).unwrap();
    // Another domain may not bind a port meant for domain 0.
    let other = BackendDomain::new(Arc::clone(&xen), 3);
    assert!(matches!(
        other.bind_interdomain(port),
        Err(PlatformError::BadPort { .. })
    ));
    let local = back.bind_interdomain(port).unwrap();
    assert!(matches!(
        back.bind_interdomain(port),
        Err(PlatformError::BadPort { .. })
    ));
    assert_eq!(xen.wait(port, 1_000_000).unwrap(), Wake::TimedOut);
    // An event sent before the wait is not lost.
    back.notify(local).unwrap();
    assert_eq!(xen.wait(port, 1_000_000_000).unwrap(), Wake::Event);
    assert_eq!(xen.wait(port, 1_000_000).unwrap(), Wake::TimedOut);
    let t = {
        let back = back.clone();
        std::thread::spawn(move || back.wait(local, Duration::from_secs(5)).unwrap())
    };
    xen.notify(port).unwrap();
    assert_eq!(t.join().unwrap(), Wake::Event);
    xen.close(port).unwrap();
    assert!(matches!(
        xen.notify(port),
        Err(PlatformError::BadPort { .. })
    ));
    assert!(matches!(
        xen.wait(999, 1),
        Err(PlatformError::BadPort { port: 999 })
    ));
    // The back-end's port is unbound now: sending on it is harmless.
    back.notify(local).unwrap();
}
