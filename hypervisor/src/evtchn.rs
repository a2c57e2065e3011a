//! Event channels: each domain's table of ports (`EVTCHNOP_*` in `event_channel.h`), under the host's lock.
//!
//! The tables of all domains live behind one host-wide mutex, so that binding two domains' ports together
//! is one atomic step and no lock order can deadlock. Delivery (setting the pending bit in the receiver's
//! `shared_info` and waking it) happens after the lock is dropped.

use std::collections::HashMap;

use xen_abi::DomId;
use xen_abi::event_channel::EvtchnPort;

/// The number of ports a domain may use (a policy bound below the 2-level ABI's 4096).
pub const MAX_PORTS: u32 = 1024;
/// The number of ports of domain 0, the Blanket layer itself: it is no guest (no `shared_info` bitmap
/// bounds it), and it holds two ports per guest (XenStore and console) plus one per ring of each device,
/// so a guest's bound would cap the host at about 500 guests. This is the FIFO ABI's limit (2^17).
pub const DOM0_MAX_PORTS: u32 = 1 << 17;
/// `NR_VIRQS` in `xen.h`.
pub const NR_VIRQS: u32 = 24;
/// `DOMID_SELF` in `xen.h`.
pub const DOMID_SELF: DomId = 0x7ff0;

/// The state of one port (`ECS_*` in Xen's `event.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Channel {
    /// Not in use.
    #[default]
    Free,
    /// Allocated for `remote` to bind to.
    Unbound {
        /// The domain allowed to bind.
        remote: DomId,
    },
    /// Connected to `remote_port` of `remote`.
    Interdomain {
        /// The other domain.
        remote: DomId,
        /// Its port.
        remote_port: EvtchnPort,
    },
    /// Bound to a virtual IRQ of a vCPU.
    Virq {
        /// The VIRQ.
        virq: u32,
        /// The vCPU it was bound on.
        vcpu: u32,
    },
    /// An inter-processor interrupt to a vCPU.
    Ipi {
        /// The vCPU the IPI goes to.
        vcpu: u32,
    },
}

/// One domain's ports.
#[derive(Debug, Clone)]
pub struct EvtchnTable {
    ports: Vec<Channel>,
    /// The port of each bound (VIRQ, vCPU).
    virq: HashMap<(u32, u32), EvtchnPort>,
}

impl Default for EvtchnTable {
    fn default() -> Self {
        Self::with_ports(MAX_PORTS)
    }
}

/// A Xen errno, as the hypercall returns it negated.
pub type Errno = i64;
/// `EPERM`.
pub const EPERM: Errno = 1;
/// `ENOENT`.
pub const ENOENT: Errno = 2;
/// `ESRCH`.
pub const ESRCH: Errno = 3;
/// `EFAULT`.
pub const EFAULT: Errno = 14;
/// `EBUSY`.
pub const EBUSY: Errno = 16;
/// `EEXIST`.
pub const EEXIST: Errno = 17;
/// `EINVAL`.
pub const EINVAL: Errno = 22;
/// `ENOSPC`.
pub const ENOSPC: Errno = 28;
/// `ENOSYS`.
pub const ENOSYS: Errno = 38;
/// `EOPNOTSUPP`.
pub const EOPNOTSUPP: Errno = 95;

impl EvtchnTable {
    /// A table of `ports` ports, all free.
    pub fn with_ports(ports: u32) -> Self {
        Self {
            ports: vec![Channel::Free; ports as usize],
            virq: HashMap::new(),
        }
    }

    /// The number of ports.
    pub fn nr_ports(&self) -> u32 {
        self.ports.len() as u32
    }

    /// The state of `port`, or `None` if it is out of range.
    pub fn get(&self, port: EvtchnPort) -> Option<Channel> {
        self.ports.get(port as usize).copied()
    }

    fn set(&mut self, port: EvtchnPort, ch: Channel) {
        if let Some(slot) = self.ports.get_mut(port as usize) {
            *slot = ch;
        }
    }

