//! Event channels: `event_channel.h`.
//!
//! An event channel carries one bit of information, "something happened", between two domains (or from a
//! virtual or physical interrupt, or another vCPU, to a domain). Under the *2-level* ABI a domain's
//! channels are two bitmaps in its `shared_info` page, `evtchn_pending` and `evtchn_mask` (64 words of 64
//! bits on x86_64: [`EVTCHN_2L_NR_CHANNELS`] = 4096 ports), plus, in each `vcpu_info`, a selector word
//! (`evtchn_pending_sel`, one bit per pending word) and the `evtchn_upcall_pending` byte.
//!
//! This module has:
//!
//! - [`EvtchnPort`], the `EVTCHNOP_*` hypercall numbers, every argument structure (`struct evtchn_*`), the
//!   `EVTCHNSTAT_*` codes ([`EvtchnStatusKind`] decodes an [`EvtchnStatus`]) and the compatibility
//!   [`EvtchnOp`], and the FIFO ABI's constants and control block;
//! - [`TwoLevel`]: the 2-level bitmaps, operated on concurrently by both sides through atomics: the
//!   hypervisor's [`send`](TwoLevel::send) and [`unmask`](TwoLevel::unmask) (as Xen's
//!   `evtchn_2l_set_pending` and `evtchn_2l_unmask`), and the guest's bounded [`scan`](TwoLevel::scan).
//!
//! The bitmaps do not depend on the layout of `shared_info`: they take references to the atomic words,
//! wherever they live.
#![forbid(unsafe_code)]
#![allow(non_upper_case_globals)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::DomId;

/// An event channel port (`evtchn_port_t` in `event_channel.h`).
pub type EvtchnPort = u32;

/// Errors of the `event_channel` module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventChannelError {
    /// The port is beyond the channels of the ABI in use.
    #[error(
        "event channel port {port} is out of range (the ABI has {nr_channels} ports, port must be < {nr_channels})"
    )]
    BadPort {
        /// The port.
        port: EvtchnPort,
        /// The number of ports of the ABI.
        nr_channels: u32,
    },
    /// An `evtchn_status.status` that is no `EVTCHNSTAT_*` code.
    #[error("unknown event channel status {status} (EVTCHNSTAT_* codes are 0 to 5)")]
    UnknownStatus {
        /// The status.
        status: u32,
    },
    /// An [`EvtchnOp`] whose `cmd` is not the one of the arguments asked for.
    #[error("evtchn_op has cmd {cmd}, not the EVTCHNOP {expected} of the arguments asked for")]
    WrongCmd {
        /// The `cmd` of the operation.
        cmd: u32,
        /// The `EVTCHNOP_*` of the arguments.
        expected: u32,
    },
}

// ---------------------------------------------------------------------------------------------------------
// Hypercall numbers and arguments
// ---------------------------------------------------------------------------------------------------------

/// Connect to a port of another domain (`EVTCHNOP_bind_interdomain` in `event_channel.h`; arguments
/// [`EvtchnBindInterdomain`]).
pub const EVTCHNOP_bind_interdomain: u32 = 0;
/// Bind a virtual IRQ (`EVTCHNOP_bind_virq`; [`EvtchnBindVirq`]).
pub const EVTCHNOP_bind_virq: u32 = 1;
/// Bind a physical IRQ (`EVTCHNOP_bind_pirq`; [`EvtchnBindPirq`]).
pub const EVTCHNOP_bind_pirq: u32 = 2;
/// Close a port (`EVTCHNOP_close`; [`EvtchnClose`]).
pub const EVTCHNOP_close: u32 = 3;
/// Send an event to the remote end (`EVTCHNOP_send`; [`EvtchnSend`]).
pub const EVTCHNOP_send: u32 = 4;
/// Get a port's status (`EVTCHNOP_status`; [`EvtchnStatus`]).
pub const EVTCHNOP_status: u32 = 5;
/// Allocate a port for another domain to connect to (`EVTCHNOP_alloc_unbound`; [`EvtchnAllocUnbound`]).
pub const EVTCHNOP_alloc_unbound: u32 = 6;
/// Bind an inter-vCPU interrupt (`EVTCHNOP_bind_ipi`; [`EvtchnBindIpi`]).
pub const EVTCHNOP_bind_ipi: u32 = 7;
/// Choose the vCPU a port notifies (`EVTCHNOP_bind_vcpu`; [`EvtchnBindVcpu`]).
pub const EVTCHNOP_bind_vcpu: u32 = 8;
/// Unmask a port and deliver a pending event (`EVTCHNOP_unmask`; [`EvtchnUnmask`]).
pub const EVTCHNOP_unmask: u32 = 9;
/// Close all the ports of a domain (`EVTCHNOP_reset`; [`EvtchnReset`]).
pub const EVTCHNOP_reset: u32 = 10;
/// Initialise the FIFO ABI's control block (`EVTCHNOP_init_control`; [`EvtchnInitControl`]).
pub const EVTCHNOP_init_control: u32 = 11;
/// Add a page to the FIFO event array (`EVTCHNOP_expand_array`; [`EvtchnExpandArray`]).
pub const EVTCHNOP_expand_array: u32 = 12;
/// Set a port's FIFO priority (`EVTCHNOP_set_priority`; [`EvtchnSetPriority`]).
pub const EVTCHNOP_set_priority: u32 = 13;

