//! netback front end to front end through the switch: packets per second at 64 and 1500 bytes, and
//! throughput of 64 KiB GSO packets (criterion's bytes per second; ×8 for Gbit/s). Everything runs
//! on one thread, in batches of 32 packets: guest A's front end queues them, A's netback sends them
//! into the switch, B's netback copies them into B's posted buffers, B's front end reads them and
//! posts the buffers again. The same frames sent port to port through the switch alone (no rings,
//! no grants) are measured in the same run, so the ring side's share shows as the ratio of the two.
//! After the run, notifications per packet are printed.
//!
//! `cargo bench -p pv-backend --features test-utils --bench net_back`

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pv_backend::backend::{EventChannel, GrantAccess, GrantedRing};
use pv_backend::blk::front::TestGuest;
use pv_backend::net::back::{NetQueue, NetQueueConfig};
use pv_backend::net::switch::{Switch, SwitchConfig, SwitchPort};
use pv_backend::net::{FrameMeta, MAX_FRAME_LEN, NetDevice};
use xen_abi::netif::{
    ExtraFlags, NET_RX_RING_SIZE, NetRxFlags, NetTxFlags, NetifExtraInfo, NetifExtraInfoGso,
    NetifRx, NetifRxRequest, NetifTx, NetifTxRequest, XEN_NETIF_GSO_TYPE_TCPV4,
};
use xen_abi::ring::{FrontRing, RawRingMemory};

const BATCH: usize = 32;
const PAGE: usize = 4096;