    /// Allocates the lowest free port (port 0 is never used, as in Xen).
    pub fn alloc(&mut self, ch: Channel) -> Result<EvtchnPort, Errno> {
        let port = self
            .ports
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, c)| **c == Channel::Free)
            .map(|(i, _)| i as EvtchnPort)
            .ok_or(ENOSPC)?;
        self.set(port, ch);
        if let Channel::Virq { virq, vcpu } = ch {
            self.virq.insert((virq, vcpu), port);
        }
        Ok(port)
    }

    /// The port bound to `virq` on `vcpu`, if any.
    pub fn virq_port(&self, virq: u32, vcpu: u32) -> Option<EvtchnPort> {
        self.virq.get(&(virq, vcpu)).copied()
    }

    /// Frees `port`, returning what it was.
    pub fn free(&mut self, port: EvtchnPort) -> Option<Channel> {
        let old = self.get(port)?;
        if let Channel::Virq { virq, vcpu } = old {
            self.virq.remove(&(virq, vcpu));
        }
        self.set(port, Channel::Free);
        Some(old)
    }

    /// Every port in use.
    pub fn used(&self) -> impl Iterator<Item = (EvtchnPort, Channel)> + '_ {
        self.ports
            .iter()
            .enumerate()
            .filter(|(_, c)| **c != Channel::Free)
            .map(|(i, c)| (i as EvtchnPort, *c))
    }
}

/// All domains' tables.
#[derive(Debug, Default)]
pub struct EvtchnRegistry {
    tables: HashMap<DomId, EvtchnTable>,
}

impl EvtchnRegistry {
    /// Adds an empty table for `dom` ([`DOM0_MAX_PORTS`] ports for domain 0, [`MAX_PORTS`] for guests).
    pub fn add_domain(&mut self, dom: DomId) {
        let ports = if dom == 0 { DOM0_MAX_PORTS } else { MAX_PORTS };
        self.tables.insert(dom, EvtchnTable::with_ports(ports));
    }

    /// Removes `dom`'s table; every port of another domain bound to it goes back to unbound (as Xen does
    /// when a domain dies). Returns nothing to notify: closing sends no event.
    pub fn remove_domain(&mut self, dom: DomId) {
        if let Some(table) = self.tables.remove(&dom) {
            for (_, ch) in table.used() {
                if let Channel::Interdomain {
                    remote,
                    remote_port,
                } = ch
                    && let Some(peer) = self.tables.get_mut(&remote)
                {
                    peer.set(remote_port, Channel::Unbound { remote: dom });
                }
            }
        }
    }

    /// `dom`'s table.
    pub fn table(&mut self, dom: DomId) -> Result<&mut EvtchnTable, Errno> {
        self.tables.get_mut(&dom).ok_or(ESRCH)
    }