/// The argument structure of an `EVTCHNOP_*` operation, and the operation's number.
pub trait EventChannelOp: FromBytes + IntoBytes + Immutable + Copy {
    /// The `EVTCHNOP_*` number.
    const CMD: u32;
}

/// An argument structure that is a member of the union in [`EvtchnOp`] (the operations before
/// `EVTCHNOP_reset`).
pub trait CompatEventChannelOp: EventChannelOp {}

macro_rules! evtchn_op {
    ($($ty:ty => $cmd:ident $(, $compat:ident)?;)*) => {
        $(
            impl EventChannelOp for $ty {
                const CMD: u32 = $cmd;
            }
            $(
                impl CompatEventChannelOp for $ty {}
                const _: () = assert!(
                    size_of::<$ty>() <= EVTCHN_OP_ARGS_SIZE,
                    concat!(stringify!($ty), " is too big for the union of evtchn_op (", stringify!($compat), ")")
                );
            )?
        )*
    };
}

/// `EVTCHNOP_alloc_unbound` arguments (`struct evtchn_alloc_unbound` in `event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnAllocUnbound {
    /// IN: the domain in which to allocate the port (`DOMID_SELF` for an unprivileged caller).
    pub dom: DomId,
    /// IN: the domain allowed to connect to it.
    pub remote_dom: DomId,
    /// OUT: the port.
    pub port: EvtchnPort,
}

/// `EVTCHNOP_bind_interdomain` arguments (`struct evtchn_bind_interdomain` in `event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnBindInterdomain {
    /// IN: the remote domain.
    pub remote_dom: DomId,
    _pad0: [u8; 2],
    /// IN: the remote, unbound port.
    pub remote_port: EvtchnPort,
    /// OUT: the new local port.
    pub local_port: EvtchnPort,
}

impl EvtchnBindInterdomain {
    /// A request with zero OUT field and padding.
    pub const fn new(remote_dom: DomId, remote_port: EvtchnPort) -> Self {
        Self {
            remote_dom,
            _pad0: [0; 2],
            remote_port,
            local_port: 0,
        }
    }
}

/// `EVTCHNOP_bind_virq` arguments (`struct evtchn_bind_virq` in `event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnBindVirq {
    /// IN: the virtual IRQ (`VIRQ_*` of `xen.h`).
    pub virq: u32,
    /// IN: the vCPU.
    pub vcpu: u32,
    /// OUT: the port.
    pub port: EvtchnPort,
}

/// Flag of [`EvtchnBindPirq::flags`]: the IRQ may be shared (`BIND_PIRQ__WILL_SHARE` in
/// `event_channel.h`).
pub const BIND_PIRQ__WILL_SHARE: u32 = 1;

/// `EVTCHNOP_bind_pirq` arguments (`struct evtchn_bind_pirq` in `event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnBindPirq {
    /// IN: the physical IRQ.
    pub pirq: u32,
    /// IN: `BIND_PIRQ__*`.
    pub flags: u32,
    /// OUT: the port.
    pub port: EvtchnPort,
}

/// `EVTCHNOP_bind_ipi` arguments (`struct evtchn_bind_ipi` in `event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnBindIpi {
    /// IN: the vCPU to notify.
    pub vcpu: u32,
    /// OUT: the port.
    pub port: EvtchnPort,
}

/// `EVTCHNOP_close` arguments (`struct evtchn_close` in `event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnClose {
    /// IN: the local port.
    pub port: EvtchnPort,
}

/// `EVTCHNOP_send` arguments (`struct evtchn_send` in `event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnSend {
    /// IN: the local port, whose remote end is notified.
    pub port: EvtchnPort,
}

