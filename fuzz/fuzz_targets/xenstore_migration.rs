//! A xenstore-migration stream from the network: `DomainState::decode` must never panic, a stream it
//! accepts must encode back to a stream that decodes to the same state, and importing it into a store
//! either fails with a typed error or leaves a consistent tree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pv_backend::xenstore::migration::DomainState;
use pv_backend::xenstore::{Quotas, XenStore};

fuzz_target!(|data: &[u8]| {
    let Ok(state) = DomainState::decode(data) else {
        return;
    };
    let again = DomainState::decode(&state.encode()).expect("our own encoding decodes");
    assert_eq!(again, state);
    let mut store = XenStore::new(Quotas::default());
    let _dom0 = store.connect(0, None);
    if store.import_domain(&state, 9).is_ok() {
        store
            .check_tree()
            .expect("an accepted import leaves a consistent tree");
    }
});
