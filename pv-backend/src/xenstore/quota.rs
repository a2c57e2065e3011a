//! Per-domain quotas, with the defaults of Xen 4.17's C xenstored (`tools/xenstore/xenstored_core.c`:
//! `quota_nb_entry_per_domain = 1000`, `quota_nb_watch_per_domain = 128`, `quota_max_entry_size =
//! 2048`, `quota_max_transaction = 10`, `quota_nb_perms_per_node = 5`, `quota_trans_nodes = 1024`,
//! `quota_req_outstanding = 20`, `quota_memory_per_domain_hard = 2.5 MB`, and `quota_max_path_len =
//! XENSTORE_REL_PATH_MAX`).
//!
//! Quotas apply to unprivileged callers only: dom0 (and every socket connection) is unlimited. The error
//! a guest gets when over a quota is the one C xenstored 4.17 gives:
//!
//! | quota | error | where in C xenstored 4.17 |
//! |---|---|---|
//! | nodes | `ENOSPC` | `create_node`/`construct_node`, `acc_fix_domains` at commit |
//! | watches | `E2BIG` | `do_watch` |
//! | transactions | `ENOSPC` | `do_transaction_start` |
//! | nodes per transaction | `ENOSPC` | `access_node` |
//! | permissions per node | `ENOSPC` | `do_set_perms` |
//! | node size | `ENOSPC` | `write_node_raw` |
//! | path length | `EINVAL` | `is_valid_nodename` |
//! | memory | `ENOMEM` | `domain_memory_add_chk` |
//! | outstanding requests | the connection is not read | `domain_can_read` |
//!
//! C xenstored compares some counts with `>` where `>=` was meant (`transaction_started >
//! quota_max_transaction` lets a guest open 11 transactions, `domain_watch(conn) > quota` 129
//! watches). Here every quota is the largest count allowed: 10 transactions, 128 watches.

use std::fmt;

/// The quotas of one store. Every field is the largest value an unprivileged domain may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes a domain may own (`-E`, `quota_nb_entry_per_domain`): 1000.
    pub nodes: usize,
    /// Watches a domain may hold (`-W`): 128.
    pub watches: usize,
    /// Requests whose responses are still queued before a connection is no longer read (`-Q`): 20.
    pub outstanding: usize,
    /// Open transactions per connection (`-t`): 10.
    pub transactions: usize,
    /// Nodes one transaction may access (`-n`, `quota_trans_nodes`): 1024.
    pub transaction_nodes: usize,
    /// Permission entries per node, the owner included (`-A`): 5.
    pub perms_per_node: usize,
    /// Size of a node record (`-S`, `quota_max_entry_size`): 2048 bytes, counted as C xenstored counts
    /// its database record: a 24-byte header, 8 bytes per permission, the value, and each child name
    /// with its NUL.
    pub node_size: usize,
    /// Length of a path, after a leading `/local/domain/<domid>/` (`-M`... `quota_max_path_len`):
    /// 2048 bytes.
    pub path_len: usize,
    /// Memory a domain may use in the store (`-M`, `quota_memory_per_domain_hard`): 2.5 MiB. Counted
    /// as the path and record size of each node it owns and the path and token of each watch.
    pub memory: usize,
    /// Watch events queued for one unprivileged connection; further events are dropped (XSA-326).
    /// Not a C xenstored quota (it drops events after 20 s instead): 1024.
    pub pending_events: usize,
    /// Bytes of responses and events queued for any connection, dom0's included; a connection over it
    /// does not read what it is sent and is closed: 4 MiB.
    pub output_bytes: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            nodes: 1000,
            watches: 128,
            outstanding: 20,
            transactions: 10,
            transaction_nodes: 1024,
            perms_per_node: 5,
            node_size: 2048,
            path_len: 2048,
            memory: 2 * 1024 * 1024 + 512 * 1024,
            pending_events: 1024,
            output_bytes: 4 * 1024 * 1024,
        }
    }
}

/// What can be wrong when setting a quota by name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// The name is not one of [`Quotas::NAMES`].
    #[error("unknown quota {name:?}")]
    UnknownQuota {
        /// The name given.
        name: String,
    },
}

impl Quotas {
    /// The names of the quotas, as `xenstore-control quota` spells them in C xenstored.
    pub const NAMES: [&'static str; 11] = [
        "nodes",
        "watches",
        "outstanding",
        "transactions",
        "transaction-nodes",
        "permissions",
        "node-size",
        "path-max",
        "memory",
        "pending-events",
        "output-bytes",
    ];

    fn slot(&mut self, name: &str) -> Option<&mut usize> {
        Some(match name {
            "nodes" => &mut self.nodes,
            "watches" => &mut self.watches,
            "outstanding" => &mut self.outstanding,
            "transactions" => &mut self.transactions,
            "transaction-nodes" => &mut self.transaction_nodes,
            "permissions" => &mut self.perms_per_node,
            "node-size" => &mut self.node_size,
            "path-max" => &mut self.path_len,
            "memory" => &mut self.memory,
            "pending-events" => &mut self.pending_events,
            "output-bytes" => &mut self.output_bytes,
            _ => return None,
        })
    }

    /// The value of the quota called `name`.
    pub fn get(&self, name: &str) -> Option<usize> {
        self.clone().slot(name).map(|v| *v)
    }

    /// Sets the quota called `name`.
    pub fn set(&mut self, name: &str, value: usize) -> Result<(), QuotaError> {
        match self.slot(name) {
            Some(v) => {
                *v = value;
                Ok(())
            }
            None => Err(QuotaError::UnknownQuota {
                name: name.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Quotas {
    /// One `name: value` line per quota, as `xenstore-control quota` prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for name in Self::NAMES {
            writeln!(f, "{name:<18}: {}", self.get(name).unwrap_or(0))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_c_xenstored_defaults() {
        let q = Quotas::default();
        assert_eq!(
            (q.nodes, q.watches, q.outstanding, q.transactions),
            (1000, 128, 20, 10)
        );
        assert_eq!((q.transaction_nodes, q.perms_per_node), (1024, 5));
        assert_eq!((q.node_size, q.path_len, q.memory), (2048, 2048, 2_621_440));
    }

    #[test]
    fn set_by_name() {
        let mut q = Quotas::default();
        q.set("nodes", 7).unwrap();
        assert_eq!(q.nodes, 7);
        assert_eq!(q.get("nodes"), Some(7));
        assert!(q.set("bogus", 1).is_err());
        assert!(q.to_string().contains("nodes"));
    }
}