/// [`EvtchnStatus::status`]: the channel is not in use (`EVTCHNSTAT_closed` in `event_channel.h`).
pub const EVTCHNSTAT_closed: u32 = 0;
/// The channel waits for an interdomain connection (`EVTCHNSTAT_unbound`).
pub const EVTCHNSTAT_unbound: u32 = 1;
/// The channel is connected to a remote domain (`EVTCHNSTAT_interdomain`).
pub const EVTCHNSTAT_interdomain: u32 = 2;
/// The channel is bound to a physical IRQ (`EVTCHNSTAT_pirq`).
pub const EVTCHNSTAT_pirq: u32 = 3;
/// The channel is bound to a virtual IRQ (`EVTCHNSTAT_virq`).
pub const EVTCHNSTAT_virq: u32 = 4;
/// The channel is bound to an inter-vCPU interrupt (`EVTCHNSTAT_ipi`).
pub const EVTCHNSTAT_ipi: u32 = 5;

/// The union `u` of `struct evtchn_status` in `event_channel.h`: `unbound.dom`, `interdomain.dom` and
/// `interdomain.port`, `pirq` or `virq`, according to the status.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnStatusU {
    raw: [u32; 2],
}

/// The `interdomain` member of the union in `struct evtchn_status` (`event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnStatusInterdomain {
    /// The remote domain.
    pub dom: DomId,
    _pad0: [u8; 2],
    /// The remote port.
    pub port: EvtchnPort,
}

impl EvtchnStatusInterdomain {
    /// The member with zero padding.
    pub const fn new(dom: DomId, port: EvtchnPort) -> Self {
        Self {
            dom,
            _pad0: [0; 2],
            port,
        }
    }
}

impl EvtchnStatusU {
    /// The union with every byte zero.
    pub const fn zeroed() -> Self {
        Self { raw: [0; 2] }
    }

    /// The union holding `unbound.dom`; the other bytes are zero.
    pub fn unbound(dom: DomId) -> Self {
        let d = dom.to_ne_bytes();
        Self {
            raw: [u32::from_ne_bytes([d[0], d[1], 0, 0]), 0],
        }
    }

    /// The union holding `interdomain`.
    pub fn interdomain(dom: DomId, port: EvtchnPort) -> Self {
        zerocopy::transmute!(EvtchnStatusInterdomain::new(dom, port))
    }

    /// The union holding `pirq` (or `virq`, at the same place); the other bytes are zero.
    pub const fn irq(irq: u32) -> Self {
        Self { raw: [irq, 0] }
    }

    /// `unbound.dom`.
    pub fn unbound_dom(self) -> DomId {
        let b = self.raw[0].to_ne_bytes();
        u16::from_ne_bytes([b[0], b[1]])
    }

    /// The `interdomain` member.
    pub fn as_interdomain(self) -> EvtchnStatusInterdomain {
        zerocopy::transmute!(self)
    }

    /// `pirq` or `virq` (the same bytes).
    pub const fn as_irq(self) -> u32 {
        self.raw[0]
    }
}

/// `EVTCHNOP_status` arguments (`struct evtchn_status` in `event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnStatus {
    /// IN: the domain (`DOMID_SELF` for an unprivileged caller).
    pub dom: DomId,
    _pad0: [u8; 2],
    /// IN: the port.
    pub port: EvtchnPort,
    /// OUT: `EVTCHNSTAT_*`.
    pub status: u32,
    /// OUT: the vCPU the channel is bound to.
    pub vcpu: u32,
    /// OUT: details, according to `status`.
    pub u: EvtchnStatusU,
}

/// A decoded [`EvtchnStatus`]: the `EVTCHNSTAT_*` code with the union member that goes with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EvtchnStatusKind {
    /// [`EVTCHNSTAT_closed`].
    Closed,
    /// [`EVTCHNSTAT_unbound`], waiting for domain `dom`.
    Unbound {
        /// The domain allowed to connect.
        dom: DomId,
    },
    /// [`EVTCHNSTAT_interdomain`], connected to port `port` of domain `dom`.
    Interdomain {
        /// The remote domain.
        dom: DomId,
        /// The remote port.
        port: EvtchnPort,
    },
    /// [`EVTCHNSTAT_pirq`], bound to a physical IRQ.
    Pirq(u32),
    /// [`EVTCHNSTAT_virq`], bound to a virtual IRQ.
    Virq(u32),
    /// [`EVTCHNSTAT_ipi`].
    Ipi,
}

impl EvtchnStatus {
    /// A request for the status of `port` of `dom`, with zero OUT fields and padding.
    pub const fn new(dom: DomId, port: EvtchnPort) -> Self {
        Self {
            dom,
            _pad0: [0; 2],
            port,
            status: 0,
            vcpu: 0,
            u: EvtchnStatusU::zeroed(),
        }
    }

