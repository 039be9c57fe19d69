//! Booting an image in QEMU and deciding what happened.
//!
//! Exit-code contract with the kernel (`kernel/src/qemu.rs`): the kernel writes 0x10 (success) or
//! 0x11 (failure) to the `isa-debug-exit` port, which QEMU turns into status 33 or 35. Any other
//! status (0 after a triple fault under `-no-reboot`, a QEMU error, a signal) is a crash, and an
//! image still running at the deadline is killed and reported as a timeout.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::image::Firmware;

/// QEMU status for a kernel that reported success.
pub const STATUS_SUCCESS: i32 = 33;
/// QEMU status for a kernel that reported failure.
pub const STATUS_FAILURE: i32 = 35;

/// CPUs a machine gets unless told otherwise (`--smp`).
pub const DEFAULT_CPUS: u32 = 2;

/// How to run QEMU.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// BIOS or UEFI.
    pub firmware: Firmware,
    /// Use KVM (`-enable-kvm -cpu host`) instead of TCG.
    pub kvm: bool,
    /// Wait for a debugger on tcp::1234 before starting (`-s -S`).
    pub gdb: bool,
    /// Guest RAM, in QEMU's syntax (`256M`, `2G`).
    pub memory: String,
    /// Kill QEMU after this long; `None` waits forever.
    pub timeout: Option<Duration>,
    /// Copy the serial output to our stdout as it arrives.
    pub echo: bool,
    /// The kernel's boot configuration (`key=value` pairs), passed as the fw_cfg file
    /// `opt/vmk/config`.
    pub config: Option<String>,
    /// The guests' argument string, passed as the fw_cfg file `opt/vmk/args`.
    pub guest_args: Option<String>,
    /// CPUs (`-smp`).
    pub cpus: u32,
}

impl Default for QemuOptions {
    fn default() -> Self {
        QemuOptions {
            firmware: Firmware::Bios,
            kvm: false,
            gdb: false,
            memory: "256M".into(),
            timeout: Some(Duration::from_secs(120)),
            echo: true,
            config: None,
            guest_args: None,
            cpus: DEFAULT_CPUS,
        }
    }
}

/// What became of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The kernel exited through `isa-debug-exit` with the success code.
    Success,
    /// The kernel exited through `isa-debug-exit` with the failure code.
    Failure,
    /// QEMU ended any other way: the status, or `None` for a signal.
    Crash(Option<i32>),
    /// Still running at the deadline; killed.
    Timeout,
}

impl Outcome {
    /// Maps a QEMU process status to an outcome.
    pub fn from_status(code: Option<i32>) -> Outcome {
        match code {
            Some(STATUS_SUCCESS) => Outcome::Success,
            Some(STATUS_FAILURE) => Outcome::Failure,
            other => Outcome::Crash(other),
        }
    }

    /// The exit status our own process passes on: 0 success, 1 kernel-reported failure,
    /// 2 crash, 3 timeout.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Success => 0,
            Outcome::Failure => 1,
            Outcome::Crash(_) => 2,
            Outcome::Timeout => 3,
        }
    }

    /// A short description for messages.
    pub fn describe(self) -> String {
        match self {
            Outcome::Success => "success".into(),
            Outcome::Failure => "failure reported by the kernel".into(),
            Outcome::Crash(Some(0)) => "crash (QEMU exited with status 0: a triple fault and reset?)".into(),
            Outcome::Crash(Some(c)) => format!("crash (QEMU exited with status {c})"),
            Outcome::Crash(None) => "crash (QEMU killed by a signal)".into(),
            Outcome::Timeout => "timeout (killed)".into(),
        }
    }
}

/// A finished run: its outcome and everything the kernel printed.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// How it ended.
    pub outcome: Outcome,
    /// The serial output, lines joined with `\n` (carriage returns removed).
    pub output: String,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

