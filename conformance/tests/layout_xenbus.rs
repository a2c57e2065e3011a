//! `xen_abi::xenbus` against `io/xenbus.h`.

use blanket_conformance::{Entry, c_table, check};
use xen_abi::xenbus::{self, XenbusState};

/// Constants whose Rust name equals the C name, from `xen_abi::xenbus`. (The harness's `consts!` does not
/// expand: it nests the module path's repetition inside the names' repetition.)
#[test]
fn xenbus_matches_xenbus_h() {
    let rust = [
        vec![
            Entry::new("size:XenbusState", size_of::<XenbusState>() as i64),
            Entry::new("align:XenbusState", align_of::<XenbusState>() as i64),
        ],
        blanket_conformance::consts!(xen_abi::xenbus;
            XenbusStateUnknown,
            XenbusStateInitialising,
            XenbusStateInitWait,
            XenbusStateInitialised,
            XenbusStateConnected,
            XenbusStateClosing,
            XenbusStateClosed,
            XenbusStateReconfiguring,
            XenbusStateReconfigured,
        ),
    ]
    .concat();
    // The typed enum has the raw values.
    for s in XenbusState::ALL {
        assert_eq!(XenbusState::try_from(s as u32), Ok(s));
    }
    assert_eq!(
        XenbusState::Reconfigured as u32,
        xenbus::XenbusStateReconfigured
    );
    check("xenbus", &c_table!(abi_table_xenbus), &rust);
}
