//! The embedded Blanket PV guest (built from `guest/` by the build script).

use std::sync::Arc;

/// The guest's ELF image, as built (empty if this copy of the crate could not build it).
pub static GUEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/blanket-guest.elf"));

const STATUS: &str = include_str!(concat!(env!("OUT_DIR"), "/guest-status.txt"));

/// The error of [`builtin`].
#[derive(Debug, thiserror::Error)]
#[error(
    "no embedded guest in this build of blanket-hypervisor: {0}; build it from the Blanket workspace"
)]
pub struct NoBuiltinGuest(&'static str);

/// The embedded guest image, ready for [`DomainConfig`](crate::DomainConfig).
pub fn builtin() -> Result<Arc<[u8]>, NoBuiltinGuest> {
    if GUEST_ELF.is_empty() {
        return Err(NoBuiltinGuest(STATUS));
    }
    Ok(Arc::from(GUEST_ELF))
}