/// Where the OVMF firmware is on this machine (Debian's `ovmf` package), if anywhere.
pub fn ovmf_path() -> Option<PathBuf> {
    ["/usr/share/ovmf/OVMF.fd", "/usr/share/OVMF/OVMF.fd", "/usr/share/qemu/OVMF.fd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Whether KVM can be used here: `/dev/kvm` exists and opens read-write.
pub fn kvm_usable() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm is not usable: {e}"))
}

/// The QEMU command line for `image`.
pub fn command_line(image: &Path, opts: &QemuOptions) -> Result<Vec<String>, String> {
    let mut args: Vec<String> = vec![
        "qemu-system-x86_64".into(),
        "-drive".into(),
        format!("format=raw,file={}", image.display()),
        // Writes go to a temporary overlay: the image stays pristine and several QEMUs may boot
        // the same image at once (no write lock).
        "-snapshot".into(),
        "-serial".into(),
        "stdio".into(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-no-reboot".into(),
        "-device".into(),
        "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
        "-m".into(),
        opts.memory.clone(),
        "-smp".into(),
        opts.cpus.to_string(),
    ];
    if opts.firmware == Firmware::Uefi {
        let ovmf = ovmf_path().ok_or("OVMF firmware not found (apt-get install ovmf)")?;
        args.extend(["-bios".into(), ovmf.display().to_string()]);
    }
    if opts.kvm {
        kvm_usable()?;
        // This machine's paravirtualised KVM rejects IA32_ARCH_CAPABILITIES (MSR 0x10a), which
        // makes QEMU 7.2 abort with a plain `-cpu host`.
        args.extend(["-enable-kvm".into(), "-cpu".into(), "host,-arch-capabilities".into()]);
    } else {
        // `max` under TCG offers NX, SMEP, SMAP and PAT, which the kernel uses when present.
        args.extend(["-cpu".into(), "max".into()]);
    }
    if opts.gdb {
        args.extend(["-s".into(), "-S".into()]);
    }
    if let Some(config) = &opts.config {
        // QEMU option values escape a comma by doubling it.
        args.extend(["-fw_cfg".into(), format!("name=opt/vmk/config,string={}", config.replace(',', ",,"))]);
    }
    if let Some(guest_args) = &opts.guest_args {
        args.extend(["-fw_cfg".into(), format!("name=opt/vmk/args,string={}", guest_args.replace(',', ",,"))]);
    }
    Ok(args)
}

/// Boots `image` and waits for the outcome (or the timeout).
pub fn run(image: &Path, opts: &QemuOptions) -> Result<RunResult, String> {
    let args = command_line(image, opts)?;
    eprintln!("[boot] {}", args.join(" "));
    if opts.gdb {
        eprintln!("[boot] QEMU waits for gdb: target remote :1234");
    }
    let start = Instant::now();
    let mut child = Command::new(&args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e} (apt-get install qemu-system-x86)", args[0]))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let output = Arc::new(Mutex::new(String::new()));
    let reader = {
        let output = Arc::clone(&output);
        let echo = opts.echo;
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut raw = Vec::new();
            while let Ok(n) = lines.read_until(b'\n', &mut raw) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&raw);
                let line = text.trim_end_matches(['\n', '\r']).replace('\r', "");
                if echo {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
                let mut all = output.lock().expect("output lock");
                all.push_str(&line);
                all.push('\n');
                raw.clear();
            }
        })
    };
    let outcome = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("waiting for QEMU: {e}"))? {
            break Outcome::from_status(status.code());
        }
        if opts.timeout.is_some_and(|t| start.elapsed() >= t) {
            let _ = child.kill();
            let _ = child.wait();
            break Outcome::Timeout;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = reader.join();
    let output = output.lock().expect("output lock").clone();
    Ok(RunResult { outcome, output, elapsed: start.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_33_is_success_35_failure_anything_else_a_crash() {
        assert_eq!(Outcome::from_status(Some(33)), Outcome::Success);
        assert_eq!(Outcome::from_status(Some(35)), Outcome::Failure);
        assert_eq!(Outcome::from_status(Some(0)), Outcome::Crash(Some(0)));
        assert_eq!(Outcome::from_status(Some(1)), Outcome::Crash(Some(1)));
        assert_eq!(Outcome::from_status(None), Outcome::Crash(None));
    }

    #[test]
    fn only_success_exits_zero() {
        assert_eq!(Outcome::Success.exit_code(), 0);
        for o in [Outcome::Failure, Outcome::Crash(Some(0)), Outcome::Crash(None), Outcome::Timeout] {
            assert_ne!(o.exit_code(), 0, "{o:?}");
        }
    }

    #[test]
    fn command_line_has_the_exit_device_and_serial() {
        let opts = QemuOptions::default();
        let args = command_line(Path::new("/tmp/x.img"), &opts).unwrap();
        let joined = args.join(" ");
        assert!(joined.contains("-serial stdio"));
        assert!(joined.contains("-display none"));
        assert!(joined.contains("-no-reboot"));
        assert!(joined.contains("isa-debug-exit,iobase=0xf4,iosize=0x04"));
        assert!(joined.contains("-m 256M"));
        assert!(joined.contains("-smp 2"));
        assert!(!joined.contains("-enable-kvm"));
        assert!(!joined.contains("fw_cfg"));
    }

    #[test]
    fn config_travels_in_fw_cfg_with_commas_escaped() {
        let opts = QemuOptions { config: Some("commit_limit_mb=64,low_threshold_percent=20".into()), ..QemuOptions::default() };
        let args = command_line(Path::new("/tmp/x.img"), &opts).unwrap();
        let i = args.iter().position(|a| a == "-fw_cfg").expect("-fw_cfg present");
        assert_eq!(args[i + 1], "name=opt/vmk/config,string=commit_limit_mb=64,,low_threshold_percent=20");
    }
}
