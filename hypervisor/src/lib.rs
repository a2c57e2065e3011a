//! The Blanket hypervisor: Xen x86-64 PV guests on KVM.
