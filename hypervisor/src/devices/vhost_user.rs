//! A vbd whose bottom half is a vhost-user-blk device (such as `qemu-storage-daemon --export
//! type=vhost-user-blk`), driven by blanket-virtio's userspace virtio-blk driver: blkback ->
//! [`VirtioBlock`] -> [`BlkDriver`] -> the vhost-user socket (DESIGN.md, "One disk write, end to end",
//! step 4).
//!
//! **Zero copy.** The guest's memory is a memfd ([`crate::memory::GuestRam::file`]). It is handed to the
//! device as a second region of the driver's memory table ([`ForeignRegion`]), at
//! [`GUEST_MEMORY_DEVICE_ADDR`] in the addresses descriptors use, and registered with the bridge as a
//! [`ZeroCopyRange`]. blkback resolves each grant to a host address inside the guest's mapping; the bridge
//! turns that into an address inside the foreign region, so the device reads and writes the granted guest
//! pages themselves: no copy in blkback, none in the driver. There is no bounce pool: every buffer blkback
//! hands over is a granted guest page, and a request that were not would fail with `BLKIF_RSP_ERROR` rather
//! than be copied (so the device tests prove that every request went zero copy).
//!
//! **A restarted daemon.** The driver reconnects by itself for up to [`RECONNECT`] after the daemon's
//! socket closes (blanket-virtio's `BlkOptions::reconnect`): the guest's requests in flight go to the new
//! daemon, and the guest sees only the delay. A daemon gone for longer fails the guest's I/O with
//! `BLKIF_RSP_ERROR`, as one killed for good does, well before the guest's own 10 s timeout.
//!
//! The device learns the guest's whole memory, as a vhost-user device always does: give a guest only
//! devices you trust with all of it (the driver checks what the device writes back, not what it touches).

use std::os::fd::AsFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use blanket_virtio::blk::{BlkDriver, BlkOptions};
use blanket_virtio::memory::{DmaMemory, ForeignRegion};
use blanket_virtio::pv_backend::{BridgeOptions, VirtioBlock, ZeroCopyRange};
use blanket_virtio::transport::vhost_user::VhostUserTransport;
use pv_backend::blk::{BlockDevice, BlockInfo, BlockQueue};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::DeviceError;
use crate::domain::Domain;

/// Where the guest's memory appears in the device's address space (its memory table): 1 TiB, above the
/// driver's own region (at 4 GiB, a few MiB long) and above any guest's memory
/// ([`crate::memory::MAX_GUEST_MEMORY`] is 64 GiB), so the two never overlap.
pub const GUEST_MEMORY_DEVICE_ADDR: u64 = 1 << 40;

/// Bytes of the driver's own memory: its rings and request headers.
const DRIVER_MEMORY: u64 = 4 << 20;

/// Virtqueues asked for (blkback's rings share them round-robin when there are more rings).
const QUEUES: u16 = 4;

/// How long the driver keeps trying to reconnect to a daemon whose socket closed (see the
/// [module](self) docs).
pub const RECONNECT: std::time::Duration = std::time::Duration::from_secs(5);

/// A virtio-blk device over vhost-user at `socket`, serving `domain`'s vbd with zero copy (see the
/// [module](self) docs); `read_only` presents it read-only whatever the device offers.
pub fn vhost_user_blk(
    domain: &Domain,
    socket: &Path,
    read_only: bool,
) -> Result<Arc<dyn BlockDevice>, DeviceError> {
    let err = |what: &str, e: &dyn std::fmt::Display| DeviceError::VhostUser {
        socket: socket.to_path_buf(),
        what: format!("{what}: {e}"),
    };
    let ram = domain.memory();
    let size = usize::try_from(ram.size()).map_err(|e| err("guest memory size", &e))?;
    let file = ram
        .file()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| err("duplicating the guest memory's memfd", &e))?;
    let mem = DmaMemory::with_foreign_regions(
        DRIVER_MEMORY,
        vec![ForeignRegion {
            addr: GuestAddress(GUEST_MEMORY_DEVICE_ADDR),
            file: file.into(),
            offset: 0,
            size,
        }],
    )
    .map_err(|e| err("mapping the driver's memory and the guest's", &e))?;
    let host = ram
        .memory()
        .get_host_address(GuestAddress(0))
        .ok()
        .and_then(NonNull::new)
        .ok_or_else(|| err("guest memory", &"not mapped at guest-physical 0"))?;
    let transport = VhostUserTransport::connect(socket, Arc::new(mem))
        .map_err(|e| err("connecting to the vhost-user socket", &e))?;
    let driver = BlkDriver::new(
        transport,
        BlkOptions {
            // The bridge sleeps on the call eventfd itself (blanket-virtio's pv_backend docs).
            event_idx: false,
            num_queues: QUEUES,
            reconnect: Some(RECONNECT),
            ..BlkOptions::default()
        },
    )
    .map_err(|e| err("setting up virtio-blk", &e))?;
    let bridge = BridgeOptions {
        zero_copy: vec![ZeroCopyRange::new(
            host,
            size,
            GuestAddress(GUEST_MEMORY_DEVICE_ADDR),
        )],
        bounce_chunks: 0,
        ..BridgeOptions::default()
    };
    let dev = VirtioBlock::new(driver, bridge).map_err(|e| err("the blkback bridge", &e))?;
    Ok(if read_only {
        Arc::new(ReadOnly(dev))
    } else {
        Arc::new(dev)
    })
}

/// A block device presented read-only: blkback then advertises `mode = r`, refuses writes, flushes and
/// discards with `BLKIF_RSP_ERROR`, and never passes one to the device.
struct ReadOnly<D>(D);

impl<D: BlockDevice> BlockDevice for ReadOnly<D> {
    fn info(&self) -> BlockInfo {
        BlockInfo {
            read_only: true,
            flush: false,
            discard: false,
            ..self.0.info()
        }
    }

    fn open_queue(&self) -> std::io::Result<Box<dyn BlockQueue>> {
        self.0.open_queue()
    }
}
