//! blkback with the guest's memory registered with io_uring (`BlkBack::with_fixed_memory`): requests
//! into one buffer of guest memory go through fixed buffers (`READ_FIXED`/`WRITE_FIXED`), the others
//! through `readv`/`writev`, and what is read and written is the same either way, with the queue
//! thread and with inline serving (whose queue gets a new ring, registered again).

#[path = "common/blk_harness.rs"]
mod harness;

use std::sync::Arc;

use harness::{Env, Image, MIB, pattern};
use pv_backend::blk::front::FrontOptions;
use pv_backend::blk::{BlkConfig, FileDevice};
use xen_abi::blkif::{BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_OKAY, BlkifRequest};

fn uring_disk(name: &str, size: usize) -> (Image, Arc<FileDevice>) {
    harness::uring_disk("blk-fixed", name, size)
}

fn disk_bytes(img: &Image, offset: usize, len: usize) -> Vec<u8> {
    std::fs::read(&img.0).unwrap()[offset..offset + len].to_vec()
}

fn data_served_through_registered_memory(inline: bool) {
    let (img, dev) = uring_disk(if inline { "inline" } else { "thread" }, 4 * MIB as usize);
    let env = Env::new();
    let config = BlkConfig {
        inline,
        ..BlkConfig::default()
    };
    let mut v = env.vbd_with(1, 2048, dev.clone(), config, FrontOptions::default(), true);

    // Requests on consecutive pages of the data buffer: one buffer each, so fixed buffers.
    let data = pattern(7, 256 << 10);
    let before = dev.fixed_ios();
    assert!(
        v.front
            .write(64, &data)
            .iter()
            .all(|&s| s == BLKIF_RSP_OKAY)
    );
    let mut back = vec![0u8; data.len()];
    assert!(
        v.front
            .read(64, &mut back)
            .iter()
            .all(|&s| s == BLKIF_RSP_OKAY)
    );
    assert!(back == data, "read back differs");
    assert!(
        disk_bytes(&img, 64 * 512, data.len()) == data,
        "the image holds what was written"
    );
    let fixed = dev.fixed_ios() - before;
    assert!(
        fixed >= 2,
        "the writes and reads used registered memory: {fixed} fixed I/Os"
    );

    // A request on pages 0 and 2 is two buffers: readv, and the same data where it belongs.
    let before = dev.fixed_ios();
    let mut segs = v.front.segments(0, 4096);
    segs.extend(v.front.segments(2, 4096));
    let id = v.front.next_id();
    let req = BlkifRequest::with_segments(BLKIF_OP_READ, 0, id, 8, &segs).unwrap();
    let rsp = v.front.roundtrip(0, &req).expect("answered");
    assert_eq!((rsp.id, rsp.status), (id, BLKIF_RSP_OKAY));
    let frame = v.front.buf_frame;
    assert!(v.guest.read(frame, 0, 4096) == disk_bytes(&img, 8 * 512, 4096));
    assert!(v.guest.read(frame + 2, 0, 4096) == disk_bytes(&img, 8 * 512 + 4096, 4096));
    assert_eq!(dev.fixed_ios(), before, "two buffers go through readv");

    // And a write from the same two pages lands in order.
    v.guest.write(frame, 0, &pattern(11, 4096));
    v.guest.write(frame + 2, 0, &pattern(12, 4096));
    let id = v.front.next_id();
    let req = BlkifRequest::with_segments(BLKIF_OP_WRITE, 0, id, 2048, &segs).unwrap();
    let rsp = v.front.roundtrip(0, &req).expect("answered");
    assert_eq!(rsp.status, BLKIF_RSP_OKAY);
    assert!(disk_bytes(&img, 2048 * 512, 4096) == pattern(11, 4096));
    assert!(disk_bytes(&img, 2048 * 512 + 4096, 4096) == pattern(12, 4096));
    assert_eq!(dev.fixed_ios(), before);
}

#[test]
fn the_queue_thread_reads_and_writes_through_registered_guest_memory() {
    data_served_through_registered_memory(false);
}

#[test]
fn an_inline_queue_registers_the_guest_memory_on_its_new_ring() {
    data_served_through_registered_memory(true);
}

/// Without the memory, nothing is fixed: the counter is not counting something else.
#[test]
fn without_registered_memory_no_io_is_fixed() {
    let (_img, dev) = uring_disk("none", MIB as usize);
    let env = Env::new();
    let mut v = env.vbd(
        1,
        2048,
        dev.clone(),
        BlkConfig::default(),
        FrontOptions::default(),
    );
    assert!(
        v.front
            .write(0, &pattern(3, 64 << 10))
            .iter()
            .all(|&s| s == BLKIF_RSP_OKAY)
    );
    let mut back = vec![0u8; 64 << 10];
    assert!(
        v.front
            .read(0, &mut back)
            .iter()
            .all(|&s| s == BLKIF_RSP_OKAY)
    );
    assert!(back == pattern(3, 64 << 10));
    assert_eq!(dev.fixed_ios(), 0);
}
