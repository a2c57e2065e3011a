//! XenStore.
