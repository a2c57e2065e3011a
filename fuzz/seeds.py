#!/usr/bin/env python3
"""Writes the seed corpora of the netback_gso, virtio_used_ring, netback_ctrl_ring and console_ring
targets (fuzz/corpus/<target>/seed-*): valid inputs in each target's input format (see the doc
comment at the top of each target). Run from anywhere: `python3 fuzz/seeds.py`."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def eth(ethertype, vlan=False):
    h = bytes([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1])
    if vlan:
        h += struct.pack("!HH", 0x8100, 5)
    return h + struct.pack("!H", ethertype)


def payload(n):
    return bytes((i * 131 + i // 7) & 0xFF for i in range(n))


def tcp(seq, flags, body_len, pseudo):
    # 20-byte header and 12 bytes of options (NOP NOP timestamp); the checksum field holds the
    # pseudo-header sum, as a csum_blank front end leaves it.
    length = 32 + body_len
    return (struct.pack("!HHIIBBHHH", 4000, 80, seq, 77, 0x80, flags, 0x1000, 0, 0)
            + bytes([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])), length


def tcp4(n, vlan=False, proto=6):
    body = payload(n)
    l4_len = 32 + n if proto == 6 else 8 + n
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4_len, 0x1234, 0x4000, 64, proto, 0,
                               bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])))
    ip[10:12] = struct.pack("!H", 0xFFFF ^ csum(bytes(ip)))
    pseudo = csum(bytes(ip[12:20]) + struct.pack("!HH", proto, l4_len))
    if proto == 6:
        l4 = bytearray(tcp(1000, 0x18 | 0x80 | 0x01, n, pseudo)[0])
        l4[16:18] = struct.pack("!H", pseudo)
    else:
        l4 = bytearray(struct.pack("!HHHH", 5000, 53, 8 + n, pseudo))
    return eth(0x0800, vlan) + bytes(ip) + bytes(l4) + body


def tcp6(n):
    body = payload(n)
    hbh = bytes([6, 0, 1, 4, 0, 0, 0, 0])
    src = bytes([0xFE, 0x80] + [0] * 13 + [1])
    dst = bytes([0xFE, 0x80] + [0] * 13 + [2])
    ip = struct.pack("!IHBB", 0x60000000, 8 + 32 + n, 0, 64) + src + dst
    pseudo = csum(src + dst + struct.pack("!IxxxB", 32 + n, 6))
    l4 = bytearray(tcp(7, 0x10 | 0x08, n, pseudo)[0])
    l4[16:18] = struct.pack("!H", pseudo)
    return eth(0x86DD) + ip + hbh + bytes(l4) + body


def gso_seeds():
    # [mode, size_lo, size_hi, frag, frame]; mode bit 0 v6, 1 GSO extra, 2 csum_blank,
    # 3 data_validated, 4-5 device offloads (0 none, 1 csum, 2 all, 3 csum + TSOv4).
    mss = struct.pack("<H", 100)
    put("netback_gso", "seed-0", bytes([0x06]) + mss + bytes([255]) + tcp4(350))
    put("netback_gso", "seed-1", bytes([0x17]) + mss + bytes([40]) + tcp6(230))
    put("netback_gso", "seed-2", bytes([0x04]) + mss + bytes([6]) + tcp4(120, proto=17))
    put("netback_gso", "seed-3", bytes([0x26]) + mss + bytes([255]) + tcp4(300, vlan=True))
    put("netback_gso", "seed-4", bytes([0x04]) + mss + bytes([255]) + tcp4(61))


def step(*b):
    b = list(b) + [0] * (8 - len(b))
    return bytes(b)


def virtio_seeds():
    # [config] then 8-byte steps: 0 add, 1 publish, 2 poll, 3 notifications, 4 reset,
    # 5 used element / descriptor, 6 used.idx / event area, 7 poke, 8 honest completion.
    def script(extra):
        s = b""
        for i in range(3):
            s += step(0, i % 4, i, 0x00, 0x10, 0x0F)  # a chain, writable segments
        s += step(1)
        s += step(8, 0x00, 0x02)  # complete the first with 512 bytes
        s += step(8, 0x10, 0x00)
        s += step(2, 7)
        s += step(3, 0)
        s += extra
        s += step(0, 0, 5, 0x00, 0x01, 0x01)
        s += step(1)
        s += step(8, 0x00, 0x01)
        s += step(2, 7)
        return s
    # split, size 8, EVENT_IDX
    put("virtio_used_ring", "seed-0", bytes([0x34]) + script(step(8, 0, 1) + step(2, 7)))
    # packed, size 8, EVENT_IDX
    put("virtio_used_ring", "seed-1", bytes([0x35]) + script(step(8, 0, 1) + step(2, 7)))
    # split, IN_ORDER, INDIRECT, size 4: a used element naming a later buffer (a batch)
    put("virtio_used_ring", "seed-2", bytes([0x2E]) + script(step(8, 0, 1, 1, 1) + step(2, 7)))
    # packed, IN_ORDER, size 16
    put("virtio_used_ring", "seed-3", bytes([0x43]) + script(step(4) + step(2, 7)))


def ctrl_seeds():
    # [queues, limits] then 17-byte steps [op, b0..b15].
    def req(rid, ty, d0=0, d1=0, d2=0):
        return bytes([0]) + struct.pack("=HHIII", rid, ty, d0, d1, d2)

    def proc():
        return bytes([1]) + bytes(16)

    def fill(page, base, mult):
        return bytes([4, page]) + struct.pack("<I", base) + bytes([mult]) + bytes(10)

    frame = bytearray(16)
    frame[12:14] = b"\x08\x00"
    frame[14] = 0x45
    frame[1] = 7
    hash_frame = bytes([5]) + bytes(frame)
    s = fill(0, 1, 0) + fill(1, 0, 0)
    s += req(1, 7, 1)            # SET_HASH_ALGORITHM Toeplitz
    s += req(2, 2, 0xF)          # SET_HASH_FLAGS all
    s += req(3, 3, 9, 40)        # SET_HASH_KEY from gref 9, 40 bytes
    s += req(4, 5, 64)           # SET_HASH_MAPPING_SIZE 64
    s += req(5, 6, 9, 64, 0)     # SET_HASH_MAPPING gref 9, 64 entries at 0
    s += req(6, 1) + req(7, 4)   # GET_HASH_FLAGS, GET_HASH_MAPPING_SIZE
    s += proc() + hash_frame
    s += req(8, 6, 10, 8, 60)    # out of the table: INVALID_PARAMETER
    s += req(9, 3, 77, 4)        # an ungranted key page
    s += proc() + hash_frame
    put("netback_ctrl_ring", "seed-0", bytes([2, 1]) + s)
    put("netback_ctrl_ring", "seed-1", bytes([7, 0]) + s + req(10, 9, 1, 9, 1) + proc())


def console_seeds():
    # [cfg] then 6-byte steps: 0 output, 1 out_prod, 2 in_cons, 3 event, 4 process, 5 time,
    # 6 sink speed and input, 7 the guest reads input.
    def st(*b):
        return bytes(list(b) + [0] * (6 - len(b)))
    s = st(0, 44, 1) + st(6, 100, 0, 10, 65) + st(3) + st(7, 20) + st(5, 20) + st(4)
    s += st(0, 0, 8) + st(3) + st(3) + st(3) + st(3) + st(5, 11) + st(4) + st(6, 0, 8) + st(4)
    s += st(7, 255)
    put("console_ring", "seed-0", bytes([0x13]) + s)  # Keep, rate limit, 258-byte buffer
    put("console_ring", "seed-1", bytes([0x0A]) + s)  # Discard, rate limit, 130-byte buffer


gso_seeds()
virtio_seeds()
console_seeds()
ctrl_seeds()