    /// The answer to a request for `port` of `dom`: the status, the vCPU and the union member for
    /// `kind`, with every other byte zero.
    pub fn answer(dom: DomId, port: EvtchnPort, vcpu: u32, kind: EvtchnStatusKind) -> Self {
        let (status, u) = match kind {
            EvtchnStatusKind::Closed => (EVTCHNSTAT_closed, EvtchnStatusU::zeroed()),
            EvtchnStatusKind::Unbound { dom } => (EVTCHNSTAT_unbound, EvtchnStatusU::unbound(dom)),
            EvtchnStatusKind::Interdomain { dom, port } => (
                EVTCHNSTAT_interdomain,
                EvtchnStatusU::interdomain(dom, port),
            ),
            EvtchnStatusKind::Pirq(pirq) => (EVTCHNSTAT_pirq, EvtchnStatusU::irq(pirq)),
            EvtchnStatusKind::Virq(virq) => (EVTCHNSTAT_virq, EvtchnStatusU::irq(virq)),
            EvtchnStatusKind::Ipi => (EVTCHNSTAT_ipi, EvtchnStatusU::zeroed()),
        };
        Self {
            dom,
            _pad0: [0; 2],
            port,
            status,
            vcpu,
            u,
        }
    }

    /// Decodes `status` and the union member that goes with it.
    pub fn kind(&self) -> Result<EvtchnStatusKind, EventChannelError> {
        Ok(match self.status {
            EVTCHNSTAT_closed => EvtchnStatusKind::Closed,
            EVTCHNSTAT_unbound => EvtchnStatusKind::Unbound {
                dom: self.u.unbound_dom(),
            },
            EVTCHNSTAT_interdomain => {
                let i = self.u.as_interdomain();
                EvtchnStatusKind::Interdomain {
                    dom: i.dom,
                    port: i.port,
                }
            }
            EVTCHNSTAT_pirq => EvtchnStatusKind::Pirq(self.u.as_irq()),
            EVTCHNSTAT_virq => EvtchnStatusKind::Virq(self.u.as_irq()),
            EVTCHNSTAT_ipi => EvtchnStatusKind::Ipi,
            status => return Err(EventChannelError::UnknownStatus { status }),
        })
    }
}

/// `EVTCHNOP_bind_vcpu` arguments (`struct evtchn_bind_vcpu` in `event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnBindVcpu {
    /// IN: the port.
    pub port: EvtchnPort,
    /// IN: the vCPU to notify.
    pub vcpu: u32,
}

/// `EVTCHNOP_unmask` arguments (`struct evtchn_unmask` in `event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnUnmask {
    /// IN: the local port.
    pub port: EvtchnPort,
}

/// `EVTCHNOP_reset` arguments (`struct evtchn_reset` in `event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnReset {
    /// IN: the domain (`DOMID_SELF` for an unprivileged caller).
    pub dom: DomId,
}

/// `EVTCHNOP_init_control` arguments (`struct evtchn_init_control` in `event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnInitControl {
    /// IN: the frame of the control block.
    pub control_gfn: u64,
    /// IN: the offset of the control block in the frame.
    pub offset: u32,
    /// IN: the vCPU.
    pub vcpu: u32,
    /// OUT: the number of bits of a link in an event word.
    pub link_bits: u8,
    /// Unused (`_pad`).
    pub _pad: [u8; 7],
}

impl EvtchnInitControl {
    /// A request with zero OUT field and padding.
    pub const fn new(control_gfn: u64, offset: u32, vcpu: u32) -> Self {
        Self {
            control_gfn,
            offset,
            vcpu,
            link_bits: 0,
            _pad: [0; 7],
        }
    }
}

/// `EVTCHNOP_expand_array` arguments (`struct evtchn_expand_array` in `event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnExpandArray {
    /// IN: the frame to add to the event array.
    pub array_gfn: u64,
}

/// `EVTCHNOP_set_priority` arguments (`struct evtchn_set_priority` in `event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnSetPriority {
    /// IN: the port.
    pub port: EvtchnPort,
    /// IN: the priority, `EVTCHN_FIFO_PRIORITY_MAX` (0) to `EVTCHN_FIFO_PRIORITY_MIN` (15).
    pub priority: u32,
}

/// The size of the union in [`EvtchnOp`]: that of its largest member, [`EvtchnStatus`]. (No C
/// counterpart.)
pub const EVTCHN_OP_ARGS_SIZE: usize = size_of::<EvtchnStatus>();

/// The argument of the compatibility hypercall `event_channel_op_compat`, superseded since Xen 3.2: a
/// command and the union of the arguments of the first ten operations (`struct evtchn_op` in
/// `event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnOp {
    /// `EVTCHNOP_*`.
    pub cmd: u32,
    /// The arguments of `cmd`, then zeros.
    pub u: [u8; EVTCHN_OP_ARGS_SIZE],
}

