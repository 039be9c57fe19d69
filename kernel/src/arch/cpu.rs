//! CPU features the memory manager relies on, and switching them on.
//!
//! - `EFER.NXE`: the NX bit in page-table entries (non-executable data, `PAGE_READWRITE` not
//!   executable). Required: without it NX entries would be reserved-bit faults.
//! - `CR0.WP`: ring 0 honours read-only entries too, so the kernel cannot write through a
//!   read-only mapping by accident (and copy-to-guest obeys the guest's protections).
//! - `CR4.SMEP` / `CR4.SMAP` when CPUID offers them: ring 0 never executes user pages and touches
//!   user data only inside explicit `stac`/`clac` windows.
//! - `CR4.PGE`: kernel mappings are global, so switching address spaces keeps them in the TLB.
//! - The PAT (Intel SDM Vol. 3A §12.12): entries 0–3 keep their power-on values (WB, WT, UC-, UC)
//!   so PWT/PCD mean what they always did, and entry 4 (selected by the PAT bit of a 4 KiB entry
//!   alone) becomes write-combining, for `PAGE_WRITECOMBINE`. `PAGE_NOCACHE` uses PCD|PWT (entry 3,
//!   UC). This matches the encoding of `address_space::paging::pte`.

use core::arch::x86_64::__cpuid_count;
use core::sync::atomic::{AtomicBool, Ordering};

use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags, Msr};

/// IA32_PAT.
const IA32_PAT: u32 = 0x277;
/// PAT memory types (SDM Vol. 3A table 12-10).
const PAT_UC: u64 = 0x00;
const PAT_WC: u64 = 0x01;
const PAT_WT: u64 = 0x04;
const PAT_WB: u64 = 0x06;
const PAT_UC_MINUS: u64 = 0x07;

/// The PAT the kernel programs: WB, WT, UC-, UC, WC, WT, UC-, UC.
pub const PAT_VALUE: u64 = PAT_WB
    | PAT_WT << 8
    | PAT_UC_MINUS << 16
    | PAT_UC << 24
    | PAT_WC << 32
    | PAT_WT << 40
    | PAT_UC_MINUS << 48
    | PAT_UC << 56;

static SMEP: AtomicBool = AtomicBool::new(false);
static SMAP: AtomicBool = AtomicBool::new(false);

/// What the CPU offers, from CPUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Execute-disable (CPUID 0x8000_0001 EDX bit 20).
    pub nx: bool,
    /// Supervisor-mode execution prevention (CPUID 7.0 EBX bit 7).
    pub smep: bool,
    /// Supervisor-mode access prevention (CPUID 7.0 EBX bit 20).
    pub smap: bool,
    /// Page attribute table (CPUID 1 EDX bit 16).
    pub pat: bool,
    /// Global pages (CPUID 1 EDX bit 13).
    pub pge: bool,
    /// 1 GiB pages (CPUID 0x8000_0001 EDX bit 26).
    pub gib_pages: bool,
}

/// Reads the CPU's features.
pub fn features() -> Features {
    // The structured and extended leaves are read only if the maximum leaf numbers offer them.
    let max = __cpuid_count(0, 0).eax;
    let max_ext = __cpuid_count(0x8000_0000, 0).eax;
    let leaf1 = __cpuid_count(1, 0);
    let leaf7_ebx = if max >= 7 { __cpuid_count(7, 0).ebx } else { 0 };
    let ext_edx = if max_ext >= 0x8000_0001 { __cpuid_count(0x8000_0001, 0).edx } else { 0 };
    Features {
        nx: ext_edx & (1 << 20) != 0,
        smep: leaf7_ebx & (1 << 7) != 0,
        smap: leaf7_ebx & (1 << 20) != 0,
        pat: leaf1.edx & (1 << 16) != 0,
        pge: leaf1.edx & (1 << 13) != 0,
        gib_pages: ext_edx & (1 << 26) != 0,
    }
}

/// Switches on NXE, WP, PGE and programs the PAT. Run before the kernel's own tables are built.
///
/// # Panics
/// If the CPU lacks NX or PAT: the kernel cannot enforce `PAGE_*` protections without them.
pub fn enable_paging_features(f: &Features) {
    assert!(f.nx && f.pat, "the CPU lacks NX or PAT ({f:?}); this kernel needs both");
    // SAFETY: setting NXE only makes bit 63 of page-table entries meaningful; the bootloader's
    // tables already use it (it enabled NXE itself), so no existing entry changes meaning.
    unsafe { Efer::update(|e| e.insert(EferFlags::NO_EXECUTE_ENABLE)) };
    // SAFETY: WP makes ring 0 respect read-only entries; the kernel writes only to its data,
    // stacks and heap, which are mapped writable.
    unsafe { Cr0::update(|c| c.insert(Cr0Flags::WRITE_PROTECT)) };
    if f.pge {
        // SAFETY: PGE lets entries with the G bit survive CR3 loads; only kernel mappings, which
        // are the same in every address space, get the G bit.
        unsafe { Cr4::update(|c| c.insert(Cr4Flags::PAGE_GLOBAL)) };
    }
    // SAFETY: entries 0–3 keep their power-on values, so every existing mapping keeps its memory
    // type; entry 4 is used by no mapping yet (the bootloader never sets the PAT bit).
    unsafe { Msr::new(IA32_PAT).write(PAT_VALUE) };
}

/// Switches on SMEP and SMAP if the CPU has them. Run once no user page is mapped in kernel
/// tables any more (after the switch to the kernel's own tables).
pub fn enable_user_protection(f: &Features) {
    if f.smep {
        // SAFETY: the kernel's tables map nothing user-accessible, and the kernel never runs
        // code from guest pages.
        unsafe { Cr4::update(|c| c.insert(Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION)) };
        SMEP.store(true, Ordering::SeqCst);
    }
    if f.smap {
        // SAFETY: kernel accesses to guest memory go through probes that open a stac/clac window.
        unsafe { Cr4::update(|c| c.insert(Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION)) };
        SMAP.store(true, Ordering::SeqCst);
    }
}

/// Whether SMEP is on.
pub fn smep_enabled() -> bool {
    SMEP.load(Ordering::SeqCst)
}

/// Whether SMAP is on.
pub fn smap_enabled() -> bool {
    SMAP.load(Ordering::SeqCst)
}

/// Runs `f` with SMEP switched off (if it is on), for a test that must execute a user page from
/// ring 0; interrupts are off meanwhile.
pub fn without_smep<R>(f: impl FnOnce() -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let on = smep_enabled();
        if on {
            // SAFETY: SMEP is lifted only for the duration of `f`, on this CPU, with interrupts off.
            unsafe { Cr4::update(|c| c.remove(Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION)) };
        }
        let r = f();
        if on {
            // SAFETY: restores the state found above.
            unsafe { Cr4::update(|c| c.insert(Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION)) };
        }
        r
    })
}

/// Stops this CPU for good (interrupts off, `hlt` forever); used after QEMU was asked to exit.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
