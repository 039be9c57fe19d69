//! x86_64 specifics: descriptor tables, exception handling, fault probes.
//!
//! This is one of the few places with `unsafe`: loading tables, reading control registers,
//! rewriting an interrupted context.

pub mod apic;
pub mod cpu;
pub mod fw_cfg;
pub mod gdt;
pub mod interrupts;
pub mod percpu;
pub mod probe;
pub mod smp;
pub mod time;
pub mod user;
