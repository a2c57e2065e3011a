//! The TAP device against the kernel: each test creates a network namespace, moves a fresh TAP
//! device into it, and talks to a socket opened inside it (an AF_PACKET socket for raw frames, a
//! UDP socket for the IP stack). The namespace is deleted when the test ends, pass or fail.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for `setns`) and `ip` from iproute2, as in CI.
//! Only link-local addresses inside the test's own namespace are used.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pv_backend::net::tap::{Tap, TapOptions};
use pv_backend::net::{Checksum, FrameMeta, MAX_FRAME_LEN, NetDevice, NetError, Offloads};

/// The local-experimental ethertype our raw frames use, so the kernel's own traffic (IPv6
/// neighbour discovery, MLD) can be told apart.
const ETHERTYPE: u16 = 0x88b5;
const NS_MAC: [u8; 6] = [0x02, 0x4e, 0x53, 0, 0, 1];
const GUEST_MAC: [u8; 6] = [0x02, 0x47, 0x55, 0, 0, 2];
const NS_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 2);

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2; scripts/setup installs it)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace of this test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "pvb-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        Self(name)
    }

    /// Runs `f` on a thread that has joined the namespace; sockets it opens stay in it.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap();
                // SAFETY: setns with an open namespace fd changes only this thread's network
                // namespace; the thread ends after `f`.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A TAP device moved into a fresh namespace, up, with `NS_MAC` and `NS_IP` on the namespace
/// side and a permanent neighbour entry for the guest.
fn tap_in_netns(opts: TapOptions) -> (Netns, Tap) {
    let ns = Netns::new();
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "pvbt{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    );
    let tap = Tap::open(&TapOptions { name, ..opts }).unwrap();
    let name = tap.name().to_string();
    ip(&["link", "set", "dev", &name, "netns", &ns.0]);
    let mac = NS_MAC.map(|b| format!("{b:02x}")).join(":");
    let gmac = GUEST_MAC.map(|b| format!("{b:02x}")).join(":");
    ip(&["-n", &ns.0, "link", "set", "dev", &name, "address", &mac]);
    ip(&[
        "-n",
        &ns.0,
        "addr",
        "add",
        &format!("{NS_IP}/24"),
        "dev",
        &name,
    ]);
    ip(&["-n", &ns.0, "link", "set", "dev", &name, "up"]);
    ip(&[
        "-n",
        &ns.0,
        "neigh",
        "add",
        &GUEST_IP.to_string(),
        "lladdr",
        &gmac,
        "dev",
        &name,
        "nud",
        "permanent",
    ]);
    (ns, tap)
}

/// An AF_PACKET socket on `ifname`, opened in the current thread's namespace.
fn packet_socket(ifname: &str) -> (OwnedFd, i32) {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the result is checked before it is wrapped.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let cname = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: `cname` is a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
    assert!(ifindex > 0, "no interface {ifname}");
    // SAFETY: an all-zero sockaddr_ll is valid; the fields set below make it a bind address.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex;
    // SAFETY: `sll` is a sockaddr_ll of the length passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    assert_eq!(rc, 0);
    (fd, ifindex)
}

/// Receives the next frame of our ethertype that came *in* on the interface.
fn packet_recv(fd: &OwnedFd) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    loop {
        // SAFETY: as for sockaddr_ll above: all-zero is valid, the kernel fills it.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut fromlen = size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: `buf` and `from` are valid for the lengths passed.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut fromlen,
            )
        };
        assert!(n >= 0, "recvfrom: {}", std::io::Error::last_os_error());
        let f = &buf[..n as usize];
        if from.sll_pkttype != libc::PACKET_OUTGOING
            && f.len() >= 14
            && f[12..14] == ETHERTYPE.to_be_bytes()
        {
            return f.to_vec();
        }
    }
}

fn packet_send(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: `frame` is valid for its length; the socket is bound to the interface.
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(
        n,
        frame.len() as isize,
        "send: {}",
        std::io::Error::last_os_error()
    );
}

fn raw_frame(dst: [u8; 6], src: [u8; 6], len: usize, seed: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    let mut x = seed | 1;
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f
}

