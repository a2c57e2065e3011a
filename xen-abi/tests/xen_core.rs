//! Hostile-input, unit and round-trip tests of the Xen core modules: `hypercall`, `xen`, `sched`,
//! `memory`, `version` and `hvm_start_info`.

use proptest::prelude::*;
use zerocopy::{FromBytes, IntoBytes};

use xen_abi::hvm_start_info::{
    self as hsi, HvmMemmapTableEntry, HvmMemmapType, HvmModlistEntry, HvmStartInfo,
    HvmStartInfoLimits,
};
use xen_abi::hypercall::{
    self as hc, Hypercall, HypercallInvocation, HypercallRegs, MmuUpdate, MmuUpdateOp,
    MmuUpdateType, MmuextCmd, MmuextCmdOp, MmuextOp, MulticallEntry, TrapInfo, UvmFlags, Virq,
};
use xen_abi::memory::{
    self as mem, E820Entry, ReservationLimits, XenAddToPhysmap, XenMapSpace, XenMemOp,
    XenMemoryMap, XenMemoryReservation,
};
use xen_abi::sched::{
    self, SchedOp, SchedPoll, SchedRemoteShutdown, SchedShutdown, ShutdownReason,
};
use xen_abi::version::{self as ver, XenBuildId, XenFeatureInfo, XenFeatures, XenVer};
use xen_abi::xen::{
    self, ConsoleDom0, ConsoleDomU, PvClockScale, SharedInfo, StartInfo, StartInfoConsole,
    VcpuInfo, VcpuTimeInfo, WallClock,
};

// =====================================================================================================
// hypercall
// =====================================================================================================

#[test]
fn unknown_hypercall_numbers_are_rejected() {
    for raw in [11u64, 43, 47, 56, 128, 1 << 32, u64::MAX] {
        assert_eq!(
            Hypercall::try_from(raw),
            Err(hc::Error::UnknownHypercall(raw))
        );
        let regs = HypercallRegs {
            rax: raw,
            ..Default::default()
        };
        assert_eq!(regs.decode(), Err(hc::Error::UnknownHypercall(raw)));
    }
}

#[test]
fn every_defined_hypercall_decodes() {
    assert_eq!(Hypercall::ALL.len(), 42 + 8);
    assert_eq!(Hypercall::try_from(29), Ok(Hypercall::SchedOp));
    assert_eq!(
        Hypercall::try_from(hc::__HYPERVISOR_mca),
        Ok(Hypercall::Arch0)
    );
}

#[test]
fn hypercall_registers_are_in_abi_order() {
    let regs = HypercallRegs {
        rax: 29,
        rdi: 1,
        rsi: 2,
        rdx: 3,
        r10: 4,
        r8: 5,
    };
    assert_eq!(
        regs.decode(),
        Ok(HypercallInvocation {
            call: Hypercall::SchedOp,
            args: [1, 2, 3, 4, 5]
        })
    );
    let mut regs = regs;
    regs.set_result(-22);
    assert_eq!(regs.rax, (-22i64) as u64);
}

#[test]
fn hypercall_page_offsets_are_32_bytes_apart() {
    assert_eq!(hc::hypercall_page_offset(Hypercall::SchedOp), 29 * 32);
    assert_eq!(
        hc::hypercall_at_page_offset(29 * 32),
        Ok(Hypercall::SchedOp)
    );
    assert_eq!(hc::hypercall_at_page_offset(55 * 32), Ok(Hypercall::Arch7));
}

#[test]
fn hypercall_page_offset_inside_an_entry_is_rejected() {
    assert_eq!(
        hc::hypercall_at_page_offset(29 * 32 + 5),
        Err(hc::Error::BadHypercallPageOffset(29 * 32 + 5))
    );
}

#[test]
fn hypercall_page_offset_past_the_page_is_rejected() {
    assert_eq!(
        hc::hypercall_at_page_offset(4096),
        Err(hc::Error::BadHypercallPageOffset(4096))
    );
    assert_eq!(
        hc::hypercall_at_page_offset(u64::MAX),
        Err(hc::Error::BadHypercallPageOffset(u64::MAX))
    );
    // Inside the page but an unused entry.
    assert_eq!(
        hc::hypercall_at_page_offset(11 * 32),
        Err(hc::Error::UnknownHypercall(11))
    );
}

#[test]
fn unknown_virq_is_rejected() {
    for raw in [5u32, 14, 15, 24, u32::MAX] {
        assert_eq!(Virq::try_from(raw), Err(hc::Error::UnknownVirq(raw)));
    }
    assert!(Virq::Timer.is_per_vcpu());
    assert!(!Virq::Console.is_per_vcpu());
}

#[test]
fn mmu_update_command_4_to_7_is_rejected() {
    for cmd in 4u64..8 {
        let u = MmuUpdate {
            ptr: 0x1000 | cmd,
            val: 0,
        };
        assert_eq!(
            u.decode(),
            Err(hc::Error::UnknownMmuUpdateType {
                ptr: 0x1000 | cmd,
                cmd
            })
        );
    }
}

#[test]
fn mmu_update_commands_0_to_3_decode() {
    let u = MmuUpdate {
        ptr: 0xdead_b000 | hc::MMU_PT_UPDATE_PRESERVE_AD,
        val: 7,
    };
    assert_eq!(
        u.decode(),
        Ok(MmuUpdateOp {
            kind: MmuUpdateType::PtUpdatePreserveAd,
            addr: 0xdead_b000,
            val: 7
        })
    );
}

#[test]
fn mmu_update_misaligned_address_is_rejected() {
    assert_eq!(
        MmuUpdate::new(MmuUpdateType::NormalPtUpdate, 0x1004, 0),
        Err(hc::Error::MisalignedMmuUpdateAddress(0x1004))
    );
}

#[test]
fn unknown_mmuext_cmd_is_rejected() {
    for cmd in [14u32, 21, 255, u32::MAX] {
        assert_eq!(
            MmuextOp::new(cmd, 0, 0).decode(),
            Err(hc::Error::UnknownMmuextCmd(cmd))
        );
    }
}

#[test]
fn set_ldt_not_page_aligned_is_rejected() {
    let op = MmuextOp::new(hc::MMUEXT_SET_LDT, 0x1008, 4);
    assert_eq!(op.decode(), Err(hc::Error::LdtNotPageAligned(0x1008)));
}