    /// `EVTCHNOP_bind_interdomain`: connects a new port of `dom` to `remote_port` of `remote`, which must
    /// be unbound and offered to `dom`.
    pub fn bind_interdomain(
        &mut self,
        dom: DomId,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, Errno> {
        let offered = self
            .tables
            .get(&remote)
            .ok_or(ESRCH)?
            .get(remote_port)
            .ok_or(EINVAL)?;
        if offered != (Channel::Unbound { remote: dom }) {
            return Err(EINVAL);
        }
        let local = self.table(dom)?.alloc(Channel::Interdomain {
            remote,
            remote_port,
        })?;
        if remote == dom {
            // A loopback channel: both ends in one table.
            let t = self.table(dom)?;
            t.set(
                remote_port,
                Channel::Interdomain {
                    remote: dom,
                    remote_port: local,
                },
            );
        } else {
            self.table(remote)?.set(
                remote_port,
                Channel::Interdomain {
                    remote: dom,
                    remote_port: local,
                },
            );
        }
        Ok(local)
    }

    /// `EVTCHNOP_close`: frees `port`; an interdomain peer's port goes back to unbound.
    pub fn close(&mut self, dom: DomId, port: EvtchnPort) -> Result<(), Errno> {
        let t = self.table(dom)?;
        match t.get(port) {
            None | Some(Channel::Free) => return Err(EINVAL),
            _ => {}
        }
        if let Some(Channel::Interdomain {
            remote,
            remote_port,
        }) = t.free(port)
            && let Ok(peer) = self.table(remote)
            && peer.get(remote_port)
                == Some(Channel::Interdomain {
                    remote: dom,
                    remote_port: port,
                })
        {
            peer.set(remote_port, Channel::Unbound { remote: dom });
        }
        Ok(())
    }

    /// Where an `EVTCHNOP_send` on `port` of `dom` goes: `Some((domain, port))` to notify, `None` to drop
    /// silently (an unbound port), or an error for a free port or one that cannot be sent on (a VIRQ).
    pub fn send_target(
        &mut self,
        dom: DomId,
        port: EvtchnPort,
    ) -> Result<Option<(DomId, EvtchnPort)>, Errno> {
        match self.table(dom)?.get(port) {
            None | Some(Channel::Free) | Some(Channel::Virq { .. }) => Err(EINVAL),
            Some(Channel::Unbound { .. }) => Ok(None),
            Some(Channel::Interdomain {
                remote,
                remote_port,
            }) => Ok(Some((remote, remote_port))),
            Some(Channel::Ipi { .. }) => Ok(Some((dom, port))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interdomain_bind_close_and_domain_death() {
        let mut r = EvtchnRegistry::default();
        r.add_domain(1);
        r.add_domain(2);
        let p = r
            .table(1)
            .unwrap()
            .alloc(Channel::Unbound { remote: 2 })
            .unwrap();
        assert_eq!(p, 1, "port 0 is never allocated");
        // Domain 3 was not offered the port.
        r.add_domain(3);
        assert_eq!(r.bind_interdomain(3, 1, p), Err(EINVAL));
        let q = r.bind_interdomain(2, 1, p).unwrap();
        assert_eq!(r.send_target(2, q), Ok(Some((1, p))));
        assert_eq!(r.send_target(1, p), Ok(Some((2, q))));
        // Binding twice fails: the port is no longer unbound.
        assert_eq!(r.bind_interdomain(2, 1, p), Err(EINVAL));
        r.close(2, q).unwrap();
        assert_eq!(
            r.table(1).unwrap().get(p),
            Some(Channel::Unbound { remote: 2 })
        );
        assert_eq!(r.close(2, q), Err(EINVAL), "closing a free port");
        let q = r.bind_interdomain(2, 1, p).unwrap();
        r.remove_domain(2);
        assert_eq!(
            r.table(1).unwrap().get(p),
            Some(Channel::Unbound { remote: 2 })
        );
        let _ = q;
    }

    #[test]
    fn port_exhaustion_is_enospc_and_out_of_range_ports_are_einval() {
        let mut t = EvtchnTable::default();
        for _ in 1..MAX_PORTS {
            t.alloc(Channel::Ipi { vcpu: 0 }).unwrap();
        }
        assert_eq!(t.alloc(Channel::Ipi { vcpu: 0 }), Err(ENOSPC));
        let mut r = EvtchnRegistry::default();
        r.add_domain(1);
        assert_eq!(r.send_target(1, MAX_PORTS + 5), Err(EINVAL));
        assert_eq!(r.send_target(1, u32::MAX), Err(EINVAL));
        assert_eq!(r.close(1, u32::MAX), Err(EINVAL));
    }

    #[test]
    fn domain_0_has_room_for_the_ports_of_thousands_of_guests() {
        let mut r = EvtchnRegistry::default();
        r.add_domain(0);
        r.add_domain(1);
        assert_eq!(r.table(0).unwrap().nr_ports(), DOM0_MAX_PORTS);
        assert_eq!(r.table(1).unwrap().nr_ports(), MAX_PORTS);
        // Three guests' worth of ports per guest port, well past a guest's bound.
        let t = r.table(0).unwrap();
        for _ in 0..3 * MAX_PORTS {
            t.alloc(Channel::Unbound { remote: 1 }).unwrap();
        }
        assert_eq!(t.used().count() as u32, 3 * MAX_PORTS);
        // A guest's table still stops at its bound.
        let g = r.table(1).unwrap();
        for _ in 1..MAX_PORTS {
            g.alloc(Channel::Unbound { remote: 0 }).unwrap();
        }
        assert_eq!(g.alloc(Channel::Unbound { remote: 0 }), Err(ENOSPC));
    }
}