impl EvtchnOp {
    /// The operation that carries `args`; the bytes of the union after them are zero.
    pub fn new<A: CompatEventChannelOp>(args: A) -> Self {
        let mut u = [0u8; EVTCHN_OP_ARGS_SIZE];
        for (dst, src) in u.iter_mut().zip(args.as_bytes()) {
            *dst = *src;
        }
        Self { cmd: A::CMD, u }
    }

    /// The arguments, if `cmd` is `A`'s operation.
    pub fn args<A: CompatEventChannelOp>(&self) -> Result<A, EventChannelError> {
        let wrong = EventChannelError::WrongCmd {
            cmd: self.cmd,
            expected: A::CMD,
        };
        if self.cmd != A::CMD {
            return Err(wrong);
        }
        // Cannot fail: every member of the union fits in it (checked at compile time below).
        A::read_from_prefix(&self.u)
            .map(|(args, _)| args)
            .map_err(|_| wrong)
    }
}

evtchn_op! {
    EvtchnAllocUnbound => EVTCHNOP_alloc_unbound, compat;
    EvtchnBindInterdomain => EVTCHNOP_bind_interdomain, compat;
    EvtchnBindVirq => EVTCHNOP_bind_virq, compat;
    EvtchnBindPirq => EVTCHNOP_bind_pirq, compat;
    EvtchnBindIpi => EVTCHNOP_bind_ipi, compat;
    EvtchnClose => EVTCHNOP_close, compat;
    EvtchnSend => EVTCHNOP_send, compat;
    EvtchnStatus => EVTCHNOP_status, compat;
    EvtchnBindVcpu => EVTCHNOP_bind_vcpu, compat;
    EvtchnUnmask => EVTCHNOP_unmask, compat;
    EvtchnReset => EVTCHNOP_reset;
    EvtchnInitControl => EVTCHNOP_init_control;
    EvtchnExpandArray => EVTCHNOP_expand_array;
    EvtchnSetPriority => EVTCHNOP_set_priority;
}

// ---------------------------------------------------------------------------------------------------------
// FIFO ABI
// ---------------------------------------------------------------------------------------------------------

/// The highest FIFO priority (`EVTCHN_FIFO_PRIORITY_MAX` in `event_channel.h`).
pub const EVTCHN_FIFO_PRIORITY_MAX: u32 = 0;
/// The default FIFO priority (`EVTCHN_FIFO_PRIORITY_DEFAULT`).
pub const EVTCHN_FIFO_PRIORITY_DEFAULT: u32 = 7;
/// The lowest FIFO priority (`EVTCHN_FIFO_PRIORITY_MIN`).
pub const EVTCHN_FIFO_PRIORITY_MIN: u32 = 15;
/// The number of FIFO queues, one per priority (`EVTCHN_FIFO_MAX_QUEUES`).
pub const EVTCHN_FIFO_MAX_QUEUES: usize = EVTCHN_FIFO_PRIORITY_MIN as usize + 1;

/// An entry of the FIFO event array (`event_word_t` in `event_channel.h`).
pub type EventWord = u32;

/// Bit number of the pending bit of an [`EventWord`] (`EVTCHN_FIFO_PENDING`).
pub const EVTCHN_FIFO_PENDING: u32 = 31;
/// Bit number of the masked bit (`EVTCHN_FIFO_MASKED`).
pub const EVTCHN_FIFO_MASKED: u32 = 30;
/// Bit number of the linked bit (`EVTCHN_FIFO_LINKED`).
pub const EVTCHN_FIFO_LINKED: u32 = 29;
/// Bit number of the busy bit (`EVTCHN_FIFO_BUSY`).
pub const EVTCHN_FIFO_BUSY: u32 = 28;
/// The number of bits of the link to the next event (`EVTCHN_FIFO_LINK_BITS`).
pub const EVTCHN_FIFO_LINK_BITS: u32 = 17;
/// The link bits of an [`EventWord`] (`EVTCHN_FIFO_LINK_MASK`).
pub const EVTCHN_FIFO_LINK_MASK: EventWord = (1 << EVTCHN_FIFO_LINK_BITS) - 1;
/// The number of ports of the FIFO ABI (`EVTCHN_FIFO_NR_CHANNELS`).
pub const EVTCHN_FIFO_NR_CHANNELS: u32 = 1 << EVTCHN_FIFO_LINK_BITS;

