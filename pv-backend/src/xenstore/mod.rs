//! A xenstored: the store, permissions, watches, transactions and quotas of Xen 4.17's C daemon
//! ([`XenStore`]), the Unix socket transport of libxenstore ([`server`]) and the shared-page ring of
//! guests ([`ring`]).
//!
//! The wire format (headers, payloads, paths) is `xen_abi::xs_wire`; this module is the daemon's
//! behaviour. A VMM embeds a [`XenStore`], registers each client with [`XenStore::connect`] (domain 0
//! is privileged), passes requests to [`XenStore::handle_message`] and sends back what
//! [`XenStore::take_output`] returns.
//!
//! ```
//! use pv_backend::xenstore::XenStore;
//! let mut store = XenStore::default();
//! let dom0 = store.connect(0, None);
//! store.write(dom0, 0, b"/local/domain/1/name", b"guest").unwrap();
//! assert_eq!(store.read(dom0, 0, b"/local/domain/1/name").unwrap(), b"guest");
//! ```

pub mod migration;
pub mod quota;
pub mod ring;
pub mod server;
pub mod store;

pub use migration::{DomainState, MigrationError};
pub use quota::{QuotaError, Quotas};
pub use store::{ConnEvent, ConnId, Notify, StoreError, XenStore};