/// Receives the next frame of `pred` from the TAP device, waiting up to 5 s.
fn tap_recv(tap: &mut Tap, pred: impl Fn(&[u8]) -> bool) -> (Vec<u8>, FrameMeta) {
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no frame from the TAP device"
        );
        tap.wait_readable(Duration::from_millis(100)).unwrap();
        while let Some(info) = tap.recv(&mut buf).unwrap() {
            let f = &buf[..info.len];
            if pred(f) {
                return (f.to_vec(), info.meta);
            }
        }
    }
}

#[test]
fn raw_frames_cross_the_tap_byte_identical_both_ways() {
    let (ns, mut tap) = tap_in_netns(TapOptions::default());
    let name = tap.name().to_string();
    let sock = ns.run(|| packet_socket(&name).0);
    let sizes = [14usize, 60, 61, 1000, 1514];
    // Guest to namespace: what the TAP device sends comes in on the interface.
    for (i, &len) in sizes.iter().enumerate() {
        let f = raw_frame(NS_MAC, GUEST_MAC, len, i as u32 + 1);
        tap.send(&f, &FrameMeta::default()).unwrap();
        assert_eq!(
            packet_recv(&sock),
            f,
            "frame of {len} bytes into the namespace"
        );
    }
    let bcast = raw_frame([0xff; 6], GUEST_MAC, 100, 99);
    tap.send(&bcast, &FrameMeta::default()).unwrap();
    assert_eq!(packet_recv(&sock), bcast);
    // Namespace to guest: what goes out of the interface comes out of the TAP device.
    for (i, &len) in sizes.iter().enumerate().skip(1) {
        let f = raw_frame(GUEST_MAC, NS_MAC, len, 100 + i as u32);
        packet_send(&sock, &f);
        let (got, meta) = tap_recv(&mut tap, |f| f[12..14] == ETHERTYPE.to_be_bytes());
        assert_eq!(got, f, "frame of {len} bytes out of the namespace");
        assert_eq!(meta, FrameMeta::default());
    }
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn csum_add(data: &[u8], mut sum: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    sum
}

/// An Ethernet + IPv4 + UDP frame from the guest to the namespace. With `partial`, the UDP
/// checksum field holds only the pseudo-header sum, for the device to complete.
fn udp_frame(sport: u16, dport: u16, payload: &[u8], partial: bool) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut f = Vec::new();
    f.extend_from_slice(&NS_MAC);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut iph = [0u8; 20];
    iph[0] = 0x45;
    iph[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    iph[6] = 0x40; // DF
    iph[8] = 64;
    iph[9] = 17;
    iph[12..16].copy_from_slice(&GUEST_IP.octets());
    iph[16..20].copy_from_slice(&NS_IP.octets());
    let c = !csum_fold(csum_add(&iph, 0));
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&iph);
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&GUEST_IP.octets());
    pseudo.extend_from_slice(&NS_IP.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let c = if partial {
        csum_fold(csum_add(&pseudo, 0))
    } else {
        match !csum_fold(csum_add(&udp, csum_add(&pseudo, 0))) {
            0 => 0xffff,
            c => c,
        }
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&udp);
    f
}

fn is_udp_to_guest(f: &[u8], port: u16) -> bool {
    f.len() >= 42
        && f[12..14] == [0x08, 0x00]
        && f[23] == 17
        && f[30..34] == GUEST_IP.octets()
        && f[36..38] == port.to_be_bytes()
}

