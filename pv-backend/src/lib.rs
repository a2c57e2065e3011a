//! Xen PV back-ends for any VMM.
//!
//! - [`xenstore`]: a xenstored: the store, permissions, watches, transactions and quotas of Xen's C daemon,
//!   served over the Unix socket of libxenstore.
#![warn(missing_docs)]

pub mod xenstore;
