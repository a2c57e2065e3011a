//! The grant access of the back-end framework over a v1 grant table and vm-memory guest memory: the
//! entry checks, `GTF_reading`/`GTF_writing` set while mapped and cleared when the last mapping goes.

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use pv_backend::backend::{GrantAccess, GrantAccessMode, GrantMapError, GrantTableV1};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use xen_abi::grant_table::{
    GTF_permit_access, GTF_reading, GTF_readonly, GTF_transitive, GTF_writing, GrantEntryHeader,
    GrantError,
};

fn table() -> GrantTableV1<GuestMemoryMmap> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 * 4096)]).unwrap();
    GrantTableV1::new(5, 0, 1, mem)
}

fn flags(t: &GrantTableV1<GuestMemoryMmap>, gref: u32) -> u16 {
    t.entry(gref).unwrap().flags
}

#[test]
fn a_writable_mapping_sets_reading_and_writing_until_dropped() {
    let t = table();
    t.grant(8, 0, 3, false).unwrap();
    let m = t.map(5, 8, GrantAccessMode::ReadWrite).unwrap();
    assert_eq!(flags(&t, 8), GTF_permit_access | GTF_reading | GTF_writing);
    assert!(t.revoke(8).is_err(), "in use");
    assert_eq!(m.write_from(100, b"hello"), 5);
    let mut out = [0; 5];
    assert_eq!(m.read_into(100, &mut out), 5);
    assert_eq!(&out, b"hello");
    assert_eq!(m.write_from(4094, b"abc"), 2, "clamped to the page");
    drop(m);
    assert_eq!(flags(&t, 8), GTF_permit_access);
    t.revoke(8).unwrap();
}

#[test]
fn the_mapping_is_the_granted_frame() {
    let t = table();
    t.grant(9, 0, 7, false).unwrap();
    let m = t.map(5, 9, GrantAccessMode::ReadWrite).unwrap();
    m.write_from(0, &[0x5A; 16]);
    use vm_memory::Bytes;
    let mut b = [0; 16];
    t.memory()
        .read_slice(&mut b, GuestAddress(7 * 4096))
        .unwrap();
    assert_eq!(b, [0x5A; 16]);
}

#[test]
fn pins_are_counted_as_xen_does() {
    let t = table();
    t.grant(8, 0, 3, false).unwrap();
    let w = t.map(5, 8, GrantAccessMode::ReadWrite).unwrap();
    let r1 = t.map(5, 8, GrantAccessMode::ReadOnly).unwrap();
    let r2 = t.map(5, 8, GrantAccessMode::ReadOnly).unwrap();
    drop(w);
    assert_eq!(
        flags(&t, 8),
        GTF_permit_access | GTF_reading,
        "no writer left: GTF_writing cleared"
    );
    drop(r1);
    assert_eq!(flags(&t, 8), GTF_permit_access | GTF_reading);
    drop(r2);
    assert_eq!(flags(&t, 8), GTF_permit_access);
}