/// UDP through the kernel's IP stack: datagrams from a socket in the namespace arrive at the
/// guest side intact with a valid checksum, and frames the guest builds reach the socket.
#[test]
fn udp_reaches_a_socket_in_the_namespace_and_back() {
    let (ns, mut tap) = tap_in_netns(TapOptions::default());
    let sock = ns.run(|| {
        let s = UdpSocket::bind(SocketAddrV4::new(NS_IP, 7777)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    });
    // Namespace to guest.
    let payload: Vec<u8> = (0..1200u32).map(|i| (i * 7) as u8).collect();
    sock.send_to(&payload, SocketAddrV4::new(GUEST_IP, 5555))
        .unwrap();
    let (f, meta) = tap_recv(&mut tap, |f| is_udp_to_guest(f, 5555));
    assert_eq!(&f[42..], &payload[..]);
    assert_eq!(meta.checksum, Checksum::None, "no offloads were asked for");
    // The checksum the kernel computed verifies.
    let udp = &f[34..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&f[26..34]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    assert_eq!(csum_fold(csum_add(udp, csum_add(&pseudo, 0))), 0xffff);
    // Guest to namespace.
    let reply: Vec<u8> = (0..999u32).map(|i| (i * 13 + 1) as u8).collect();
    tap.send(&udp_frame(5555, 7777, &reply, false), &FrameMeta::default())
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &reply[..]);
    assert_eq!(
        from,
        std::net::SocketAddr::V4(SocketAddrV4::new(GUEST_IP, 5555))
    );
}

/// With a vnet header and checksum offload: the kernel hands us UDP with its checksum still to do
/// (Partial, pointing at the UDP checksum field), and accepts a Partial frame from us, completing
/// it so that the socket gets the datagram.
#[test]
fn checksum_offload_through_the_vnet_header() {
    let (ns, mut tap) = tap_in_netns(TapOptions {
        vnet_hdr: true,
        rx_offloads: Offloads {
            csum: true,
            tso4: false,
            tso6: false,
        },
        ..TapOptions::default()
    });
    assert!(tap.has_vnet_hdr());
    let sock = ns.run(|| {
        let s = UdpSocket::bind(SocketAddrV4::new(NS_IP, 7778)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    });
    let payload = vec![0x5a; 700];
    sock.send_to(&payload, SocketAddrV4::new(GUEST_IP, 5556))
        .unwrap();
    let (f, meta) = tap_recv(&mut tap, |f| is_udp_to_guest(f, 5556));
    assert_eq!(&f[42..], &payload[..]);
    assert_eq!(
        meta.checksum,
        Checksum::Partial {
            start: 34,
            offset: 6
        },
        "the kernel should leave the UDP checksum to us"
    );
    let reply = vec![0xa5; 333];
    let frame = udp_frame(5556, 7778, &reply, true);
    tap.send(
        &frame,
        &FrameMeta {
            checksum: Checksum::Partial {
                start: 34,
                offset: 6,
            },
            gso: None,
        },
    )
    .unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], &reply[..]);
}

#[test]
fn tap_refuses_what_it_cannot_carry() {
    let mut tap = Tap::open(&TapOptions::default()).unwrap();
    assert_eq!(tap.offloads(), Offloads::NONE);
    let partial = FrameMeta {
        checksum: Checksum::Partial {
            start: 34,
            offset: 6,
        },
        gso: None,
    };
    assert!(matches!(
        tap.send(&[0u8; 100], &partial),
        Err(NetError::Unsupported { .. })
    ));
    assert!(matches!(
        tap.send(&[0u8; 10], &FrameMeta::default()),
        Err(NetError::FrameTooShort { len: 10 })
    ));
    let mut small = vec![0u8; 1500];
    assert!(matches!(
        tap.recv(&mut small),
        Err(NetError::BufferTooSmall { len: 1500, .. })
    ));
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    assert!(
        tap.recv(&mut buf).unwrap().is_none(),
        "a down TAP device has no frames"
    );
    assert!(matches!(
        Tap::open(&TapOptions {
            name: "a-name-that-is-too-long".into(),
            ..TapOptions::default()
        }),
        Err(NetError::BadMeta { .. })
    ));
    assert!(matches!(
        Tap::open(&TapOptions {
            rx_offloads: Offloads::ALL,
            ..TapOptions::default()
        }),
        Err(NetError::Unsupported { .. })
    ));
}

/// `PACKET_VNET_HDR` (`linux/if_packet.h`): the packet socket reads and writes a `virtio_net_hdr` in
/// front of each frame, so GSO frames pass whole with their segmentation metadata.
const PACKET_VNET_HDR: libc::c_int = 15;

