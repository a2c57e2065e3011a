//! Xen PV back-ends for any VMM.
//!
//! - [`xenstore`]: a xenstored: the store, permissions, watches, transactions and quotas of Xen's C daemon,
//!   served over the Unix socket of libxenstore and over guests' shared rings, with export and import of
//!   a domain's state for live migration.
#![warn(missing_docs)]

pub mod xenstore;
