//! The receive side: validating the pages a front end offers, building responses.
#![forbid(unsafe_code)]

use super::{NetRxFlags, NetifError, NetifRspStatus, NetifRxRequest, NetifRxResponse};

/// Grant references below this are reserved for the toolstack (`GNTTAB_NR_RESERVED_ENTRIES` in
/// `grant_table.h`).
const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;

/// A page offered by the front end for receiving, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RxBuffer {
    /// The request id, to echo in the response (and the slot to answer in: netfront expects each
    /// response in the slot of the request it consumed).
    pub id: u16,
    /// The grant reference of the page.
    pub gref: u32,
}

impl NetifRxRequest {
    /// Validates a copied RX request: the grant reference must not be one of the reserved ones
    /// (`GNTTAB_NR_RESERVED_ENTRIES` in `grant_table.h`). Any `id` is valid (it is only echoed); `pad` is
    /// ignored. Whether the grant maps is for the hypervisor to say.
    pub fn validate(&self) -> Result<RxBuffer, NetifError> {
        if self.gref < GNTTAB_NR_RESERVED_ENTRIES {
            return Err(NetifError::ReservedGrantRef { gref: self.gref });
        }
        Ok(RxBuffer {
            id: self.id,
            gref: self.gref,
        })
    }
}

impl NetifRxResponse {
    /// A response for `size` bytes received at `offset` in the page of request `id`: `status` is the
    /// size. An error if `offset + size` runs past the 4096-byte page.
    pub fn data(id: u16, offset: u16, size: u16, flags: NetRxFlags) -> Result<Self, NetifError> {
        if u32::from(offset) + u32::from(size) > crate::XEN_PAGE_SIZE as u32 {
            return Err(NetifError::RxResponseCrossesPage { offset, size });
        }
        // size <= 4096, so it fits in the i16 status.
        let status =
            i16::try_from(size).map_err(|_| NetifError::RxResponseCrossesPage { offset, size })?;
        Ok(Self {
            id,
            offset,
            flags: flags.bits(),
            status,
        })
    }

    /// An error response (`NETIF_RSP_ERROR`, `NETIF_RSP_DROPPED`, ...) for request `id`, offset and flags
    /// zero.
    pub const fn error(id: u16, status: NetifRspStatus) -> Self {
        Self {
            id,
            offset: 0,
            flags: 0,
            status: status as i16,
        }
    }

    /// The status as received bytes (`Ok`) or a `NETIF_RSP_*` error (`Err`, raw value kept).
    pub const fn received(&self) -> Result<u16, i16> {
        if self.status >= 0 {
            Ok(self.status as u16)
        } else {
            Err(self.status)
        }
    }
}

/// The RX ring slots that a packet of `len` bytes needs (Linux netback's `xenvif_rx_ring_slots_needed`):
/// one per 4096 bytes of data, plus one for a GSO extra and one for a hash extra. A back end must not
/// start a packet unless the front end posted that many requests, and should bound what it queues while
/// waiting (XSA-392).
pub const fn rx_slots_needed(len: usize, gso: bool, hash: bool) -> usize {
    len.div_ceil(crate::XEN_PAGE_SIZE) + gso as usize + hash as usize
}
