//! ring.h peers, written in C (c/ring_peers.c).