#[test]
fn set_ldt_with_more_than_8192_entries_is_rejected() {
    let op = MmuextOp::new(hc::MMUEXT_SET_LDT, 0x1000, 8193);
    assert_eq!(op.decode(), Err(hc::Error::LdtTooLarge(8193)));
    // nr_ents is the low 32 bits of the union: the high half is ignored, as Xen reads it.
    let op = MmuextOp::new(hc::MMUEXT_SET_LDT, 0x1000, (1 << 32) | 8192);
    assert_eq!(
        op.decode(),
        Ok(MmuextCmdOp::SetLdt {
            linear_addr: 0x1000,
            nr_ents: 8192
        })
    );
}

#[test]
fn mmuext_ops_take_the_right_union_members() {
    assert_eq!(
        MmuextOp::new(hc::MMUEXT_COPY_PAGE, 10, 20).decode(),
        Ok(MmuextCmdOp::CopyPage {
            mfn: 10,
            src_mfn: 20
        })
    );
    assert_eq!(
        MmuextOp::new(hc::MMUEXT_INVLPG_MULTI, 0x4000, 0x8000).decode(),
        Ok(MmuextCmdOp::InvlpgMulti {
            linear_addr: 0x4000,
            vcpumask: 0x8000
        })
    );
    assert_eq!(
        MmuextOp::new(hc::MMUEXT_PIN_L4_TABLE, 99, 0).decode(),
        Ok(MmuextCmdOp::PinTable { level: 4, mfn: 99 })
    );
}

#[test]
fn mmuext_op_padding_is_zero() {
    let op = MmuextOp::from(MmuextCmdOp::TlbFlushAll);
    assert_eq!(&op.as_bytes()[4..8], &[0; 4]);
}

#[test]
fn trap_info_with_unknown_flag_bits_is_rejected() {
    let t = TrapInfo::new(14, 0x0b, 0xe033, 0xffff_8000_0000_1000);
    assert_eq!(
        t.validate(),
        Err(hc::Error::BadTrapFlags {
            vector: 14,
            flags: 0x0b
        })
    );
    let ok = TrapInfo::new(3, 3 | hc::TI_IF, 0xe033, 0x1000);
    assert_eq!(ok.validate(), Ok(()));
    assert_eq!(ok.dpl(), 3);
    assert!(ok.disables_events());
}

#[test]
fn unterminated_trap_table_is_rejected() {
    let table = [TrapInfo::new(0, 0, 0xe033, 0x1000); 256];
    assert_eq!(
        hc::trap_table_entries(&table),
        Err(hc::Error::UnterminatedTrapTable(256))
    );
}

#[test]
fn trap_table_stops_at_the_terminator() {
    let mut table = [TrapInfo::new(0, 0, 0xe033, 0x1000); 4];
    table[2] = TrapInfo::new(0, 0, 0, 0);
    table[3] = TrapInfo::new(0, 0xff, 0, 0x1000); // after the terminator: never looked at
    assert_eq!(hc::trap_table_entries(&table).map(<[TrapInfo]>::len), Ok(2));
}

#[test]
fn uvmf_flush_type_3_is_rejected() {
    assert_eq!(UvmFlags::decode(3), Err(hc::Error::BadUvmFlushType(3)));
    assert_eq!(
        UvmFlags::decode(hc::UVMF_INVLPG | hc::UVMF_ALL),
        Ok(UvmFlags {
            flush_type: hc::UVMF_INVLPG,
            vcpumask: None
        })
    );
    assert_eq!(
        UvmFlags::decode(hc::UVMF_TLB_FLUSH | 0x7000),
        Ok(UvmFlags {
            flush_type: hc::UVMF_TLB_FLUSH,
            vcpumask: Some(0x7000)
        })
    );
}

#[test]
fn multicall_entry_with_unknown_op_is_rejected() {
    let e = MulticallEntry {
        op: 47,
        result: 0,
        args: [0; 6],
    };
    assert_eq!(e.hypercall(), Err(hc::Error::UnknownHypercall(47)));
    assert_eq!(
        MulticallEntry::new(Hypercall::MmuUpdate, [0; 6]).hypercall(),
        Ok(Hypercall::MmuUpdate)
    );
}

fn any_mmuext_cmd_op() -> impl Strategy<Value = MmuextCmdOp> {
    let a = any::<u64>();
    prop_oneof![
        (1u8..=4, a).prop_map(|(level, mfn)| MmuextCmdOp::PinTable { level, mfn }),
        a.prop_map(|mfn| MmuextCmdOp::UnpinTable { mfn }),
        a.prop_map(|mfn| MmuextCmdOp::NewBaseptr { mfn }),
        a.prop_map(|mfn| MmuextCmdOp::NewUserBaseptr { mfn }),
        Just(MmuextCmdOp::TlbFlushLocal),
        a.prop_map(|linear_addr| MmuextCmdOp::InvlpgLocal { linear_addr }),
        a.prop_map(|vcpumask| MmuextCmdOp::TlbFlushMulti { vcpumask }),
        (a, a).prop_map(|(linear_addr, vcpumask)| MmuextCmdOp::InvlpgMulti {
            linear_addr,
            vcpumask
        }),
        Just(MmuextCmdOp::TlbFlushAll),
        a.prop_map(|linear_addr| MmuextCmdOp::InvlpgAll { linear_addr }),
        Just(MmuextCmdOp::FlushCache),
        Just(MmuextCmdOp::FlushCacheGlobal),
        (any::<u64>().prop_map(|x| x & !0xfff), 0u32..=8192).prop_map(|(linear_addr, nr_ents)| {
            MmuextCmdOp::SetLdt {
                linear_addr,
                nr_ents,
            }
        }),
        a.prop_map(|mfn| MmuextCmdOp::ClearPage { mfn }),
        (a, a).prop_map(|(mfn, src_mfn)| MmuextCmdOp::CopyPage { mfn, src_mfn }),
        a.prop_map(|mfn| MmuextCmdOp::MarkSuper { mfn }),
        a.prop_map(|mfn| MmuextCmdOp::UnmarkSuper { mfn }),
    ]
}

