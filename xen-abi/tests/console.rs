//! `xen_abi::console`: the hostile-input cases of HOSTILE-INPUT.md for the console rings, and round trips.

use proptest::prelude::*;
use xen_abi::console::*;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

#[test]
fn prod_minus_cons_larger_than_the_buffer_is_rejected() {
    // out: 2048 bytes.
    let mut page = XenconsInterface::new_zeroed();
    page.out_cons = 10;
    page.out_prod = 10 + XENCONS_OUT_SIZE + 1;
    let err = ConsoleError::RingIndexOverflow {
        cons: 10,
        prod: 2059,
        used: 2049,
        size: 2048,
    };
    assert_eq!(page.out_used(), Err(err));
    assert_eq!(page.read_out(&mut [0u8; 4096]), Err(err));
    // in: 1024 bytes; the same indices are fine for `out` sizes but not for `in`.
    page.in_cons = 0;
    page.in_prod = 1025;
    assert_eq!(
        page.in_used(),
        Err(ConsoleError::RingIndexOverflow {
            cons: 0,
            prod: 1025,
            used: 1025,
            size: 1024
        })
    );
    assert_eq!(ring_used(XENCONS_OUT_SIZE, 0, 1025), Ok(1025));
    // A producer behind the consumer is a huge wrapping difference.
    assert_eq!(
        ring_used(XENCONS_IN_SIZE, 5, 4),
        Err(ConsoleError::RingIndexOverflow {
            cons: 5,
            prod: 4,
            used: u32::MAX,
            size: 1024
        })
    );
    let mut ring = [0u8; 1024];
    assert!(copy_to_ring(&mut ring, 5, 4, b"x").is_err());
}

#[test]
fn prod_exactly_buffer_size_ahead_is_a_full_ring() {
    let mut page = XenconsInterface::new_zeroed();
    for (i, b) in page.out.iter_mut().enumerate() {
        *b = i as u8;
    }
    page.out_cons = u32::MAX - 100;
    page.out_prod = page.out_cons.wrapping_add(XENCONS_OUT_SIZE);
    assert_eq!(page.out_used(), Ok(2048));
    let mut buf = vec![0u8; 4096];
    assert_eq!(page.read_out(&mut buf), Ok(2048));
    // Stream order starts at MASK(out_cons) and wraps.
    let start = (page.out_cons & 2047) as usize;
    assert_eq!(buf[0], start as u8);
    assert_eq!(buf[2048 - start], 0);
    assert_eq!(
        ring_free(XENCONS_OUT_SIZE, page.out_cons, page.out_prod),
        Ok(0)
    );
    assert_eq!(
        copy_to_ring(&mut page.out, page.out_cons, page.out_prod, b"more"),
        Ok(0)
    );
}

#[test]
fn indices_that_wrap_through_2_31_and_2_32() {
    for start in [0x7fff_ff00u32, u32::MAX - 10] {
        let mut ring = [0u8; 1024];
        let n = copy_to_ring(&mut ring, start, start, b"hello, console").unwrap();
        assert_eq!(n, 14);
        let mut out = [0u8; 64];
        let m = copy_from_ring(&ring, start, start.wrapping_add(14), &mut out).unwrap();
        assert_eq!(&out[..m], b"hello, console");
    }
}

#[test]
fn a_ring_that_is_not_a_power_of_two_is_rejected() {
    assert_eq!(
        copy_from_ring(&[0u8; 1000], 0, 0, &mut [0u8; 4]),
        Err(ConsoleError::InvalidRingSize { size: 1000 })
    );
    assert_eq!(
        ring_used(0, 0, 0),
        Err(ConsoleError::InvalidRingSize { size: 0 })
    );
}

#[test]
fn layout_is_the_c_one() {
    assert_eq!(size_of::<XenconsInterface>(), 1024 + 2048 + 16);
    let page = XenconsInterface::new_zeroed();
    assert_eq!(
        XenconsInterface::read_from_bytes(page.as_bytes()).unwrap(),
        page
    );
}

proptest! {
    #[test]
    fn copy_round_trip(start in any::<u32>(), data in prop::collection::vec(any::<u8>(), 0..3000), small in any::<bool>()) {
        let size = if small { XENCONS_IN_SIZE } else { XENCONS_OUT_SIZE };
        let mut ring = vec![0u8; size as usize];
        let n = copy_to_ring(&mut ring, start, start, &data).unwrap();
        prop_assert_eq!(n, data.len().min(size as usize));
        let prod = start.wrapping_add(n as u32);
        prop_assert_eq!(ring_used(size, start, prod), Ok(n as u32));
        let mut out = vec![0u8; 4096];
        let m = copy_from_ring(&ring, start, prod, &mut out).unwrap();
        prop_assert_eq!(&out[..m], &data[..n]);
    }

    #[test]
    fn any_indices_never_panic(cons in any::<u32>(), prod in any::<u32>(), out_len in 0usize..5000) {
        let ring = [0u8; 2048];
        let mut out = vec![0u8; out_len];
        match copy_from_ring(&ring, cons, prod, &mut out) {
            Ok(n) => prop_assert!(n <= out_len && n as u32 <= prod.wrapping_sub(cons)),
            Err(e) => {
                let overflow = matches!(e, ConsoleError::RingIndexOverflow { .. });
                prop_assert!(overflow);
            }
        }
    }
}
