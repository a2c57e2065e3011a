//! `xen_abi::xenbus`: states, their XenStore form, and the out-of-order state changes of HOSTILE-INPUT.md's
//! "XenBus handshake" section.

use proptest::prelude::*;
use xen_abi::xenbus::{XenbusError, XenbusSide, XenbusState};

use XenbusSide::{Backend, Frontend};
use XenbusState::*;

#[test]
fn states_parse_from_xenstore() {
    for s in XenbusState::ALL {
        assert_eq!(
            XenbusState::from_xenstore(s.as_xenstore().as_bytes()),
            Ok(s)
        );
    }
    assert_eq!(XenbusState::from_xenstore(b"4\0"), Ok(Connected));
    assert_eq!(XenbusState::from_xenstore(b"004"), Ok(Connected));
    assert_eq!(Connected.name(), "Connected");
    assert_eq!(InitWait.to_string(), "InitWait");
}

#[test]
fn non_numeric_state_is_rejected() {
    assert_eq!(XenbusState::from_xenstore(b""), Err(XenbusError::Empty));
    assert_eq!(XenbusState::from_xenstore(b"\0"), Err(XenbusError::Empty));
    assert_eq!(
        XenbusState::from_xenstore(b"Connected"),
        Err(XenbusError::NotNumeric {
            offset: 0,
            byte: b'C'
        })
    );
    assert_eq!(
        XenbusState::from_xenstore(b"4 "),
        Err(XenbusError::NotNumeric {
            offset: 1,
            byte: b' '
        })
    );
    assert_eq!(
        XenbusState::from_xenstore(b"-1"),
        Err(XenbusError::NotNumeric {
            offset: 0,
            byte: b'-'
        })
    );
    assert_eq!(
        XenbusState::from_xenstore(b"0x4"),
        Err(XenbusError::NotNumeric {
            offset: 1,
            byte: b'x'
        })
    );
    assert_eq!(
        XenbusState::from_xenstore(b"4\0\0"),
        Err(XenbusError::NotNumeric { offset: 1, byte: 0 })
    );
}

#[test]
fn out_of_range_state_is_rejected() {
    assert_eq!(
        XenbusState::from_xenstore(b"9"),
        Err(XenbusError::UnknownState { value: 9 })
    );
    assert_eq!(
        XenbusState::from_xenstore(b"4294967300"),
        Err(XenbusError::UnknownState { value: 4294967300 })
    );
    assert_eq!(
        XenbusState::from_xenstore(&[b'9'; 40]),
        Err(XenbusError::TooLong { len: 40 })
    );
    assert_eq!(
        XenbusState::try_from(9u32),
        Err(XenbusError::UnknownState { value: 9 })
    );
}

#[test]
fn the_normal_handshake_is_allowed() {
    // io/blkif.h, "Startup".
    let steps = [
        (Backend, Initialising, InitWait),
        (Frontend, Initialising, Initialised),
        (Backend, InitWait, Connected),
        (Frontend, Initialised, Connected),
        (Frontend, Connected, Closing),
        (Backend, Connected, Closing),
        (Frontend, Closing, Closed),
        (Backend, Closing, Closed),
        // Reconnection.
        (Backend, Closed, InitWait),
        (Frontend, Closed, Initialising),
        // The shortcuts io/blkif.h allows.
        (Backend, Initialising, Initialised),
        (Backend, Initialised, Connected),
    ];
    for (side, from, to) in steps {
        assert_eq!(
            from.check_transition(side, to),
            Ok(()),
            "{side}: {from} -> {to}"
        );
    }
    assert!(Connected.can_transition_to(Frontend, Connected));
}

#[test]
fn state_changes_out_of_order_are_rejected() {
    let bad = [
        (Frontend, Initialising, Connected),
        (Frontend, Unknown, Connected),
        (Frontend, Closed, Connected),
        (Frontend, Closing, Connected),
        (Frontend, Initialising, InitWait),
        (Frontend, Connected, Initialised),
        (Frontend, Initialising, Reconfigured),
        (Backend, Initialising, Connected),
        (Backend, Unknown, InitWait),
        (Backend, Closed, Connected),
        (Backend, Closing, Initialising),
        (Backend, Connected, InitWait),
        (Backend, Connected, Initialising),
        (Backend, Initialised, InitWait),
        (Backend, Reconfiguring, Connected),
        (Backend, Connected, Unknown),
    ];
    for (side, from, to) in bad {
        assert_eq!(
            from.check_transition(side, to),
            Err(XenbusError::IllegalTransition { side, from, to }),
            "{side}: {from} -> {to}"
        );
    }
}

#[test]
fn closing_is_reachable_from_every_live_state() {
    for s in [
        Initialising,
        InitWait,
        Initialised,
        Connected,
        Reconfiguring,
        Reconfigured,
    ] {
        assert!(
            s.backend_can_transition_to(Closing) && s.backend_can_transition_to(Closed),
            "back {s}"
        );
        assert!(
            s.frontend_can_transition_to(Closing) && s.frontend_can_transition_to(Closed),
            "front {s}"
        );
    }
}

proptest! {
    #[test]
    fn decimal_round_trip(v in any::<u32>()) {
        let text = v.to_string();
        let parsed = XenbusState::from_xenstore(text.as_bytes());
        match XenbusState::try_from(v) {
            Ok(s) => prop_assert_eq!(parsed, Ok(s)),
            Err(_) => prop_assert_eq!(parsed, Err(XenbusError::UnknownState { value: u64::from(v) })),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..32)) {
        if let Ok(s) = XenbusState::from_xenstore(&bytes) {
            prop_assert!(bytes.iter().all(|b| b.is_ascii_digit() || *b == 0));
            prop_assert!((s as u32) <= 8);
        }
    }
}