proptest! {
    #[test]
    fn hypercall_raw_round_trips(raw in prop_oneof![0u64..64, any::<u64>()]) {
        match Hypercall::try_from(raw) {
            Ok(call) => prop_assert_eq!(u64::from(call), raw),
            Err(e) => prop_assert_eq!(e, hc::Error::UnknownHypercall(raw)),
        }
    }

    #[test]
    fn hypercall_enum_round_trips(i in 0usize..50) {
        let call = Hypercall::ALL[i];
        prop_assert_eq!(Hypercall::try_from(call.raw()), Ok(call));
        prop_assert_eq!(hc::hypercall_at_page_offset(hc::hypercall_page_offset(call) as u64), Ok(call));
    }

    #[test]
    fn hypercall_regs_round_trip(i in 0usize..50, args in any::<[u64; 5]>()) {
        let inv = HypercallInvocation { call: Hypercall::ALL[i], args };
        prop_assert_eq!(HypercallRegs::encode(&inv).decode(), Ok(inv));
    }

    #[test]
    fn virq_and_mmuext_cmd_raw_round_trip(raw in 0u32..64) {
        if let Ok(v) = Virq::try_from(raw) { prop_assert_eq!(v.raw(), raw); }
        if let Ok(c) = MmuextCmd::try_from(raw) { prop_assert_eq!(c.raw(), raw); }
    }

    #[test]
    fn mmu_update_op_round_trips(kind in 0u64..4, addr in any::<u64>(), val in any::<u64>()) {
        let op = MmuUpdateOp { kind: MmuUpdateType::try_from(kind).unwrap(), addr: addr & !7, val };
        let u = MmuUpdate::from(op);
        prop_assert_eq!(u.decode(), Ok(op));
        prop_assert_eq!(MmuUpdate::read_from_bytes(u.as_bytes()), Ok(u));
        prop_assert_eq!(MmuUpdate::new(op.kind, op.addr, val), Ok(u));
    }

    #[test]
    fn mmuext_op_round_trips(op in any_mmuext_cmd_op()) {
        let raw = MmuextOp::from(op);
        prop_assert_eq!(raw.decode(), Ok(op));
        prop_assert_eq!(MmuextOp::read_from_bytes(raw.as_bytes()).unwrap(), raw);
    }

    #[test]
    fn mmuext_decode_never_panics(bytes in any::<[u8; 24]>()) {
        let op = MmuextOp::read_from_bytes(&bytes[..]).unwrap();
        if let Ok(decoded) = op.decode() {
            prop_assert_eq!(MmuextOp::from(decoded).decode(), Ok(decoded));
        }
    }

    #[test]
    fn trap_info_and_multicall_bytes_round_trip(v in any::<u8>(), f in 0u8..8, cs in any::<u16>(),
                                                addr in any::<u64>(), args in any::<[u64; 6]>()) {
        let t = TrapInfo::new(v, f, cs, addr);
        prop_assert_eq!(TrapInfo::read_from_bytes(t.as_bytes()), Ok(t));
        prop_assert_eq!(t.validate(), Ok(()));
        let m = MulticallEntry { op: addr, result: u64::from(cs), args };
        prop_assert_eq!(MulticallEntry::read_from_bytes(m.as_bytes()), Ok(m));
    }
}

// =====================================================================================================
// xen: pvclock, seqlock, shared_info, start_info
// =====================================================================================================

#[test]
fn pvclock_scale_delta_matches_hand_computed_values() {
    // 1 GHz: shift 1, mul 2^31: one tick is one nanosecond.
    assert_eq!(
        xen::pvclock_scale_delta(1_000_000_000, 1 << 31, 1),
        1_000_000_000
    );
    // mul 2^31 is 0.5: 1000 ticks with shift 0 are 500 ns.
    assert_eq!(xen::pvclock_scale_delta(1000, 1 << 31, 0), 500);
    // Shift -2: 1003 >> 2 = 250, times 0.5 = 125.
    assert_eq!(xen::pvclock_scale_delta(1003, 1 << 31, -2), 125);
    // Shift 3: 10 << 3 = 80, times 0xC000_0000 / 2^32 = 0.75: 60.
    assert_eq!(xen::pvclock_scale_delta(10, 0xC000_0000, 3), 60);
    // mul 0xFFFF_FFFF (just under 1): 2^32 ticks become 2^32 - 1 ns.
    assert_eq!(
        xen::pvclock_scale_delta(1 << 32, u32::MAX, 0),
        (1 << 32) - 1
    );
    // Bits above 64 of the shifted delta are lost, as in C; shifts of 64 or more give 0.
    assert_eq!(xen::pvclock_scale_delta(3 << 62, 1 << 31, 1), 1 << 62);
    assert_eq!(xen::pvclock_scale_delta(u64::MAX, u32::MAX, 64), 0);
    assert_eq!(xen::pvclock_scale_delta(u64::MAX, u32::MAX, -128), 0);
    // 3 GHz: shift -1, mul floor(2^33 / 3) = 2863311530.
    let s = PvClockScale::from_tsc_hz(3_000_000_000).unwrap();
    assert_eq!(
        s,
        PvClockScale {
            tsc_to_system_mul: 2_863_311_530,
            tsc_shift: -1
        }
    );
    assert_eq!(s.scale(3_000_000_000), 999_999_999);
    assert_eq!(
        PvClockScale::from_tsc_hz(1_000_000_000),
        Ok(PvClockScale {
            tsc_to_system_mul: 1 << 31,
            tsc_shift: 1
        })
    );
}

#[test]
fn pvclock_system_time_adds_the_scaled_delta() {
    let info = VcpuTimeInfo::new(
        2,
        1_000,
        5_000_000,
        PvClockScale {
            tsc_to_system_mul: 1 << 31,
            tsc_shift: 1,
        },
        xen::XEN_PVCLOCK_TSC_STABLE_BIT,
    );
    let clock = info.snapshot(2).unwrap();
    assert_eq!(clock.system_time_at(1_000), 5_000_000);
    assert_eq!(clock.system_time_at(2_500), 5_001_500);
    assert!(clock.is_tsc_stable());
    assert_eq!(clock.tsc_frequency_hz(), Some(1_000_000_000));
}

#[test]
fn zero_tsc_frequency_is_rejected() {
    assert_eq!(
        PvClockScale::from_tsc_hz(0),
        Err(xen::Error::ZeroTscFrequency)
    );
    assert_eq!(
        PvClockScale {
            tsc_to_system_mul: 0,
            tsc_shift: 0
        }
        .tsc_frequency_hz(),
        None
    );
}

#[test]
fn time_info_with_odd_version_is_rejected() {
    let info = VcpuTimeInfo::new(
        7,
        0,
        0,
        PvClockScale {
            tsc_to_system_mul: 1,
            tsc_shift: 0,
        },
        0,
    );
    assert_eq!(info.snapshot(7), Err(xen::Error::TimeUpdateInProgress(7)));
}

#[test]
fn time_info_changed_during_the_copy_is_rejected() {
    let info = VcpuTimeInfo::new(
        8,
        0,
        0,
        PvClockScale {
            tsc_to_system_mul: 1,
            tsc_shift: 0,
        },
        0,
    );
    assert_eq!(
        info.snapshot(10),
        Err(xen::Error::TimeVersionChanged {
            before: 8,
            after: 10
        })
    );
}

