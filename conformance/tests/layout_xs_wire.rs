//! `xen_abi::xs_wire` against `io/xs_wire.h`.

use blanket_conformance::{Entry, c_table, check, const_as, layout, offset};
use xen_abi::xs_wire;
use xen_abi::xs_wire::{
    XSD_ERRORS, XenstoreDomainInterface, XenstoreRingIdx, XsErrno, XsType, XsdSockmsg,
    mask_xenstore_idx,
};

/// Constants whose Rust name equals the C name, from `xen_abi::xs_wire`. (The harness's `consts!` does
/// not expand: it nests the module path's repetition inside the names' repetition.)
#[test]
fn xs_wire_matches_xs_wire_h() {
    let rust = [
        layout!(XsdSockmsg => "struct xsd_sockmsg" { req_id, tx_id, len }),
        offset!(XsdSockmsg => "struct xsd_sockmsg"."type" = r#type),
        layout!(XenstoreDomainInterface => "struct xenstore_domain_interface" {
            req, rsp, req_cons, req_prod, rsp_cons, rsp_prod, server_features, connection, error
        }),
        blanket_conformance::consts!(xen_abi::xs_wire;
            XS_CONTROL,
            XS_DEBUG,
            XS_DIRECTORY,
            XS_READ,
            XS_GET_PERMS,
            XS_WATCH,
            XS_UNWATCH,
            XS_TRANSACTION_START,
            XS_TRANSACTION_END,
            XS_INTRODUCE,
            XS_RELEASE,
            XS_GET_DOMAIN_PATH,
            XS_WRITE,
            XS_MKDIR,
            XS_RM,
            XS_SET_PERMS,
            XS_WATCH_EVENT,
            XS_ERROR,
            XS_IS_DOMAIN_INTRODUCED,
            XS_RESUME,
            XS_SET_TARGET,
            XS_RESET_WATCHES,
            XS_DIRECTORY_PART,
            XS_TYPE_COUNT,
            XS_INVALID,
            XS_WATCH_PATH,
            XS_WATCH_TOKEN,
            XENSTORE_RING_SIZE,
            XENSTORE_PAYLOAD_MAX,
            XENSTORE_ABS_PATH_MAX,
            XENSTORE_REL_PATH_MAX,
            XENSTORE_SERVER_FEATURE_RECONNECTION,
            XENSTORE_SERVER_FEATURE_ERROR,
            XENSTORE_CONNECTED,
            XENSTORE_RECONNECT,
            XENSTORE_ERROR_NONE,
            XENSTORE_ERROR_COMM,
            XENSTORE_ERROR_RINGIDX,
            XENSTORE_ERROR_PROTO,
        ),
        const_as!("sizeof(XENSTORE_RING_IDX)" = size_of::<XenstoreRingIdx>()),
        const_as!("MASK_XENSTORE_IDX(0)" = mask_xenstore_idx(0)),
        const_as!("MASK_XENSTORE_IDX(1023)" = mask_xenstore_idx(1023)),
        const_as!("MASK_XENSTORE_IDX(1024)" = mask_xenstore_idx(1024)),
        const_as!("MASK_XENSTORE_IDX(4294967295u)" = mask_xenstore_idx(u32::MAX)),
        const_as!("sizeof(xsd_errors) / sizeof(xsd_errors[0])" = XSD_ERRORS.len()),
    ]
    .concat();
    check("xs_wire", &c_table!(abi_table_xs_wire), &rust);
}

/// The errno table (order, names, numbers) and the `XS_WRITE_*` strings, which C builds at run time.
#[test]
fn xsd_errors_and_strings_match_xs_wire_h() {
    let mut rust: Vec<Entry> = XSD_ERRORS
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Entry::new(
                format!("xsd_errors[{i}]={}", e.errstring),
                i64::from(e.errnum),
            )
        })
        .collect();
    for (name, value) in [
        ("XS_WRITE_NONE", xs_wire::XS_WRITE_NONE),
        ("XS_WRITE_CREATE", xs_wire::XS_WRITE_CREATE),
        ("XS_WRITE_CREATE_EXCL", xs_wire::XS_WRITE_CREATE_EXCL),
    ] {
        rust.push(Entry::new(
            format!("str:{name}={value}"),
            value.len() as i64,
        ));
    }
    check(
        "xs_wire strings",
        &c_table!(abi_table_xs_wire_strings),
        &rust,
    );

    // The typed views agree with the table.
    for (i, e) in XSD_ERRORS.iter().enumerate() {
        assert_eq!(XsErrno::ALL[i].errnum(), e.errnum);
        assert_eq!(
            XsErrno::from_name(e.errstring.as_bytes()),
            Some(XsErrno::ALL[i])
        );
        assert_eq!(XsErrno::from_errnum(e.errnum), Some(XsErrno::ALL[i]));
    }
    // Every raw type below XS_TYPE_COUNT except the removed XS_RESTRICT (20) is a typed one.
    for raw in 0..xs_wire::XS_TYPE_COUNT {
        assert_eq!(XsType::try_from(raw).is_ok(), raw != 20, "type {raw}");
    }
    assert_eq!(XsType::ALL.len(), 22);
}
