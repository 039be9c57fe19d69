//! The serial console on COM1 and the kernel's print macros.
//!
//! Everything the kernel says goes to COM1 (QEMU's `-serial stdio`): `kprint!`/`kprintln!` for the
//! structured output that tests and scripts read, and the `log` facade (`log::info!` …) for
//! diagnostics, which prints `[LEVEL] message`. Fault and panic reports use [`emergency_writer`],
//! which does not wait for the lock: the code that faulted may have been holding it.

use core::fmt;

use spin::Mutex;
use uart_16550::{Config, Uart16550, backend::PioBackend};

/// I/O port base of COM1.
const COM1: u16 = 0x3f8;

static CONSOLE: Mutex<Option<Uart16550<PioBackend>>> = Mutex::new(None);

/// Initialises COM1 and installs the `log` backend. Idempotent.
pub fn init() {
    let mut console = CONSOLE.lock();
    if console.is_none() {
        // SAFETY: 0x3f8..0x3f8+8 are the COM1 registers on the PC platform QEMU emulates; nothing
        // else in the kernel drives these ports.
        if let Ok(mut uart) = unsafe { Uart16550::new_port(COM1) } {
            // A missing UART leaves the console silent rather than stopping the boot.
            if uart.init(Config::default()).is_ok() {
                *console = Some(uart);
            }
        }
    }
    drop(console);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

struct Writer<'a>(&'a mut Uart16550<PioBackend>);

impl fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.split_inclusive('\n') {
            if let Some(line) = chunk.strip_suffix('\n') {
                self.0.send_bytes_exact(line.as_bytes());
                self.0.send_bytes_exact(b"\r\n");
            } else {
                self.0.send_bytes_exact(chunk.as_bytes());
            }
        }
        Ok(())
    }
}

/// Writes formatted text to the console (used by the print macros).
pub fn write_fmt(args: fmt::Arguments) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(uart) = CONSOLE.lock().as_mut() {
            let _ = fmt::Write::write_fmt(&mut Writer(uart), args);
        }
    });
}

/// A copy of guest output, kept while a test asks for it ([`start_capture`]).
static CAPTURE: Mutex<Option<alloc::vec::Vec<u8>>> = Mutex::new(None);

/// Starts keeping a copy of everything guests write (for tests that check guest output).
pub fn start_capture() {
    *CAPTURE.lock() = Some(alloc::vec::Vec::new());
}

/// Stops keeping guest output and returns what was kept.
pub fn take_capture() -> alloc::string::String {
    let bytes = CAPTURE.lock().take().unwrap_or_default();
    alloc::string::String::from_utf8_lossy(&bytes).into_owned()
}

/// Writes raw bytes (a guest's console output) to the console, `\n` becoming `\r\n`.
pub fn write_bytes(bytes: &[u8]) {
    if let Some(copy) = CAPTURE.lock().as_mut() {
        copy.extend_from_slice(bytes);
    }
    x86_64::instructions::interrupts::without_interrupts(|| {
        if let Some(uart) = CONSOLE.lock().as_mut() {
            for line in bytes.split_inclusive(|&b| b == b'\n') {
                if let Some(body) = line.strip_suffix(b"\n") {
                    uart.send_bytes_exact(body);
                    uart.send_bytes_exact(b"\r\n");
                } else {
                    uart.send_bytes_exact(line);
                }
            }
        }
    });
}

/// Writes formatted text even if the console lock is held (by the code that just faulted or
/// panicked). Only for reports printed right before the machine stops.
pub fn emergency_write_fmt(args: fmt::Arguments) {
    if CONSOLE.is_locked() {
        // SAFETY: called only on the way to stopping the machine, from a fault or panic path on
        // the only running CPU; whoever held the lock will never run again, so breaking it cannot
        // race with another user of the UART.
        unsafe { CONSOLE.force_unlock() };
    }
    write_fmt(args);
}

/// Prints to the console.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::console::write_fmt(format_args!($($arg)*)) };
}

/// Prints a line to the console.
#[macro_export]
macro_rules! kprintln {
    () => { $crate::kprint!("\n") };
    ($($arg:tt)*) => { $crate::console::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints a line to the console without waiting for its lock (fault and panic reports).
#[macro_export]
macro_rules! emergency_println {
    ($($arg:tt)*) => { $crate::console::emergency_write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

struct SerialLogger;

static LOGGER: SerialLogger = SerialLogger;

impl log::Log for SerialLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            write_fmt(format_args!("[{:<5}] {}\n", record.level(), record.args()));
        }
    }

    fn flush(&self) {}
}