/// The per-vCPU control block of the FIFO ABI (`struct evtchn_fifo_control_block` in
/// `event_channel.h`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EvtchnFifoControlBlock {
    /// One bit per queue with events ready.
    pub ready: u32,
    /// Reserved (`_rsvd`).
    pub _rsvd: u32,
    /// The head of each queue.
    pub head: [EventWord; EVTCHN_FIFO_MAX_QUEUES],
}

// ---------------------------------------------------------------------------------------------------------
// 2-level ABI
// ---------------------------------------------------------------------------------------------------------

/// The number of ports of the 2-level ABI on x86_64: `sizeof(xen_ulong_t)^2 * 64` = 4096
/// (`EVTCHN_2L_NR_CHANNELS` in `event_channel.h`).
pub const EVTCHN_2L_NR_CHANNELS: u32 = 64 * 64;

/// The bits in one word of the 2-level bitmaps (`BITS_PER_EVTCHN_WORD` in Xen; no public C counterpart).
pub const BITS_PER_EVTCHN_WORD: u32 = u64::BITS;

/// The number of words in each 2-level bitmap, `evtchn_pending` and `evtchn_mask` of `shared_info`
/// (`sizeof(xen_ulong_t) * 8`; no named C counterpart).
pub const EVTCHN_2L_NR_WORDS: usize = (EVTCHN_2L_NR_CHANNELS / BITS_PER_EVTCHN_WORD) as usize;

#[cfg(target_has_atomic = "64")]
pub use two_level::*;

#[cfg(target_has_atomic = "64")]
mod two_level {
    use core::sync::atomic::{AtomicU8, AtomicU64, Ordering::SeqCst};

    use super::{
        BITS_PER_EVTCHN_WORD, EVTCHN_2L_NR_CHANNELS, EVTCHN_2L_NR_WORDS, EventChannelError,
        EvtchnPort,
    };

