//! `boot`: build disk images of kernel ELF files and run them in QEMU.
//!
//! ```text
//! boot run   [OPTIONS] KERNEL        boot one kernel; exit 0 on success, 1 on reported failure,
//!                                    2 on a crash, 3 on a timeout
//! boot suite [OPTIONS] IMAGE...      run QEMU test images, print per-case lines and a summary
//! boot KERNEL [ARGS...]              as cargo's runner: a test binary (NAME-<hash>) runs as a
//!                                    one-image suite, anything else as `run`
//!
//! OPTIONS: --uefi | --firmware bios|uefi|both   --kvm   --gdb   --mem SIZE (default 256M)
//!          --timeout SECS (0 = none; default 120)   --ramdisk FILE   --guest FILE (repeatable)
//!          --config "key=value,..." (the kernel's boot configuration, through QEMU's fw_cfg)
//!          --guest-args "..." (the argument string every guest finds in HOST_SERVICES)
//!          --smp N (CPUs; default 2; the `smp` test image runs at 1, 2 and 4 whatever this says)
//!          --quiet
//! Environment (for the cargo-runner form): VMK_FIRMWARE, VMK_TIMEOUT, VMK_MEM, VMK_SMP, VMK_KVM=1
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use boot::image::{self, Firmware};
use boot::qemu::{self, QemuOptions};
use boot::suite;

const USAGE: &str = "usage: boot run [--uefi] [--kvm] [--gdb] [--mem SIZE] [--smp N] [--timeout SECS] [--ramdisk FILE | --guest FILE...] KERNEL
       boot suite [--firmware bios|uefi|both] [--kvm] [--mem SIZE] [--smp N] [--timeout SECS] IMAGE...
       boot KERNEL [ARGS...]   (cargo runner)";

struct Cli {
    firmwares: Vec<Firmware>,
    opts: QemuOptions,
    ramdisk: Option<PathBuf>,
    guests: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

fn parse(args: &[String]) -> Result<Cli, String> {
    let mut opts = QemuOptions::default();
    let mut firmwares = vec![Firmware::Bios];
    if let Ok(f) = std::env::var("VMK_FIRMWARE") {
        firmwares = suite::parse_firmwares(&f).ok_or(format!("VMK_FIRMWARE={f}: expected bios, uefi or both"))?;
    }
    if let Ok(t) = std::env::var("VMK_TIMEOUT") {
        opts.timeout = parse_timeout(&t)?;
    }
    if let Ok(m) = std::env::var("VMK_MEM") {
        opts.memory = m;
    }
    if let Ok(n) = std::env::var("VMK_SMP") {
        opts.cpus = parse_cpus(&n)?;
    }
    opts.kvm = std::env::var("VMK_KVM").is_ok_and(|v| v == "1");
    let mut ramdisk = None;
    let mut guests = Vec::new();
    let mut files = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--uefi" => firmwares = vec![Firmware::Uefi],
            "--bios" => firmwares = vec![Firmware::Bios],
            "--firmware" => {
                let v = value("--firmware")?;
                firmwares = suite::parse_firmwares(&v).ok_or(format!("--firmware {v}: expected bios, uefi or both"))?;
            }
            "--kvm" => opts.kvm = true,
            "--gdb" => opts.gdb = true,
            "--mem" => opts.memory = value("--mem")?,
            "--smp" => opts.cpus = parse_cpus(&value("--smp")?)?,
            "--timeout" => opts.timeout = parse_timeout(&value("--timeout")?)?,
            "--ramdisk" => ramdisk = Some(PathBuf::from(value("--ramdisk")?)),
            "--guest" => guests.push(PathBuf::from(value("--guest")?)),
            "--quiet" => opts.echo = false,
            "--config" => opts.config = Some(value("--config")?),
            "--guest-args" => opts.guest_args = Some(value("--guest-args")?),
            "-h" | "--help" => return Err(USAGE.into()),
            other if other.starts_with("--") => return Err(format!("unknown option {other}\n{USAGE}")),
            other => files.push(PathBuf::from(other)),
        }
    }
    if opts.gdb {
        opts.timeout = None;
    }
    if ramdisk.is_some() && !guests.is_empty() {
        return Err("--ramdisk and --guest exclude each other (guests travel in the ramdisk)".into());
    }
    Ok(Cli { firmwares, opts, ramdisk, guests, files })
}

fn parse_cpus(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=255).contains(&n) => Ok(n),
        _ => Err(format!("--smp {s:?}: expected a CPU count from 1 to 255")),
    }
}

fn parse_timeout(s: &str) -> Result<Option<Duration>, String> {
    let secs: u64 = s.parse().map_err(|_| format!("timeout {s:?}: expected whole seconds"))?;
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

fn run_one(cli: &Cli) -> Result<i32, String> {
    let [kernel] = cli.files.as_slice() else { return Err(format!("run takes one kernel file\n{USAGE}")) };
    let firmware = cli.firmwares[0];
    let ramdisk = if cli.guests.is_empty() {
        cli.ramdisk.clone()
    } else {
        Some(boot::guests::write_archive(&cli.guests, kernel)?)
    };
    let img = image::build(kernel, firmware, ramdisk.as_deref())?;
    let result = qemu::run(&img, &QemuOptions { firmware, ..cli.opts.clone() })?;
    if result.outcome != qemu::Outcome::Success {
        eprintln!("[boot] {} ({})", result.outcome.describe(), firmware.name());
    }
    Ok(result.outcome.exit_code())
}

fn run_suite(cli: &Cli) -> Result<i32, String> {
    if cli.files.is_empty() {
        return Err(format!("suite needs at least one image\n{USAGE}"));
    }
    let mut total = suite::SuiteTotals::default();
    for &firmware in &cli.firmwares {
        let t = suite::run(&cli.files, &QemuOptions { firmware, ..cli.opts.clone() });
        total.passed += t.passed;
        total.failed += t.failed;
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    Ok(if total.failed == 0 { 0 } else { 1 })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => parse(&args[1..]).and_then(|cli| run_one(&cli)),
        Some("suite") => parse(&args[1..]).and_then(|cli| run_suite(&cli)),
        Some(path) if !path.starts_with('-') => {
            // Cargo runner form: the kernel file first, then arguments meant for a test harness
            // (filters and the like), which a kernel image does not take.
            parse(&args[..1]).and_then(|cli| {
                // Cargo names test binaries `NAME-<hash>`: those run as a one-image suite, so
                // their expectations (e.g. the harness self-tests that must fail) apply.
                let file = std::path::Path::new(path).file_name().unwrap_or_default().to_string_lossy().into_owned();
                if suite::image_name(std::path::Path::new(path)) != file { run_suite(&cli) } else { run_one(&cli) }
            })
        }
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}
