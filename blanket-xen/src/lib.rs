//! Xen PV front-end drivers: a xenbus client, blkfront and the PV console, over `xen-abi`.
#![no_std]
