//! Multicast filter updates: the operation a front end sends, and a bounded filter to apply it to.
#![forbid(unsafe_code)]

use super::NetifError;

/// An Ethernet address.
pub type MacAddr = [u8; 6];

/// The most multicast addresses Linux netback keeps per vif (`XEN_NETBK_MCAST_MAX`); the default
/// capacity of [`MulticastFilter`]. No C counterpart in `io/netif.h`.
pub const XEN_NETBK_MCAST_MAX: usize = 64;

/// A multicast filter update carried by a dummy TX request (`XEN_NETIF_EXTRA_TYPE_MCAST_ADD`/`_DEL` in
/// `io/netif.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MulticastOp {
    /// Add the address to the filter.
    Add(MacAddr),
    /// Remove the address from the filter.
    Del(MacAddr),
}

/// Whether `addr` is a multicast (group) address: the least significant bit of its first octet.
pub const fn is_multicast(addr: &MacAddr) -> bool {
    addr[0] & 1 == 1
}

/// The multicast addresses a front end asked for: a set of at most `N` addresses
/// ([`XEN_NETBK_MCAST_MAX`] = 64 by default), in fixed storage, so that a flood of adds costs nothing
/// beyond `N` entries: once full, adds fail with [`NetifError::MulticastFilterFull`] (Linux answers such
/// a request with `NETIF_RSP_ERROR`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MulticastFilter<const N: usize = XEN_NETBK_MCAST_MAX> {
    addrs: [MacAddr; N],
    len: usize,
}

impl<const N: usize> MulticastFilter<N> {
    /// An empty filter.
    pub const fn new() -> Self {
        Self {
            addrs: [[0; 6]; N],
            len: 0,
        }
    }

    /// The addresses, in the order they were added.
    pub fn as_slice(&self) -> &[MacAddr] {
        self.addrs.get(..self.len).unwrap_or(&[])
    }

    /// The number of addresses.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the filter is empty.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The capacity, `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Whether `addr` is in the filter.
    pub fn contains(&self, addr: &MacAddr) -> bool {
        self.as_slice().contains(addr)
    }

    /// Adds `addr`. Returns `Ok(true)` if it was added, `Ok(false)` if it was already there; an error if
    /// it is not a multicast address or the filter is full.
    pub fn add(&mut self, addr: MacAddr) -> Result<bool, NetifError> {
        if !is_multicast(&addr) {
            return Err(NetifError::NotMulticastAddress { addr });
        }
        if self.contains(&addr) {
            return Ok(false);
        }
        let slot = self
            .addrs
            .get_mut(self.len)
            .ok_or(NetifError::MulticastFilterFull { max: N })?;
        *slot = addr;
        self.len += 1;
        Ok(true)
    }

    /// Removes `addr`; returns whether it was there.
    pub fn remove(&mut self, addr: &MacAddr) -> bool {
        let Some(pos) = self.as_slice().iter().position(|a| a == addr) else {
            return false;
        };
        if let Some(live) = self.addrs.get_mut(pos..self.len) {
            live.rotate_left(1);
        }
        self.len -= 1;
        if let Some(slot) = self.addrs.get_mut(self.len) {
            *slot = [0; 6];
        }
        true
    }

    /// Applies an operation from a front end; returns whether the filter changed.
    pub fn apply(&mut self, op: MulticastOp) -> Result<bool, NetifError> {
        match op {
            MulticastOp::Add(addr) => self.add(addr),
            MulticastOp::Del(addr) => Ok(self.remove(&addr)),
        }
    }

    /// Empties the filter.
    pub fn clear(&mut self) {
        *self = Self::new();
    }
}

impl<const N: usize> Default for MulticastFilter<N> {
    fn default() -> Self {
        Self::new()
    }
}
