//! The GDT and the TSS.
//!
//! Segments: kernel code, kernel data, then user data and user code in the order `syscall`/`sysret`
//! need (STAR: user data = base + 8, user code = base + 16), and the TSS. The TSS gives the double
//! fault and NMI handlers stacks of their own (IST), so a kernel stack overflow (a page fault on the
//! guard page below the stack, which cannot push its frame) becomes a reported double fault instead
//! of a triple fault and reset.

use core::sync::atomic::{AtomicBool, Ordering};

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// IST slot (0-based, as `set_stack_index` takes it) of the double-fault stack.
pub const DOUBLE_FAULT_IST_INDEX: u16 = 0;
/// IST slot of the NMI and machine-check stack.
pub const NMI_IST_INDEX: u16 = 1;

const IST_STACK_SIZE: usize = 64 * 1024;

/// An IST stack with a guard page below it: the kernel's own tables leave `guard` unmapped
/// (see [`guard_pages`]), so running off the bottom faults instead of corrupting `.bss`.
#[repr(C, align(4096))]
struct IstStack {
    guard: [u8; address_space::PAGE_SIZE as usize],
    stack: [u8; IST_STACK_SIZE],
}

static mut DOUBLE_FAULT_STACK: IstStack = IstStack { guard: [0; address_space::PAGE_SIZE as usize], stack: [0; IST_STACK_SIZE] };
static mut NMI_STACK: IstStack = IstStack { guard: [0; address_space::PAGE_SIZE as usize], stack: [0; IST_STACK_SIZE] };
/// The stack exceptions from ring 3 arrive on (TSS RSP0); the entry code leaves it at once for
/// the kernel stack of the guest's run loop (see `super::user`).
static mut ENTRY_STACK: IstStack = IstStack { guard: [0; address_space::PAGE_SIZE as usize], stack: [0; IST_STACK_SIZE] };

/// Virtual addresses of the guard pages below the IST stacks and the ring-3 entry stack (left
/// unmapped by the kernel's page tables).
pub fn guard_pages() -> [u64; 3] {
    [
        core::ptr::addr_of!(DOUBLE_FAULT_STACK) as u64,
        core::ptr::addr_of!(NMI_STACK) as u64,
        core::ptr::addr_of!(ENTRY_STACK) as u64,
    ]
}

/// The selectors the rest of the kernel needs.
#[derive(Debug, Clone, Copy)]
pub struct Selectors {
    /// Ring-0 64-bit code.
    pub kernel_code: SegmentSelector,
    /// Ring-0 data.
    pub kernel_data: SegmentSelector,
    /// Ring-3 data (with RPL 3).
    pub user_data: SegmentSelector,
    /// Ring-3 64-bit code (with RPL 3).
    pub user_code: SegmentSelector,
    /// The TSS.
    pub tss: SegmentSelector,
}

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, Selectors)> = Once::new();

fn stack_top(stack: *const IstStack) -> VirtAddr {
    VirtAddr::from_ptr(stack) + core::mem::size_of::<IstStack>() as u64
}

/// Builds and loads the GDT and TSS and reloads the segment registers. Idempotent.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table[DOUBLE_FAULT_IST_INDEX as usize] =
            stack_top(core::ptr::addr_of!(DOUBLE_FAULT_STACK));
        tss.interrupt_stack_table[NMI_IST_INDEX as usize] = stack_top(core::ptr::addr_of!(NMI_STACK));
        tss.privilege_stack_table[0] = stack_top(core::ptr::addr_of!(ENTRY_STACK));
        tss
    });
    let (gdt, selectors) = GDT.call_once(|| build_gdt(tss));
    // ltr faults on a busy TSS: the boot CPU's is loaded on the first call only.
    static TSS_LOADED: AtomicBool = AtomicBool::new(false);
    load(gdt, selectors, !TSS_LOADED.swap(true, Ordering::SeqCst));
}

/// The GDT layout every CPU uses (so the selectors, and STAR, are the same everywhere).
fn build_gdt(tss: &'static TaskStateSegment) -> (GlobalDescriptorTable, Selectors) {
    let mut gdt = GlobalDescriptorTable::new();
    let kernel_code = gdt.append(Descriptor::kernel_code_segment());
    let kernel_data = gdt.append(Descriptor::kernel_data_segment());
    let user_data = gdt.append(Descriptor::user_data_segment());
    let user_code = gdt.append(Descriptor::user_code_segment());
    let tss = gdt.append(Descriptor::tss_segment(tss));
    (gdt, Selectors { kernel_code, kernel_data, user_data, user_code, tss })
}

/// Loads `gdt`, reloads the segment registers, and loads its TSS if `load_task` says so.
fn load(gdt: &'static GlobalDescriptorTable, selectors: &Selectors, load_task: bool) {
    gdt.load();
    // SAFETY: the selectors come from the GDT just loaded (which lives for the whole run):
    // kernel code/data are valid ring-0 descriptors and `tss` is an available 64-bit TSS
    // descriptor pointing at a TSS that lives for the whole run.
    unsafe {
        CS::set_reg(selectors.kernel_code);
        SS::set_reg(selectors.kernel_data);
        DS::set_reg(selectors.kernel_data);
        ES::set_reg(selectors.kernel_data);
        if load_task {
            load_tss(selectors.tss);
        }
    }
}

/// Builds and loads a GDT and TSS of its own for an application processor (leaked: CPUs live
/// for the whole run), with the boot CPU's layout and the given stack tops for the double-fault
/// and NMI IST slots and for ring-3 entries (RSP0).
pub fn init_ap(double_fault_top: u64, nmi_top: u64, entry_top: u64) {
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[DOUBLE_FAULT_IST_INDEX as usize] = VirtAddr::new(double_fault_top);
    tss.interrupt_stack_table[NMI_IST_INDEX as usize] = VirtAddr::new(nmi_top);
    tss.privilege_stack_table[0] = VirtAddr::new(entry_top);
    let tss: &'static TaskStateSegment = alloc::boxed::Box::leak(alloc::boxed::Box::new(tss));
    let (gdt, selectors) = build_gdt(tss);
    let gdt: &'static GlobalDescriptorTable = alloc::boxed::Box::leak(alloc::boxed::Box::new(gdt));
    load(gdt, &selectors, true);
}

/// The selectors of the loaded GDT.
///
/// # Panics
/// If [`init`] has not run (a kernel bug).
pub fn selectors() -> Selectors {
    GDT.get().expect("gdt::init has run").1
}