    /// The bitmaps of the 2-level ABI: `evtchn_pending` and `evtchn_mask` of `shared_info`, as atomics.
    ///
    /// Both sides use them at once: the hypervisor (or whoever plays it) sets pending bits and reads
    /// masks; the guest sets and clears masks and takes pending bits. Every access is one atomic
    /// read-modify-write or load (`SeqCst`), like Xen's `guest_test_and_set_bit` and friends.
    ///
    /// The words may live anywhere: in a live `shared_info` page, the code that maps the page provides the
    /// atomics (for example with zerocopy's `mut_from_bytes`, `AtomicU64` being `FromBytes`).
    ///
    /// ```
    /// use core::sync::atomic::{AtomicU8, AtomicU64};
    /// use xen_abi::event_channel::{EVTCHN_2L_NR_WORDS, Notify, TwoLevel, VcpuEvents};
    ///
    /// let pending: [AtomicU64; EVTCHN_2L_NR_WORDS] = core::array::from_fn(|_| AtomicU64::new(0));
    /// let mask: [AtomicU64; EVTCHN_2L_NR_WORDS] = core::array::from_fn(|_| AtomicU64::new(0));
    /// let (sel, upcall) = (AtomicU64::new(0), AtomicU8::new(0));
    /// let vcpu = VcpuEvents { pending_sel: &sel, upcall_pending: &upcall };
    /// let events = TwoLevel::new(&pending, &mask);
    ///
    /// // The hypervisor's side: send, and kick the vCPU if told to.
    /// assert_eq!(events.send(70, &vcpu), Ok(Notify::Upcall));
    /// assert_eq!(events.send(70, &vcpu), Ok(Notify::AlreadyPending));
    /// // The guest's side, in its upcall handler: at most 64 ports this time.
    /// let ports: Vec<u32> = events.scan(vcpu, 64).collect();
    /// assert_eq!(ports, [70]);
    /// ```
    #[derive(Clone, Copy, Debug)]
    pub struct TwoLevel<'a> {
        pending: &'a [AtomicU64; EVTCHN_2L_NR_WORDS],
        mask: &'a [AtomicU64; EVTCHN_2L_NR_WORDS],
    }

    /// What a vCPU has of the 2-level ABI in its `vcpu_info`: the selector of pending words
    /// (`evtchn_pending_sel`) and the upcall flag (`evtchn_upcall_pending`).
    #[derive(Clone, Copy, Debug)]
    pub struct VcpuEvents<'a> {
        /// `evtchn_pending_sel`: bit `w` is set when word `w` of `evtchn_pending` may hold events.
        pub pending_sel: &'a AtomicU64,
        /// `evtchn_upcall_pending`: bit 0 is set when the vCPU has an upcall to take.
        pub upcall_pending: &'a AtomicU8,
    }

    /// What [`TwoLevel::send`] or [`TwoLevel::unmask`] did, and whether the caller must deliver an upcall
    /// (kick the vCPU, as Xen's `vcpu_mark_events_pending` does).
    #[must_use]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Notify {
        /// `send`: the port was pending already; nothing changed.
        AlreadyPending,
        /// `send`: the port is now pending but masked; `unmask` will deliver it.
        Masked,
        /// `unmask`: the port was not masked; nothing changed.
        WasNotMasked,
        /// `unmask`: the port is unmasked and not pending.
        NotPending,
        /// The selector bit of the port's word was set already: the guest will find the port when it
        /// scans that word.
        SelectorAlreadySet,
        /// The selector bit is newly set, but an upcall was pending already.
        UpcallAlreadyPending,
        /// The selector bit and the upcall flag are newly set: the caller must deliver an upcall.
        Upcall,
    }

    impl Notify {
        /// Whether the caller must deliver an upcall to the vCPU.
        pub const fn upcall_required(self) -> bool {
            matches!(self, Self::Upcall)
        }
    }

    fn locate(port: EvtchnPort) -> Result<(usize, u64), EventChannelError> {
        if port >= EVTCHN_2L_NR_CHANNELS {
            return Err(EventChannelError::BadPort {
                port,
                nr_channels: EVTCHN_2L_NR_CHANNELS,
            });
        }
        let word = (port / BITS_PER_EVTCHN_WORD) as usize;
        Ok((word, 1u64 << (port % BITS_PER_EVTCHN_WORD)))
    }

    impl<'a> TwoLevel<'a> {
        /// The bitmaps over `evtchn_pending` and `evtchn_mask`.
        pub const fn new(
            pending: &'a [AtomicU64; EVTCHN_2L_NR_WORDS],
            mask: &'a [AtomicU64; EVTCHN_2L_NR_WORDS],
        ) -> Self {
            Self { pending, mask }
        }

        fn word(
            bitmap: &'a [AtomicU64; EVTCHN_2L_NR_WORDS],
            port: EvtchnPort,
        ) -> Result<(&'a AtomicU64, u64), EventChannelError> {
            let (word, bit) = locate(port)?;
            let nr_channels = EVTCHN_2L_NR_CHANNELS;
            let w = bitmap
                .get(word)
                .ok_or(EventChannelError::BadPort { port, nr_channels })?;
            Ok((w, bit))
        }

        /// Sets the pending bit of `port` (test-and-set); returns whether it was newly set. This alone
        /// notifies nobody: see [`send`](Self::send).
        pub fn set_pending(&self, port: EvtchnPort) -> Result<bool, EventChannelError> {
            let (w, bit) = Self::word(self.pending, port)?;
            Ok(w.fetch_or(bit, SeqCst) & bit == 0)
        }

        /// Clears the pending bit of `port`; returns whether it was set.
        pub fn clear_pending(&self, port: EvtchnPort) -> Result<bool, EventChannelError> {
            let (w, bit) = Self::word(self.pending, port)?;
            Ok(w.fetch_and(!bit, SeqCst) & bit != 0)
        }

        /// Whether `port` is pending.
        pub fn is_pending(&self, port: EvtchnPort) -> Result<bool, EventChannelError> {
            let (w, bit) = Self::word(self.pending, port)?;
            Ok(w.load(SeqCst) & bit != 0)
        }

        /// Masks `port`; returns whether it was newly masked.
        pub fn mask(&self, port: EvtchnPort) -> Result<bool, EventChannelError> {
            let (w, bit) = Self::word(self.mask, port)?;
            Ok(w.fetch_or(bit, SeqCst) & bit == 0)
        }

        /// Whether `port` is masked.
        pub fn is_masked(&self, port: EvtchnPort) -> Result<bool, EventChannelError> {
            let (w, bit) = Self::word(self.mask, port)?;
            Ok(w.load(SeqCst) & bit != 0)
        }

        /// Sets the selector bit of `port`'s word and then the upcall flag, each only if the previous
        /// step changed something.
        fn mark(vcpu: &VcpuEvents<'_>, port: EvtchnPort) -> Notify {
            let sel_bit = 1u64 << (port / BITS_PER_EVTCHN_WORD);
            if vcpu.pending_sel.fetch_or(sel_bit, SeqCst) & sel_bit != 0 {
                Notify::SelectorAlreadySet
            } else if vcpu.upcall_pending.fetch_or(1, SeqCst) & 1 != 0 {
                Notify::UpcallAlreadyPending
            } else {
                Notify::Upcall
            }
        }

        /// Sends an event on `port` to `vcpu`, as Xen's `evtchn_2l_set_pending`: sets the pending bit;
        /// if it was not set before and the port is not masked, sets the selector bit of the port's word
        /// and, if that was newly set, the upcall flag.
        pub fn send(
            &self,
            port: EvtchnPort,
            vcpu: &VcpuEvents<'_>,
        ) -> Result<Notify, EventChannelError> {
            if !self.set_pending(port)? {
                return Ok(Notify::AlreadyPending);
            }
            if self.is_masked(port)? {
                return Ok(Notify::Masked);
            }
            Ok(Self::mark(vcpu, port))
        }

        /// Unmasks `port`, as Xen's `evtchn_2l_unmask` (and a guest's local unmask): clears the mask bit;
        /// if it was set and the port is pending, sets the selector bit of the port's word and, if that
        /// was newly set, the upcall flag.
        pub fn unmask(
            &self,
            port: EvtchnPort,
            vcpu: &VcpuEvents<'_>,
        ) -> Result<Notify, EventChannelError> {
            let (w, bit) = Self::word(self.mask, port)?;
            if w.fetch_and(!bit, SeqCst) & bit == 0 {
                return Ok(Notify::WasNotMasked);
            }
            if !self.is_pending(port)? {
                return Ok(Notify::NotPending);
            }
            Ok(Self::mark(vcpu, port))
        }

        /// The guest's scan, as its upcall handler does it: clears the upcall flag, takes the selector
        /// word (swapping in 0), and then, for each word it names in order, takes the pending and
        /// unmasked ports one by one (clearing each pending bit as it is yielded, so each event is
        /// acknowledged exactly once).
        ///
        /// The work is bounded whatever the other side does meanwhile: one pass visits each word named by
        /// the selector once and each bit that was pending and unmasked when the word was first read at
        /// most once (at most 4096 ports), and at most `max_ports` ports are yielded. Events sent during
        /// the pass set the selector again and are found by the next scan. If the scan stops early
        /// (budget spent, or the iterator dropped), the words it has not finished are put back in the
        /// selector and the upcall flag is set again, so nothing is lost.
        pub fn scan(&self, vcpu: VcpuEvents<'a>, max_ports: usize) -> Scan<'a> {
            vcpu.upcall_pending.store(0, SeqCst);
            let sel = vcpu.pending_sel.swap(0, SeqCst);
            Scan {
                bitmaps: *self,
                vcpu,
                sel,
                word: None,
                budget: max_ports,
            }
        }
    }

    /// The ports found by one [`TwoLevel::scan`], in increasing order.
    #[derive(Debug)]
    pub struct Scan<'a> {
        bitmaps: TwoLevel<'a>,
        vcpu: VcpuEvents<'a>,
        /// The selector bits of the words not finished yet (including the current one).
        sel: u64,
        /// The current word and the candidate bits left in it.
        word: Option<(usize, u64)>,
        budget: usize,
    }

    impl Scan<'_> {
        /// Whether the pass has visited every word that the selector named.
        pub fn is_complete(&self) -> bool {
            self.sel == 0
        }
    }

    impl Iterator for Scan<'_> {
        type Item = EvtchnPort;

        fn next(&mut self) -> Option<EvtchnPort> {
            // Each turn removes one candidate bit or one word: at most 64 * 65 turns per pass.
            while self.budget > 0 {
                let Some((index, bits)) = self.word else {
                    if self.sel == 0 {
                        return None;
                    }
                    let index = self.sel.trailing_zeros() as usize;
                    let (Some(pending), Some(mask)) = (
                        self.bitmaps.pending.get(index),
                        self.bitmaps.mask.get(index),
                    ) else {
                        self.sel &= !(1u64 << index);
                        continue;
                    };
                    self.word = Some((index, pending.load(SeqCst) & !mask.load(SeqCst)));
                    continue;
                };
                if bits == 0 {
                    self.sel &= !(1u64 << index);
                    self.word = None;
                    continue;
                }
                let b = bits.trailing_zeros();
                let bit = 1u64 << b;
                let rest = bits & !bit;
                self.word = Some((index, rest));
                if rest == 0 {
                    self.sel &= !(1u64 << index);
                    self.word = None;
                }
                let Some(pending) = self.bitmaps.pending.get(index) else {
                    continue;
                };
                if pending.fetch_and(!bit, SeqCst) & bit != 0 {
                    self.budget -= 1;
                    // index < 64 and b < 64: the port is < 4096.
                    return Some(index as u32 * BITS_PER_EVTCHN_WORD + b);
                }
            }
            None
        }
    }

    impl Drop for Scan<'_> {
        fn drop(&mut self) {
            if self.sel != 0 {
                self.vcpu.pending_sel.fetch_or(self.sel, SeqCst);
                self.vcpu.upcall_pending.fetch_or(1, SeqCst);
            }
        }
    }
}
