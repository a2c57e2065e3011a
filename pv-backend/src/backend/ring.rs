//! A shared ring in granted pages: the front end grants the ring's pages (`ring-ref`, or `ring-ref0` to
//! `ring-ref<2^order - 1>`), the back end maps them and serves the ring with `xen_abi::ring`.

use xen_abi::DomId;
use xen_abi::XEN_PAGE_SIZE;
use xen_abi::grant_table::GrantRef;
use xen_abi::ring::RingMemory;

use super::grant::{GrantAccess, GrantAccessMode, GrantMapError, GrantMapping};

/// Why a ring could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingMapError {
    /// A ring page's grant could not be mapped.
    #[error("ring page {index}: {source}")]
    Grant {
        /// The page's position in the ring.
        index: usize,
        /// Why.
        #[source]
        source: GrantMapError,
    },
    /// The pages of a multi-page ring are not contiguous in this process's view of guest memory.
    #[error(
        "ring page {index} (grant ref {gref}) does not follow page {} in memory: multi-page rings need \
         pages that are contiguous in the guest's memory",
        index - 1
    )]
    NotContiguous {
        /// The page that is out of place.
        index: usize,
        /// Its grant reference.
        gref: GrantRef,
    },
    /// No ring reference was given.
    #[error("a ring needs at least one page")]
    NoPages,
}

/// The pages of a ring, mapped writable, one block of memory: a [`RingMemory`].
#[derive(Debug)]
pub struct GrantedRing {
    pages: Vec<GrantMapping>,
}

impl GrantedRing {
    /// Maps the ring pages `refs` of domain `domid`, writable, and checks they are contiguous.
    ///
    /// The pages must also be contiguous in the back end's view of guest memory, as Linux's blkback gets
    /// from `xenbus_map_ring_valloc`; the grant access here gives each page where guest memory holds it, so
    /// a multi-page ring must sit in consecutive guest frames (a hypervisor that remaps pages can lift this).
    pub fn map(
        grants: &dyn GrantAccess,
        domid: DomId,
        refs: &[GrantRef],
    ) -> Result<Self, RingMapError> {
        if refs.is_empty() {
            return Err(RingMapError::NoPages);
        }
        let mut pages: Vec<GrantMapping> = Vec::with_capacity(refs.len());
        for (index, &gref) in refs.iter().enumerate() {
            let m = grants
                .map(domid, gref, GrantAccessMode::ReadWrite)
                .map_err(|source| RingMapError::Grant { index, source })?;
            if let Some(prev) = pages.last() {
                if prev.as_ptr().wrapping_add(XEN_PAGE_SIZE) != m.as_ptr() {
                    return Err(RingMapError::NotContiguous { index, gref });
                }
            }
            pages.push(m);
        }
        Ok(Self { pages })
    }

    /// The number of pages.
    pub fn nr_pages(&self) -> usize {
        self.pages.len()
    }
}

// SAFETY: the pages are writable grant mappings, held (and so valid for reads and writes by any thread) as
// long as `self`; `map` checked that they form one contiguous block of `len()` bytes; guest memory is never
// an ordinary Rust object. The pointer is the first page's, the same on every call.
unsafe impl RingMemory for GrantedRing {
    fn as_ptr(&self) -> *mut u8 {
        self.pages
            .first()
            .map_or(std::ptr::null_mut(), |p| p.as_ptr())
    }
    fn len(&self) -> usize {
        self.pages.len() * XEN_PAGE_SIZE
    }
}