#[test]
fn time_reader_retries_until_consistent() {
    let scale = PvClockScale {
        tsc_to_system_mul: 1 << 31,
        tsc_shift: 1,
    };
    let mut versions = [(3u32, 3u32), (4, 6), (6, 6)].into_iter();
    let clock = xen::read_vcpu_time(5, || {
        let (v, after) = versions.next().unwrap();
        (VcpuTimeInfo::new(v, 10, 20, scale, 0), after)
    })
    .unwrap();
    assert_eq!(clock.version, 6);
    assert_eq!(clock.system_time_at(10), 20);
}

#[test]
fn time_reader_that_never_sees_an_even_version_gives_up() {
    let scale = PvClockScale {
        tsc_to_system_mul: 1,
        tsc_shift: 0,
    };
    let mut calls = 0;
    let r = xen::read_vcpu_time(5, || {
        calls += 1;
        (VcpuTimeInfo::new(9, 0, 0, scale, 0), 9)
    });
    assert_eq!(
        r,
        Err(xen::Error::TimeUnstable {
            attempts: 5,
            last: Some(xen::SeqlockFailure::InProgress(9))
        })
    );
    assert_eq!(calls, 5);
    assert_eq!(
        xen::read_vcpu_time(0, || unreachable!()),
        Err(xen::Error::TimeUnstable {
            attempts: 0,
            last: None
        })
    );
}

#[test]
fn wallclock_is_read_under_its_seqlock() {
    let mut si = SharedInfo::new();
    si.set_wallclock(WallClock {
        sec: 0x1_2345_6789,
        nsec: 42,
    });
    assert_eq!((si.wc_sec, si.wc_sec_hi), (0x2345_6789, 1));
    si.wc_version = 4;
    assert_eq!(
        si.wallclock(4),
        Ok(WallClock {
            sec: 0x1_2345_6789,
            nsec: 42
        })
    );
    assert_eq!(
        si.wallclock(6),
        Err(xen::Error::WallclockVersionChanged {
            before: 4,
            after: 6
        })
    );
    si.wc_version = 5;
    assert_eq!(
        si.wallclock(5),
        Err(xen::Error::WallclockUpdateInProgress(5))
    );
}

#[test]
fn shared_info_vcpu_index_is_bounded() {
    let mut si = SharedInfo::new();
    assert!(si.vcpu(31).is_some());
    assert!(si.vcpu(32).is_none());
    assert!(si.vcpu_mut(usize::MAX).is_none());
    si.vcpu_mut(3).unwrap().evtchn_upcall_pending = 1;
    assert_eq!(si.as_bytes()[3 * 64], 1);
    assert_eq!(size_of::<VcpuInfo>(), 64);
    assert_eq!(size_of::<SharedInfo>(), 3136);
}

#[test]
fn start_info_has_the_x86_64_magic() {
    let si = StartInfo::new();
    assert_eq!(si.magic_str(), b"xen-3.0-x86_64");
    assert_eq!(si.validate(), Ok(()));
    assert_eq!(size_of::<StartInfo>(), 1168);
}

#[test]
fn start_info_with_a_foreign_magic_is_rejected() {
    let mut si = StartInfo::new();
    si.magic[..14].copy_from_slice(b"xen-3.0-x86_32");
    assert_eq!(si.validate(), Err(xen::Error::BadStartInfoMagic(si.magic)));
}

#[test]
fn cmd_line_of_1024_bytes_is_rejected() {
    let mut si = StartInfo::new();
    assert_eq!(
        si.set_cmd_line(&[b'a'; 1024]),
        Err(xen::Error::CmdLineTooLong {
            len: 1024,
            max: 1023
        })
    );
    assert_eq!(si.set_cmd_line(&[b'a'; 1023]), Ok(()));
    assert_eq!(si.cmd_line().map(<[u8]>::len), Ok(1023));
    assert_eq!(si.set_cmd_line(b"console=hvc0"), Ok(()));
    assert_eq!(si.cmd_line(), Ok(&b"console=hvc0"[..]));
    assert!(si.cmd_line.iter().skip(12).all(|&b| b == 0));
}

#[test]
fn cmd_line_with_a_nul_inside_is_rejected() {
    let mut si = StartInfo::new();
    assert_eq!(
        si.set_cmd_line(b"ro\0quiet"),
        Err(xen::Error::CmdLineHasNul(2))
    );
}

#[test]
fn unterminated_cmd_line_is_rejected() {
    let mut si = StartInfo::new();
    si.cmd_line = [b'x'; 1024];
    assert_eq!(si.cmd_line(), Err(xen::Error::CmdLineUnterminated));
    assert_eq!(si.validate(), Err(xen::Error::CmdLineUnterminated));
}