#[derive(Default)]
struct Counter(AtomicU64);
impl EventChannel for Counter {
    fn notify(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

struct Front {
    guest: Arc<TestGuest>,
    tx: FrontRing<RawRingMemory, NetifTx>,
    rx: FrontRing<RawRingMemory, NetifRx>,
    tx_ref: u32,
    rx_ref: u32,
    /// TX pages: BATCH packets of up to 17 pages each.
    tx_pages: Vec<u32>,
    rx_pages: Vec<(u32, u32)>,
    next_rx: u16,
}

fn ring_memory(guest: &TestGuest, frame: u32) -> RawRingMemory {
    // SAFETY: a page of the guest's memory, which the `Arc<TestGuest>` held next to the ring keeps
    // alive; only the ring's atomic and volatile accesses touch it.
    unsafe { RawRingMemory::new(NonNull::new(guest.page_ptr(frame)).unwrap(), PAGE) }
}

impl Front {
    fn new(domid: u16) -> Self {
        let guest = TestGuest::new(domid, 0, 2048, 8);
        let (txf, rxf) = (guest.alloc_pages(1), guest.alloc_pages(1));
        let tx = FrontRing::new(ring_memory(&guest, txf)).unwrap();
        let rx = FrontRing::new(ring_memory(&guest, rxf)).unwrap();
        let tx_ref = guest.grant(txf, false);
        let rx_ref = guest.grant(rxf, false);
        let tx_pages = (0..BATCH * 17)
            .map(|_| {
                let f = guest.alloc_pages(1);
                guest.grant(f, true)
            })
            .collect();
        let rx_pages = (0..NET_RX_RING_SIZE)
            .map(|_| {
                let f = guest.alloc_pages(1);
                (f, guest.grant(f, false))
            })
            .collect();
        let mut f = Self {
            guest,
            tx,
            rx,
            tx_ref,
            rx_ref,
            tx_pages,
            rx_pages,
            next_rx: 0,
        };
        f.post_rx(NET_RX_RING_SIZE as usize);
        f
    }

    fn back(&self, device: SwitchPort, ev: Arc<Counter>) -> NetQueue<GrantedRing, SwitchPort> {
        let grants: Arc<dyn GrantAccess> = Arc::new(self.guest.grants.clone());
        let d = self.guest.domid;
        let tx = GrantedRing::map(&*grants, d, &[self.tx_ref]).unwrap();
        let rx = GrantedRing::map(&*grants, d, &[self.rx_ref]).unwrap();
        let ev: Arc<dyn EventChannel> = ev;
        NetQueue::new(
            d,
            grants,
            tx,
            rx,
            ev.clone(),
            ev,
            device,
            NetQueueConfig::default(),
        )
        .unwrap()
    }

    /// Queues packet `k` of the batch (its data already in its pages: only the requests are
    /// written, as a front end reusing its buffers does).
    fn queue_packet(&mut self, k: usize, len: usize, gso: bool) {
        let pieces = len.div_ceil(PAGE);
        for i in 0..pieces {
            let gref = self.tx_pages[k * 17 + i];
            let mut fl = NetTxFlags::empty();
            if i + 1 < pieces {
                fl |= NetTxFlags::MORE_DATA;
            }
            if i == 0 && gso {
                fl |= NetTxFlags::EXTRA_INFO | NetTxFlags::CSUM_BLANK;
            }
            let size = if i == 0 {
                len
            } else {
                (len - i * PAGE).min(PAGE)
            };
            self.tx
                .put_request(&NetifTxRequest::new(gref, 0, fl, i as u16, size as u16))
                .unwrap();
            if i == 0 && gso {
                let e = NetifExtraInfo::gso(
                    NetifExtraInfoGso::new(1448, XEN_NETIF_GSO_TYPE_TCPV4, 0),
                    ExtraFlags::empty(),
                );
                self.tx
                    .put_request(&NetifTxRequest::from_extra_info(&e))
                    .unwrap();
            }
        }
    }

    fn write_data(&self, k: usize, data: &[u8]) {
        for (i, chunk) in data.chunks(PAGE).enumerate() {
            // The grant refs were handed out in order after the two ring refs: page = gref's frame.
            let gref = self.tx_pages[k * 17 + i];
            let frame = self.guest.grants.entry(gref).unwrap().frame;
            self.guest.write(frame, 0, chunk);
        }
    }

    fn post_rx(&mut self, n: usize) {
        for _ in 0..n.min(self.rx.free_requests() as usize) {
            let id = self.next_rx % NET_RX_RING_SIZE as u16;
            self.next_rx = self.next_rx.wrapping_add(1);
            let gref = self.rx_pages[usize::from(id)].1;
            self.rx.put_request(&NetifRxRequest::new(id, gref)).unwrap();
        }
        self.rx.push_requests();
    }

    /// Consumes every response (TX) and every received packet (RX), reposting the RX buffers;
    /// returns the packets received.
    fn reap(&mut self) -> usize {
        while self.tx.pop_response().unwrap().is_some() {}
        let mut packets = 0;
        let mut slots = 0;
        while let Some(r) = self.rx.pop_response().unwrap() {
            slots += 1;
            if r.rx_flags().contains(NetRxFlags::EXTRA_INFO) {
                self.rx.pop_response().unwrap();
                slots += 1;
            }
            if !r.rx_flags().contains(NetRxFlags::MORE_DATA) {
                packets += 1;
            }
        }
        self.post_rx(slots);
        packets
    }
}

fn tcp4(len: usize) -> Vec<u8> {
    let mut f = vec![0x5a; len];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    f[20..22].copy_from_slice(&[0, 0]);
    f[23] = 6;
    f[46] = 5 << 4;
    f
}

/// A frame from B (to A), to teach the switch B's address.
fn tcp4_from_b() -> Vec<u8> {
    let mut f = tcp4(64);
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("netback_front_to_front");
    // A batch of GSO packets must fit the TX ring (17 slots each).
    for (name, len, gso, batch) in [
        ("64", 64usize, false, BATCH),
        ("1500", 1500, false, BATCH),
        ("gso64k", 65_535, true, 8),
    ] {
        let sw = Switch::new(SwitchConfig::default()).unwrap();
        let (mut a, mut b) = (Front::new(1), Front::new(2));
        let (ea, eb) = (Arc::new(Counter::default()), Arc::new(Counter::default()));
        let mut qa = a.back(sw.add_port(), ea.clone());
        let mut qb = b.back(sw.add_port(), eb.clone());
        let data = tcp4(len);
        for k in 0..batch {
            a.write_data(k, &data);
        }
        // B's address is learned, so that A's frames are unicast.
        qb.device_mut()
            .send(&tcp4_from_b(), &FrameMeta::default())
            .unwrap();
        let mut packets = 0u64;
        if gso {
            g.throughput(Throughput::Bytes((batch * len) as u64));
        } else {
            g.throughput(Throughput::Elements(batch as u64));
        }
        g.bench_function(BenchmarkId::new("netback", name), |bench| {
            bench.iter(|| {
                for k in 0..batch {
                    a.queue_packet(k, len, gso);
                }
                a.tx.push_requests();
                let now = Instant::now();
                while qa.process(now).unwrap() | qb.process(now).unwrap() {}
                a.reap();
                packets += b.reap() as u64;
            })
        });
        let (sa, sb) = (qa.stats(), qb.stats());
        eprintln!(
            "netback {name}: {packets} packets; notifications per packet: TX {:.4}, RX {:.4}; \
             RX dropped {}",
            sa.tx_notifies as f64 / packets.max(1) as f64,
            sb.rx_notifies as f64 / packets.max(1) as f64,
            sb.rx_dropped,
        );
        // The switch alone, port to port, same frames.
        let (mut pa, mut pb) = (sw.add_port(), sw.add_port());
        let meta = if gso {
            FrameMeta {
                checksum: pv_backend::net::Checksum::Partial {
                    start: 34,
                    offset: 16,
                },
                gso: Some(pv_backend::net::Gso {
                    gso_type: pv_backend::net::GsoType::TcpV4,
                    size: 1448,
                    hdr_len: 0,
                }),
            }
        } else {
            FrameMeta::default()
        };
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        drop(qa);
        drop(qb);
        g.bench_function(BenchmarkId::new("switch_only", name), |bench| {
            bench.iter(|| {
                for _ in 0..batch {
                    pa.send(&data, &meta).unwrap();
                }
                for _ in 0..batch {
                    pb.recv(&mut buf).unwrap().unwrap();
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
