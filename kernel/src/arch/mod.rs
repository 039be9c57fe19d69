//! x86_64 specifics: descriptor tables, ring-3 entry and exit, fault probes, APIC, CPUs.
//!
//! The ground floor: nothing here imports a module above it (memory, traps, guests); what AP
//! bring-up needs from above is handed in ([`smp::Support`]).
//!
//! This is one of the few places with `unsafe`: loading tables, reading control registers,
//! rewriting an interrupted context.

pub mod apic;
pub mod cpu;
pub mod fw_cfg;
pub mod gdt;
pub mod percpu;
pub mod probe;
pub mod smp;
pub mod time;
pub mod user;
