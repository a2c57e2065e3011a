//! blkback over a real block device: a loop device (util-linux's `losetup`) backed by a sparse file.
//! Discard reaches the device as `BLKDISCARD` (with either engine: io_uring does it synchronously), the
//! loop driver punches a hole in the backing file, and the discarded sectors read back as zeroes through
//! blkback. `discard-granularity` and `discard-alignment` come from sysfs.
//!
//! Needs root and `losetup`; without them the tests fail and say so.

#[path = "common/blk_harness.rs"]
mod harness;

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use harness::{Env, MIB};
use pv_backend::backend::XsHandle;
use pv_backend::blk::front::FrontOptions;
use pv_backend::blk::{BlkConfig, BlockDevice, FileDevice, FileOptions};
use xen_abi::blkif::{
    BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_RSP_OKAY, BlkifRequest, BlkifRequestDiscard,
};

/// A loop device over a file, detached (and the file removed) on drop.
struct LoopDev {
    dev: PathBuf,
    file: PathBuf,
}

impl LoopDev {
    fn new(tag: &str, size: u64) -> Self {
        let file =
            std::env::temp_dir().join(format!("blkback-loop-{tag}-{}.img", std::process::id()));
        let f = std::fs::File::create(&file).unwrap();
        f.set_len(size).unwrap();
        // The first 4 MiB hold data; the rest is a hole.
        use std::io::Write;
        (&f).write_all(&vec![0xEE; 4 * MIB as usize]).unwrap();
        f.sync_all().unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "losetup (util-linux) is needed to make a loop device and could not be run: {e}"
                )
            });
        assert!(
            out.status.success(),
            "losetup --find --show {} failed (root is needed): {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        Self { dev, file }
    }

    fn sysfs(&self, name: &str) -> String {
        let base = self.dev.file_name().unwrap().to_str().unwrap();
        std::fs::read_to_string(format!("/sys/block/{base}/{name}"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// The first hole at or after `offset` in `file` (`SEEK_HOLE`).
fn next_hole(file: &Path, offset: u64) -> u64 {
    let f = std::fs::File::open(file).unwrap();
    // SAFETY: lseek on a descriptor we own, with integer arguments only.
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as i64, libc::SEEK_HOLE) };
    assert!(r >= 0, "SEEK_HOLE: {}", std::io::Error::last_os_error());
    r as u64
}

fn discard_on_a_loop_device(io_uring: bool) {
    let lo = LoopDev::new(if io_uring { "uring" } else { "pool" }, 8 * MIB);
    assert_eq!(
        next_hole(&lo.file, 0),
        4 * MIB,
        "the data before the discard"
    );
    let blocks_before = std::fs::metadata(&lo.file).unwrap().blocks();
    let dev = FileDevice::open(
        &lo.dev,
        FileOptions {
            io_uring,
            ..FileOptions::default()
        },
    )
    .unwrap();
    let info = dev.info();
    assert_eq!(info.size, 8 * MIB);
    assert!(info.discard, "a loop device over a file discards");
    let granularity = lo.sysfs("queue/discard_granularity");
    assert_eq!(info.discard_granularity.to_string(), granularity);
    assert_eq!(
        info.discard_alignment.to_string(),
        lo.sysfs("discard_alignment")
    );

    let env = Env::new();
    let mut v = env.vbd(
        9,
        2048,
        Arc::new(dev),
        BlkConfig::default(),
        FrontOptions::default(),
    );
    let b = v.front.paths.backend.clone();
    let key = |k: &str| {
        String::from_utf8(v.front.xs.read(&format!("{b}/{k}")).unwrap().unwrap()).unwrap()
    };
    assert_eq!(key("feature-discard"), "1");
    assert_eq!(key("discard-granularity"), granularity);
    assert_eq!(key("discard-alignment"), lo.sysfs("discard_alignment"));

    // Discard 1 MiB at 1 MiB (sectors 2048..4096).
    let id = v.front.next_id();
    let req = BlkifRequestDiscard::new(0, id, 2048, 2048, 0).to_request();
    let rsp = v.front.roundtrip(0, &req).unwrap();
    assert_eq!(
        (rsp.status, rsp.operation),
        (BLKIF_RSP_OKAY, BLKIF_OP_DISCARD)
    );
    let id = v.front.next_id();
    let flush = BlkifRequest::new(BLKIF_OP_FLUSH_DISKCACHE, 0, id, 0);
    assert_eq!(v.front.roundtrip(0, &flush).unwrap().status, BLKIF_RSP_OKAY);

    let mut back = vec![0xFF; 3 * MIB as usize];
    // The front end moves at most 512 KiB at a time.
    for (i, chunk) in back.chunks_mut(512 << 10).enumerate() {
        let sector = i as u64 * 1024;
        assert!(
            v.front
                .read(sector, chunk)
                .iter()
                .all(|&s| s == BLKIF_RSP_OKAY)
        );
    }
    let m = MIB as usize;
    assert!(back[..m].iter().all(|&b| b == 0xEE), "before the discard");
    assert!(
        back[m..2 * m].iter().all(|&b| b == 0),
        "discarded sectors read as zeroes"
    );
    assert!(
        back[2 * m..].iter().all(|&b| b == 0xEE),
        "after the discard"
    );
    drop(v);

    assert_eq!(
        next_hole(&lo.file, 0),
        MIB,
        "the hole appears in the backing file"
    );
    let blocks_after = std::fs::metadata(&lo.file).unwrap().blocks();
    assert!(
        blocks_after + 2048 <= blocks_before,
        "the backing file gave back 1 MiB: {blocks_before} -> {blocks_after} 512-byte blocks"
    );
}

#[test]
fn discard_on_a_loop_device_punches_a_hole_in_its_file() {
    discard_on_a_loop_device(false);
}

#[test]
fn discard_on_a_loop_device_punches_a_hole_in_its_file_with_io_uring() {
    discard_on_a_loop_device(true);
}

#[test]
fn a_read_only_loop_device_offers_no_discard() {
    let lo = LoopDev::new("ro", 8 * MIB);
    let dev = FileDevice::open(
        &lo.dev,
        FileOptions {
            read_only: true,
            ..FileOptions::default()
        },
    )
    .unwrap();
    assert!(!dev.info().discard);
}
