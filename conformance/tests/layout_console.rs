//! `xen_abi::console` against `io/console.h`.

use blanket_conformance::{c_table, check, const_as, layout, offset};
use xen_abi::console::{
    XENCONS_IN_SIZE, XENCONS_OUT_SIZE, XenconsInterface, XenconsRingIdx, mask_xencons_idx,
};

#[test]
fn console_matches_console_h() {
    let rust = [
        layout!(XenconsInterface => "struct xencons_interface" { out, in_cons, in_prod, out_cons, out_prod }),
        offset!(XenconsInterface => "struct xencons_interface"."in" = r#in),
        const_as!("sizeof(XENCONS_RING_IDX)" = size_of::<XenconsRingIdx>()),
        const_as!("sizeof(CONS_IN)" = XENCONS_IN_SIZE),
        const_as!("sizeof(CONS_OUT)" = XENCONS_OUT_SIZE),
        const_as!("MASK_XENCONS_IDX(1025, CONS_IN)" = mask_xencons_idx(1025, XENCONS_IN_SIZE)),
        const_as!("MASK_XENCONS_IDX(4294967295u, CONS_IN)" = mask_xencons_idx(u32::MAX, XENCONS_IN_SIZE)),
        const_as!("MASK_XENCONS_IDX(3000, CONS_OUT)" = mask_xencons_idx(3000, XENCONS_OUT_SIZE)),
        const_as!("MASK_XENCONS_IDX(4294967295u, CONS_OUT)" = mask_xencons_idx(u32::MAX, XENCONS_OUT_SIZE)),
    ]
    .concat();
    check("console", &c_table!(abi_table_console), &rust);
}