#[test]
fn read_only_grants_refuse_write_access() {
    let t = table();
    t.grant(8, 0, 3, true).unwrap();
    let e = t.map(5, 8, GrantAccessMode::ReadWrite).unwrap_err();
    assert!(
        matches!(
            e,
            GrantMapError::Entry {
                source: GrantError::ReadOnly { .. },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        flags(&t, 8),
        GTF_permit_access | GTF_readonly,
        "nothing marked"
    );
    let m = t.map(5, 8, GrantAccessMode::ReadOnly).unwrap();
    assert_eq!(
        m.write_from(0, b"x"),
        0,
        "a read-only mapping is never written"
    );
    assert_eq!(flags(&t, 8), GTF_permit_access | GTF_readonly | GTF_reading);
}

#[test]
fn entries_for_another_domain_invalid_or_v2_only_are_refused() {
    let t = table();
    t.grant(8, 3, 3, false).unwrap();
    assert!(matches!(
        t.map(5, 8, GrantAccessMode::ReadOnly),
        Err(GrantMapError::Entry {
            source: GrantError::WrongDomain {
                granted_to: 3,
                requester: 0
            },
            ..
        })
    ));
    assert!(matches!(
        t.map(5, 9, GrantAccessMode::ReadOnly),
        Err(GrantMapError::Entry {
            source: GrantError::NotPermitAccess { .. },
            ..
        })
    ));
    t.force_header(
        10,
        GrantEntryHeader {
            flags: GTF_transitive,
            domid: 0,
        },
    )
    .unwrap();
    assert!(matches!(
        t.map(5, 10, GrantAccessMode::ReadOnly),
        Err(GrantMapError::Entry {
            source: GrantError::V2OnlyFlags { .. },
            ..
        })
    ));
    assert!(matches!(
        t.map(5, 512, GrantAccessMode::ReadOnly),
        Err(GrantMapError::Entry {
            source: GrantError::BadRef {
                gref: 512,
                nr_entries: 512
            },
            ..
        })
    ));
    assert!(matches!(
        t.map(6, 8, GrantAccessMode::ReadOnly),
        Err(GrantMapError::UnknownDomain { granter: 6 })
    ));
}

#[test]
fn a_frame_outside_guest_memory_is_refused_and_unmarked() {
    let t = table();
    for frame in [16, 17, u32::MAX] {
        t.grant(8, 0, frame, false).unwrap();
        let e = t.map(5, 8, GrantAccessMode::ReadWrite).unwrap_err();
        assert!(matches!(e, GrantMapError::FrameOutOfBounds { .. }), "{e}");
        assert_eq!(
            flags(&t, 8),
            GTF_permit_access,
            "frame {frame}: the entry is left unmarked"
        );
    }
}

#[test]
fn an_entry_flipped_by_the_guest_in_a_loop_never_hangs_the_back_end() {
    let t = table();
    t.grant(8, 0, 3, false).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (t2, s) = (t.clone(), stop.clone());
    let th = std::thread::spawn(move || {
        let mut i = 0u16;
        while !s.load(Ordering::Relaxed) {
            i = i.wrapping_add(1);
            let f = if i % 2 == 0 {
                GTF_permit_access
            } else {
                GTF_permit_access | GTF_readonly
            };
            t2.force_header(8, GrantEntryHeader { flags: f, domid: 0 })
                .unwrap();
        }
    });
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..20_000 {
        match t.map(5, 8, GrantAccessMode::ReadWrite) {
            Ok(_) => ok += 1,
            Err(
                GrantMapError::Entry {
                    source: GrantError::ReadOnly { .. },
                    ..
                }
                | GrantMapError::Unstable { .. },
            ) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    th.join().unwrap();
    assert_eq!(ok + refused, 20_000);
}

#[test]
fn a_table_in_memory_given_by_the_vmm() {
    let words: Box<[AtomicU32]> = (0..1024).map(|_| AtomicU32::new(0)).collect();
    let ptr = NonNull::new(words.as_ptr().cast::<u8>().cast_mut()).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 * 4096)]).unwrap();
    // SAFETY: `words` is 4096 bytes, 4-byte aligned, accessed only atomically, and outlives the table.
    let t = unsafe { GrantTableV1::from_raw(5, 0, ptr, 1, mem) };
    // The guest writes its entry straight into the shared frame: flags | domid << 16, then the frame.
    words[2 * 20 + 1].store(2, Ordering::Relaxed);
    words[2 * 20].store(u32::from(GTF_permit_access), Ordering::Release);
    let m = t.map(5, 20, GrantAccessMode::ReadWrite).unwrap();
    assert_eq!(
        words[40].load(Ordering::Acquire) as u16,
        GTF_permit_access | GTF_reading | GTF_writing
    );
    drop(m);
    assert_eq!(words[40].load(Ordering::Acquire) as u16, GTF_permit_access);
    drop(t);
}

#[test]
fn pages_written_through_a_writable_mapping_are_marked_dirty() {
    use vm_memory::bitmap::AtomicBitmap;
    use vm_memory::bitmap::Bitmap;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let mem: GuestMemoryMmap<AtomicBitmap> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 * 4096)]).unwrap();
    let t = GrantTableV1::new(5, 0, 1, mem);
    t.grant(8, 0, 3, false).unwrap();
    t.grant(9, 0, 4, true).unwrap();
    let region = t.memory().iter().next().unwrap();
    let dirty = |page: usize| region.bitmap().dirty_at(page * 4096);
    assert!(!dirty(3) && !dirty(4));
    let w = t.map(5, 8, GrantAccessMode::ReadWrite).unwrap();
    let r = t.map(5, 9, GrantAccessMode::ReadOnly).unwrap();
    w.write_from(0, b"data");
    drop((w, r));
    assert!(
        dirty(3),
        "the back end wrote frame 3: live migration must resend it"
    );
    assert!(!dirty(4), "a read-only mapping dirties nothing");
}