#[test]
fn console_views_sit_on_the_c_offsets() {
    let c = StartInfoConsole::from_domu(ConsoleDomU {
        mfn: 0x1122_3344_5566_7788,
        evtchn: 0xAABB_CCDD,
    });
    let bytes = c.as_bytes();
    assert_eq!(&bytes[0..8], &0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(&bytes[8..12], &0xAABB_CCDDu32.to_le_bytes());
    assert_eq!(&bytes[12..16], &[0; 4]);
    let d = StartInfoConsole::from_dom0(ConsoleDom0 {
        info_off: 0x1234,
        info_size: 0x5678,
    });
    let bytes = d.as_bytes();
    assert_eq!(&bytes[0..4], &0x1234u32.to_le_bytes());
    assert_eq!(&bytes[4..8], &0x5678u32.to_le_bytes());
}

/// The 128-bit reference of `xen.h`'s formula: `((delta << shift) * mul) >> 32` computed as exact
/// products and quotients, for deltas whose shift does not lose bits.
fn pvclock_reference(delta: u64, mul: u32, shift: i8) -> u64 {
    let shifted: u128 = if shift >= 0 {
        u128::from(delta) * (1u128 << shift)
    } else {
        u128::from(delta) / (1u128 << -i32::from(shift))
    };
    ((shifted * u128::from(mul)) / (1u128 << 32)) as u64
}

proptest! {
    #[test]
    fn pvclock_matches_the_128_bit_reference(mul in any::<u32>(), shift in -40i8..=31, raw in any::<u64>()) {
        // Keep `delta << shift` within 64 bits, where the formula is exact.
        let delta = if shift > 0 { raw >> shift } else { raw };
        prop_assert_eq!(xen::pvclock_scale_delta(delta, mul, shift), pvclock_reference(delta, mul, shift));
    }

    #[test]
    fn pvclock_scale_from_frequency_is_accurate(hz in 1u64..=u64::MAX) {
        let s = PvClockScale::from_tsc_hz(hz).unwrap();
        prop_assert!(s.tsc_to_system_mul >= 1 << 31, "mul {} has lost precision", s.tsc_to_system_mul);
        // One second of ticks is one second of nanoseconds, give or take the rounding.
        let ns = s.scale(hz);
        prop_assert!((999_999_997..=1_000_000_000).contains(&ns), "{hz} Hz: 1 s is {ns} ns");
        // The frequency the scale describes is within 2^-30 of `hz`.
        let back = s.tsc_frequency_hz().unwrap();
        prop_assert!(back.abs_diff(hz) <= hz / (1 << 30) + 1, "{hz} Hz came back as {back}");
    }

    #[test]
    fn time_info_bytes_round_trip(v in any::<u32>(), t in any::<u64>(), s in any::<u64>(),
                                  mul in any::<u32>(), shift in any::<i8>(), flags in any::<u8>()) {
        let info = VcpuTimeInfo::new(v, t, s, PvClockScale { tsc_to_system_mul: mul, tsc_shift: shift }, flags);
        prop_assert_eq!(VcpuTimeInfo::read_from_bytes(info.as_bytes()), Ok(info));
        if v % 2 == 0 {
            let clock = info.snapshot(v).unwrap();
            prop_assert_eq!(clock.system_time_at(t), s);
        }
    }

    #[test]
    fn start_info_and_console_round_trip(mfn in any::<u64>(), evtchn in any::<u32>(), off in any::<u32>(),
                                         size in any::<u32>(), line in "[ -~]{0,1023}") {
        let domu = ConsoleDomU { mfn, evtchn };
        prop_assert_eq!(StartInfoConsole::from_domu(domu).domu(), domu);
        let dom0 = ConsoleDom0 { info_off: off, info_size: size };
        prop_assert_eq!(StartInfoConsole::from_dom0(dom0).dom0(), dom0);
        let mut si = StartInfo::new();
        si.console = StartInfoConsole::from_domu(domu);
        si.set_cmd_line(line.as_bytes()).unwrap();
        let copy = StartInfo::read_from_bytes(si.as_bytes()).unwrap();
        prop_assert_eq!(copy, si);
        prop_assert_eq!(copy.cmd_line(), Ok(line.as_bytes()));
        prop_assert_eq!(copy.console.domu(), domu);
    }

    #[test]
    fn shared_info_bytes_round_trip(word in any::<u64>(), i in 0usize..64, v in 0usize..32, sec in any::<u64>()) {
        let mut si = SharedInfo::new();
        si.evtchn_pending[i] = word;
        si.vcpu_info[v].evtchn_pending_sel = word;
        si.set_wallclock(WallClock { sec, nsec: 1 });
        let copy = SharedInfo::read_from_bytes(si.as_bytes()).unwrap();
        prop_assert_eq!(copy.wallclock(copy.wc_version), Ok(WallClock { sec, nsec: 1 }));
        prop_assert!(copy == si);
    }
}

// =====================================================================================================
// sched
// =====================================================================================================

#[test]
fn sched_poll_nr_ports_above_the_limit_is_rejected() {
    let p = SchedPoll::new(0x1000, sched::SCHED_POLL_MAX_PORTS + 1, 0);
    assert_eq!(
        p.validate(sched::SCHED_POLL_MAX_PORTS),
        Err(sched::Error::TooManyPollPorts {
            nr_ports: 129,
            max: 128
        })
    );
    let p = SchedPoll::new(0x1000, u32::MAX, 0);
    assert_eq!(
        p.validate(128),
        Err(sched::Error::TooManyPollPorts {
            nr_ports: u32::MAX,
            max: 128
        })
    );
}

#[test]
fn sched_poll_with_null_ports_is_rejected() {
    assert_eq!(
        SchedPoll::new(0, 3, 0).validate(128),
        Err(sched::Error::NullPollPorts(3))
    );
    assert!(SchedPoll::new(0, 0, 5).validate(128).is_ok());
}

#[test]
fn sched_poll_ports_wrapping_the_address_space_are_rejected() {
    let p = SchedPoll::new(u64::MAX - 7, 4, 0);
    assert_eq!(
        p.validate(128),
        Err(sched::Error::PollPortsOverflow {
            ports: u64::MAX - 7,
            nr_ports: 4
        })
    );
}

#[test]
fn sched_poll_validates_to_a_bounded_request() {
    let r = SchedPoll::new(0x2000, 128, 0).validate(128).unwrap();
    assert_eq!(
        (r.ports, r.nr_ports, r.ports_len, r.timeout),
        (0x2000, 128, 512, None)
    );
}

#[test]
fn unknown_shutdown_reason_is_rejected() {
    for raw in [6u32, 255, u32::MAX] {
        assert_eq!(
            SchedShutdown { reason: raw }.reason(),
            Err(sched::Error::UnknownShutdownReason(raw))
        );
    }
    let mut remote = SchedRemoteShutdown::new(7, ShutdownReason::Crash);
    assert_eq!(remote.reason(), Ok(ShutdownReason::Crash));
    remote.reason = 6;
    assert_eq!(remote.reason(), Err(sched::Error::UnknownShutdownReason(6)));
}

#[test]
fn unknown_sched_op_is_rejected() {
    assert_eq!(SchedOp::try_from(8), Err(sched::Error::UnknownSchedOp(8)));
}

proptest! {
    #[test]
    fn sched_enums_round_trip(raw in 0u32..16) {
        match SchedOp::try_from(raw) {
            Ok(op) => prop_assert_eq!(op.raw(), raw),
            Err(e) => prop_assert_eq!(e, sched::Error::UnknownSchedOp(raw)),
        }
        match ShutdownReason::try_from(raw) {
            Ok(r) => prop_assert_eq!(SchedShutdown::new(r).reason(), Ok(r)),
            Err(e) => prop_assert_eq!(e, sched::Error::UnknownShutdownReason(raw)),
        }
    }

    #[test]
    fn sched_structs_bytes_round_trip(ports in any::<u64>(), n in any::<u32>(), t in any::<u64>(), d in any::<u16>()) {
        let p = SchedPoll::new(ports, n, t);
        prop_assert_eq!(SchedPoll::read_from_bytes(p.as_bytes()), Ok(p));
        prop_assert_eq!(&p.as_bytes()[12..16], &[0u8; 4][..]);
        let r = SchedRemoteShutdown::new(d, ShutdownReason::Reboot);
        prop_assert_eq!(SchedRemoteShutdown::read_from_bytes(r.as_bytes()), Ok(r));
        prop_assert_eq!(&r.as_bytes()[2..4], &[0u8; 2][..]);
    }

    #[test]
    fn sched_poll_validate_never_panics(bytes in any::<[u8; 24]>(), max in any::<u32>()) {
        let p = SchedPoll::read_from_bytes(&bytes[..]).unwrap();
        if let Ok(r) = p.validate(max) {
            prop_assert!(r.nr_ports <= max);
            prop_assert!(r.ports.checked_add(r.ports_len).is_some());
        }
    }
}

// =====================================================================================================
// memory
// =====================================================================================================

const LIMITS: ReservationLimits = ReservationLimits {
    max_extent_order: 9,
    max_nr_extents: 1 << 20,
};

#[test]
fn reservation_extent_order_above_the_limit_is_rejected() {
    let r = XenMemoryReservation::new(0x1000, 1, 10, 0, hc::DOMID_SELF);
    assert_eq!(
        r.validate(&LIMITS),
        Err(mem::Error::ExtentOrderTooLarge {
            extent_order: 10,
            max: 9
        })
    );
    let r = XenMemoryReservation::new(0x1000, 1, u32::MAX, 0, hc::DOMID_SELF);
    assert_eq!(
        r.validate(&LIMITS),
        Err(mem::Error::ExtentOrderTooLarge {
            extent_order: u32::MAX,
            max: 9
        })
    );
}

#[test]
fn reservation_nr_extents_above_the_limit_is_rejected() {
    let r = XenMemoryReservation::new(0x1000, u64::MAX, 0, 0, hc::DOMID_SELF);
    assert_eq!(
        r.validate(&LIMITS),
        Err(mem::Error::TooManyExtents {
            nr_extents: u64::MAX,
            max: 1 << 20
        })
    );
}

#[test]
fn reservation_page_count_overflow_is_rejected() {
    let loose = ReservationLimits {
        max_extent_order: u32::MAX,
        max_nr_extents: u64::MAX,
    };
    let r = XenMemoryReservation::new(0, 2, 63, 0, hc::DOMID_SELF);
    assert_eq!(
        r.validate(&loose),
        Err(mem::Error::PageCountOverflow {
            nr_extents: 2,
            extent_order: 63
        })
    );
    let r = XenMemoryReservation::new(0, 1, 64, 0, hc::DOMID_SELF);
    assert_eq!(
        r.validate(&loose),
        Err(mem::Error::PageCountOverflow {
            nr_extents: 1,
            extent_order: 64
        })
    );
}

#[test]
fn reservation_extent_list_wrapping_the_address_space_is_rejected() {
    let r = XenMemoryReservation::new(u64::MAX - 15, 4, 0, 0, hc::DOMID_SELF);
    assert_eq!(
        r.validate(&LIMITS),
        Err(mem::Error::ExtentListOverflow {
            start: u64::MAX - 15,
            count: 4
        })
    );
}

#[test]
fn reservation_with_unknown_mem_flags_is_rejected() {
    let r = XenMemoryReservation::new(0x1000, 1, 0, 1 << 19, hc::DOMID_SELF);
    assert_eq!(
        r.validate(&LIMITS),
        Err(mem::Error::UnknownMemFlags {
            flags: 1 << 19,
            unknown: 1 << 19
        })
    );
}

#[test]
fn reservation_flags_decode() {
    let flags = mem::xenmemf_address_bits(32)
        | mem::xenmemf_exact_node(2)
        | mem::XENMEMF_populate_on_demand;
    let r = XenMemoryReservation::new(0x1000, 16, 9, flags, hc::DOMID_SELF)
        .validate(&LIMITS)
        .unwrap();
    assert_eq!(r.nr_pages, 16 << 9);
    assert_eq!(r.address_bits, Some(32));
    assert_eq!(r.node, Some(2));
    assert!(r.exact_node && r.populate_on_demand && !r.vnode);
    let r = XenMemoryReservation::new(0, 1, 0, 0, hc::DOMID_SELF)
        .validate(&LIMITS)
        .unwrap();
    assert_eq!((r.address_bits, r.node), (None, None));
}

#[test]
fn unknown_memory_op_is_rejected() {
    for raw in [8u32, 18, 24, 27, 29, u32::MAX] {
        assert_eq!(
            XenMemOp::try_from(raw),
            Err(mem::Error::UnknownMemoryOp(raw))
        );
    }
}

#[test]
fn add_to_physmap_unknown_space_is_rejected() {
    let a = XenAddToPhysmap {
        domid: hc::DOMID_SELF,
        size: 0,
        space: 6,
        idx: 0,
        gpfn: 0,
    };
    assert_eq!(a.validate(), Err(mem::Error::UnknownMapSpace(6)));
}

#[test]
fn add_to_physmap_grant_status_frames_decode() {
    let a = XenAddToPhysmap {
        domid: hc::DOMID_SELF,
        size: 9,
        space: mem::XENMAPSPACE_grant_table,
        idx: mem::XENMAPIDX_grant_table_status | 3,
        gpfn: 0x100,
    };
    let v = a.validate().unwrap();
    assert_eq!(
        (v.space, v.idx, v.grant_status, v.size),
        (XenMapSpace::GrantTable, 3, true, 1)
    );
    let range = XenAddToPhysmap {
        space: mem::XENMAPSPACE_gmfn_range,
        ..a
    };
    assert_eq!(range.validate().unwrap().size, 9);
}

#[test]
fn memory_map_with_too_many_entries_is_rejected() {
    assert_eq!(
        XenMemoryMap::new(129, 0x1000).validate(128),
        Err(mem::Error::TooManyMapEntries {
            nr_entries: 129,
            max: 128
        })
    );
}

#[test]
fn memory_map_with_null_buffer_is_rejected() {
    assert_eq!(
        XenMemoryMap::new(4, 0).validate(128),
        Err(mem::Error::NullMapBuffer(4))
    );
}

#[test]
fn memory_map_buffer_wrapping_the_address_space_is_rejected() {
    assert_eq!(
        XenMemoryMap::new(2, u64::MAX - 20).validate(128),
        Err(mem::Error::MapBufferOverflow {
            buffer: u64::MAX - 20,
            nr_entries: 2
        })
    );
    assert_eq!(XenMemoryMap::new(2, 0x1000).validate(128).unwrap().len, 40);
}

#[test]
fn e820_buffer_too_short_is_rejected() {
    let bytes = [0u8; 39];
    assert!(matches!(
        mem::e820_entries(&bytes, 2, 128),
        Err(mem::Error::E820BufferTooShort {
            len: 39,
            nr_entries: 2
        })
    ));
    assert!(matches!(
        mem::e820_entries(&bytes, u32::MAX, 128),
        Err(mem::Error::TooManyMapEntries {
            nr_entries: u32::MAX,
            max: 128
        })
    ));
}

#[test]
fn e820_entry_ending_past_2_64_is_rejected() {
    let e = E820Entry::new(u64::MAX, 2, 1);
    assert_eq!(
        e.end(),
        Err(mem::Error::E820EntryOverflow {
            addr: u64::MAX,
            size: 2
        })
    );
}

proptest! {
    #[test]
    fn mem_op_and_space_round_trip(raw in 0u32..40) {
        if let Ok(op) = XenMemOp::try_from(raw) { prop_assert_eq!(op.raw(), raw); }
        if let Ok(s) = XenMapSpace::try_from(raw) { prop_assert_eq!(s.raw(), raw); }
    }

    #[test]
    fn reservation_bytes_round_trip(start in any::<u64>(), n in any::<u64>(), order in any::<u32>(),
                                    flags in any::<u32>(), domid in any::<u16>()) {
        let r = XenMemoryReservation::new(start, n, order, flags, domid);
        prop_assert_eq!(XenMemoryReservation::read_from_bytes(r.as_bytes()), Ok(r));
        prop_assert_eq!(&r.as_bytes()[26..32], &[0u8; 6][..]);
        if let Ok(v) = r.validate(&LIMITS) {
            prop_assert!(v.extent_order <= 9 && v.nr_extents <= 1 << 20);
            prop_assert_eq!(v.nr_pages, n << order);
        }
    }

    #[test]
    fn reservation_flags_round_trip(bits in 0u8.., node in 0u8..255, pod in any::<bool>()) {
        let flags = mem::xenmemf_address_bits(bits) | mem::xenmemf_node(node)
            | if pod { mem::XENMEMF_populate_on_demand } else { 0 };
        let v = XenMemoryReservation::new(0, 0, 0, flags, 0).validate(&LIMITS).unwrap();
        prop_assert_eq!(v.address_bits, if bits == 0 { None } else { Some(bits) });
        prop_assert_eq!(v.node, Some(node));
        prop_assert_eq!(v.populate_on_demand, pod);
    }

    #[test]
    fn e820_entries_round_trip(entries in proptest::collection::vec((any::<u64>(), any::<u64>(), 1u32..8), 0..32)) {
        let list: Vec<E820Entry> = entries.iter().map(|&(a, s, t)| E820Entry::new(a, s, t)).collect();
        let bytes: Vec<u8> = list.iter().flat_map(|e| e.as_bytes().to_vec()).collect();
        prop_assert_eq!(bytes.len(), list.len() * mem::E820_ENTRY_SIZE);
        let parsed: Vec<E820Entry> = mem::e820_entries(&bytes, list.len() as u32, 32).unwrap().collect();
        prop_assert_eq!(parsed, list);
    }
}

// =====================================================================================================
// version
// =====================================================================================================

#[test]
fn unknown_xen_version_cmd_is_rejected() {
    assert_eq!(XenVer::try_from(11), Err(ver::Error::UnknownXenVer(11)));
}

#[test]
fn string_that_fills_the_field_is_rejected() {
    assert_eq!(
        ver::c_string::<16>(&[b'x'; 16]),
        Err(ver::Error::StringTooLong {
            len: 16,
            capacity: 16
        })
    );
    assert_eq!(
        ver::c_string::<16>(b"ab\0c"),
        Err(ver::Error::StringHasNul(2))
    );
    let field: ver::XenExtraversion = ver::c_string(b".0-blanket").unwrap();
    assert_eq!(ver::c_string_bytes(&field), b".0-blanket");
}

#[test]
fn feature_submap_index_1_is_rejected() {
    let req = XenFeatureInfo {
        submap_idx: 1,
        submap: 0,
    };
    assert_eq!(
        req.reply(XenFeatures::all()),
        Err(ver::Error::BadSubmapIndex(1))
    );
    let req = XenFeatureInfo {
        submap_idx: 0,
        submap: 0xdead,
    };
    let f = XenFeatures::WRITABLE_PAGE_TABLES | XenFeatures::HVM_SAFE_PVCLOCK;
    assert_eq!(
        req.reply(f),
        Ok(XenFeatureInfo {
            submap_idx: 0,
            submap: (1 << 0) | (1 << 9)
        })
    );
}

#[test]
fn build_id_buffer_too_small_is_rejected() {
    let id = [0xabu8; 20];
    assert_eq!(
        XenBuildId { len: 19 }.reply_len(&id),
        Err(ver::Error::BuildIdBufferTooSmall {
            len: 19,
            needed: 20
        })
    );
    assert_eq!(XenBuildId { len: 20 }.reply_len(&id), Ok(20));
}

#[test]
fn xen_version_value_packs_major_and_minor() {
    assert_eq!(ver::xen_version_value(4, 17), 0x0004_0011);
    assert_eq!(ver::split_xen_version(0x0004_0011), (4, 17));
}

proptest! {
    #[test]
    fn c_string_round_trips(s in proptest::collection::vec(1u8..=255, 0..64)) {
        let field: [u8; 64] = match ver::c_string(&s) {
            Ok(f) => f,
            Err(e) => {
                prop_assert_eq!(e, ver::Error::StringTooLong { len: 64, capacity: 64 });
                return Ok(());
            }
        };
        prop_assert_eq!(ver::c_string_bytes(&field), &s[..]);
    }

    #[test]
    fn features_and_version_round_trip(bits in any::<u32>(), major in any::<u16>(), minor in any::<u16>()) {
        let f = XenFeatures::from_bits_retain(bits);
        let reply = XenFeatureInfo { submap_idx: 0, submap: 0 }.reply(f).unwrap();
        prop_assert_eq!(XenFeatures::from_bits_retain(reply.submap), f);
        prop_assert_eq!(XenFeatureInfo::read_from_bytes(reply.as_bytes()), Ok(reply));
        prop_assert_eq!(ver::split_xen_version(ver::xen_version_value(major, minor)), (major, minor));
        if let Ok(cmd) = XenVer::try_from(bits) { prop_assert_eq!(cmd.raw(), bits); }
    }
}

// =====================================================================================================
// hvm_start_info
// =====================================================================================================

const HVM_LIMITS: HvmStartInfoLimits = HvmStartInfoLimits {
    max_modules: 16,
    max_memmap_entries: 128,
};

fn hvm_info() -> HvmStartInfo {
    HvmStartInfo {
        nr_modules: 2,
        modlist_paddr: 0x10_0000,
        cmdline_paddr: 0x20_0000,
        memmap_paddr: 0x30_0000,
        memmap_entries: 4,
        ..HvmStartInfo::new()
    }
}

#[test]
fn hvm_start_info_validates() {
    let v = hvm_info().validate(&HVM_LIMITS).unwrap();
    assert_eq!((v.modules.count, v.modules.len), (2, 64));
    assert_eq!((v.memmap.count, v.memmap.len), (4, 96));
    assert_eq!((v.cmdline_paddr, v.rsdp_paddr), (Some(0x20_0000), None));
}

#[test]
fn hvm_start_info_bad_magic_is_rejected() {
    let info = HvmStartInfo {
        magic: 0x336e_c579,
        ..hvm_info()
    };
    assert_eq!(
        info.validate(&HVM_LIMITS),
        Err(hsi::Error::BadMagic(0x336e_c579))
    );
}

#[test]
fn hvm_start_info_too_many_modules_is_rejected() {
    let info = HvmStartInfo {
        nr_modules: u32::MAX,
        ..hvm_info()
    };
    assert_eq!(
        info.validate(&HVM_LIMITS),
        Err(hsi::Error::TooManyModules {
            nr_modules: u32::MAX,
            max: 16
        })
    );
}

#[test]
fn hvm_start_info_too_many_memmap_entries_is_rejected() {
    let info = HvmStartInfo {
        memmap_entries: 129,
        ..hvm_info()
    };
    assert_eq!(
        info.validate(&HVM_LIMITS),
        Err(hsi::Error::TooManyMemmapEntries {
            memmap_entries: 129,
            max: 128
        })
    );
}

#[test]
fn hvm_start_info_modules_without_a_list_are_rejected() {
    let info = HvmStartInfo {
        modlist_paddr: 0,
        ..hvm_info()
    };
    assert_eq!(
        info.validate(&HVM_LIMITS),
        Err(hsi::Error::MissingModlist(2))
    );
    let info = HvmStartInfo {
        memmap_paddr: 0,
        ..hvm_info()
    };
    assert_eq!(
        info.validate(&HVM_LIMITS),
        Err(hsi::Error::MissingMemmap(4))
    );
}

#[test]
fn hvm_start_info_arrays_wrapping_the_address_space_are_rejected() {
    let info = HvmStartInfo {
        modlist_paddr: u64::MAX - 32,
        ..hvm_info()
    };
    assert_eq!(
        info.validate(&HVM_LIMITS),
        Err(hsi::Error::ArrayOverflow {
            what: "module list",
            paddr: u64::MAX - 32,
            count: 2,
            entry_size: 32
        })
    );
    let info = HvmStartInfo {
        memmap_paddr: u64::MAX - 24,
        ..hvm_info()
    };
    assert_eq!(
        info.validate(&HVM_LIMITS),
        Err(hsi::Error::ArrayOverflow {
            what: "memory map",
            paddr: u64::MAX - 24,
            count: 4,
            entry_size: 24
        })
    );
}

#[test]
fn hvm_start_info_non_zero_reserved_is_rejected() {
    let info = HvmStartInfo {
        reserved: 1,
        ..hvm_info()
    };
    assert_eq!(
        info.validate(&HVM_LIMITS),
        Err(hsi::Error::NonZeroReserved(1))
    );
}

#[test]
fn hvm_start_info_version_0_has_no_memory_map() {
    let info = HvmStartInfo {
        version: 0,
        memmap_entries: u32::MAX,
        reserved: 7,
        memmap_paddr: 0,
        ..hvm_info()
    };
    let v = info.validate(&HVM_LIMITS).unwrap();
    assert_eq!(v.memmap.count, 0);
}

#[test]
fn memmap_entry_of_unknown_type_is_rejected() {
    for t in [0u32, 8, u32::MAX] {
        let e = HvmMemmapTableEntry {
            addr: 0,
            size: 4096,
            type_: t,
            reserved: 0,
        };
        assert_eq!(e.validate(), Err(hsi::Error::UnknownMemmapType(t)));
    }
}

#[test]
fn memmap_entry_ending_past_2_64_is_rejected() {
    let e = HvmMemmapTableEntry::new(u64::MAX - 4095, 4096, HvmMemmapType::Ram);
    assert_eq!(
        e.validate(),
        Err(hsi::Error::RangeOverflow {
            what: "memory region",
            addr: u64::MAX - 4095,
            size: 4096
        })
    );
    let e = HvmMemmapTableEntry {
        reserved: 3,
        ..HvmMemmapTableEntry::new(0, 1, HvmMemmapType::Ram)
    };
    assert_eq!(e.validate(), Err(hsi::Error::NonZeroEntryReserved(3)));
    let m = HvmModlistEntry {
        paddr: u64::MAX,
        size: 1,
        cmdline_paddr: 0,
        reserved: 0,
    };
    assert_eq!(
        m.validate(),
        Err(hsi::Error::RangeOverflow {
            what: "module",
            addr: u64::MAX,
            size: 1
        })
    );
}

proptest! {
    #[test]
    fn hvm_start_info_bytes_round_trip(bytes in any::<[u8; 56]>()) {
        let info = HvmStartInfo::read_from_bytes(&bytes[..]).unwrap();
        prop_assert_eq!(info.as_bytes(), &bytes[..]);
        if let Ok(v) = info.validate(&HVM_LIMITS) {
            prop_assert!(v.modules.count <= 16 && v.memmap.count <= 128);
            prop_assert!(v.modules.paddr.checked_add(v.modules.len).is_some());
            prop_assert!(v.memmap.paddr.checked_add(v.memmap.len).is_some());
        }
    }

    #[test]
    fn memmap_entry_round_trips(addr in any::<u64>(), size in any::<u64>(), t in 1u32..=7) {
        let kind = HvmMemmapType::try_from(t).unwrap();
        let e = HvmMemmapTableEntry::new(addr, size, kind);
        prop_assert_eq!(HvmMemmapTableEntry::read_from_bytes(e.as_bytes()), Ok(e));
        match e.validate() {
            Ok(r) => { prop_assert_eq!(r.kind, kind); prop_assert_eq!(r.end, addr + size); }
            Err(err) => prop_assert!(addr.checked_add(size).is_none(), "{err}"),
        }
    }
}