/// A TCPv4 frame of `len` bytes from `src` to `dst`, with the TCP checksum field holding the folded
/// pseudo-header sum (what a partial checksum carries).
fn tcp4_gso_frame(dst: [u8; 6], src: [u8; 6], from: Ipv4Addr, to: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i * 13 + 7) as u8).collect();
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = len - 14;
    let mut iph = [0u8; 20];
    iph[0] = 0x45;
    iph[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    iph[6] = 0x40;
    iph[8] = 64;
    iph[9] = 6;
    iph[12..16].copy_from_slice(&from.octets());
    iph[16..20].copy_from_slice(&to.octets());
    let c = !csum_fold(csum_add(&iph, 0));
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    f[14..34].copy_from_slice(&iph);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5001u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH ACK
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&from.octets());
    pseudo.extend_from_slice(&to.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&((ip_len - 20) as u16).to_be_bytes());
    tcp[16..18].copy_from_slice(&csum_fold(csum_add(&pseudo, 0)).to_be_bytes());
    f[34..54].copy_from_slice(&tcp);
    f
}

/// GSO both ways through the vnet header: a 20 000-byte TCPv4 super-frame sent to the TAP device
/// arrives whole in the namespace with its GSO type and size (a packet socket with
/// `PACKET_VNET_HDR` sees the kernel's skb metadata), and one sent from the namespace comes out of
/// the TAP device whole, as `Gso { TcpV4, 1448 }` with a partial checksum.
#[test]
fn gso_super_frames_cross_the_tap_whole_both_ways() {
    use pv_backend::net::{Gso, GsoType};
    let (ns, mut tap) = tap_in_netns(TapOptions {
        vnet_hdr: true,
        rx_offloads: Offloads::ALL,
        ..TapOptions::default()
    });
    let name = tap.name().to_string();
    let sock = ns.run(|| {
        let (fd, _) = packet_socket(&name);
        let one: libc::c_int = 1;
        // SAFETY: PACKET_VNET_HDR takes an int of the length passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_VNET_HDR,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "PACKET_VNET_HDR: {}",
            std::io::Error::last_os_error()
        );
        fd
    });
    let meta = FrameMeta {
        checksum: Checksum::Partial {
            start: 34,
            offset: 16,
        },
        gso: Some(Gso {
            gso_type: GsoType::TcpV4,
            size: 1448,
            hdr_len: 54,
        }),
    };
    // Guest to namespace.
    let f = tcp4_gso_frame(NS_MAC, GUEST_MAC, GUEST_IP, NS_IP, 20_000);
    tap.send(&f, &meta).unwrap();
    let mut buf = vec![0u8; MAX_FRAME_LEN + 10];
    let got = loop {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n >= 0, "recv: {}", std::io::Error::last_os_error());
        let p = &buf[..n as usize];
        if p.len() > 10 + 54 && p[10 + 12..10 + 14] == [0x08, 0x00] && p[10 + 23] == 6 {
            break p.to_vec();
        }
    };
    let (hdr, frame) = got.split_at(10);
    assert_eq!(hdr[0] & 1, 1, "NEEDS_CSUM");
    assert_eq!(hdr[1], 1, "gso_type TCPV4 (the kernel did not segment)");
    assert_eq!(u16::from_ne_bytes([hdr[4], hdr[5]]), 1448, "gso_size");
    assert_eq!(frame, &f[..], "the super-frame differs");
    // Namespace to guest.
    let f = tcp4_gso_frame(GUEST_MAC, NS_MAC, NS_IP, GUEST_IP, 30_000);
    let mut out = vec![1u8, 1];
    for v in [54u16, 1448, 34, 16] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    out.extend_from_slice(&f);
    packet_send(&sock, &out);
    let (got, meta) = tap_recv(&mut tap, |p| {
        p.len() > 54 && p[12..14] == [0x08, 0x00] && p[23] == 6 && p[30..34] == GUEST_IP.octets()
    });
    assert_eq!(got, f, "the super-frame from the namespace differs");
    assert_eq!(
        meta.gso.map(|g| (g.gso_type, g.size)),
        Some((GsoType::TcpV4, 1448))
    );
    assert_eq!(
        meta.checksum,
        Checksum::Partial {
            start: 34,
            offset: 16
        }
    );
}
