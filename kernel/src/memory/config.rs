//! The boot configuration of the memory manager (`run-qemu.sh --config "key=value,..."`, QEMU's
//! fw_cfg file `opt/vmk/config`): parsed once at [`super::init`], read through [`config`].

use spin::Once;

/// Settings of the memory manager that can be changed at boot (`run-qemu.sh --config
/// "key=value,..."`, read from QEMU's fw_cfg file `opt/vmk/config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryConfig {
    /// `critical_reserve_percent`: the part of the commit limit only critical requests may use
    /// (host-abi §5: eAppDomainCritical may use half of it, eProcessCritical all). Default 6.
    pub critical_reserve_percent: u64,
    /// `low_threshold_percent`: free commit below this share of the limit is
    /// `eMemoryAvailableLow`. Default 12.
    pub low_threshold_percent: u64,
    /// `high_threshold_percent`: free commit above this share is `eMemoryAvailableHigh`. Default 25.
    pub high_threshold_percent: u64,
    /// `commit_limit_mb`: caps the commit limit (to show behaviour under pressure); default: none,
    /// the limit is what the frames allow.
    pub commit_limit_mb: Option<u64>,
    /// `guest_cpu_limit_s`: the CPU time a guest may use before it is ended with
    /// HOST_E_TIMEOUT (host-abi §10.1); 0, the default, is no limit. Not a memory setting, but
    /// read with the others from the same boot configuration (`crate::guest::cpu_time`).
    pub guest_cpu_limit_s: u64,
    /// `guest_wall_limit_s`: the time a guest may take from its start, running or not, before it
    /// is ended with HOST_E_TIMEOUT; 0, the default, is no limit. The CPU-time limit does not end
    /// a guest whose threads all sleep (they use no CPU time); this one does.
    pub guest_wall_limit_s: u64,
    /// `zero_idle`: 1 (the default) lets a CPU with nothing to run zero free frames ahead of
    /// demand-zero faults (Windows' zero-page thread; `frames::zero_ahead`), up to 16 MiB; 0
    /// zeroes every frame on its fault. In a virtual machine zeroing ahead also makes the host
    /// back guest memory before the guest touches it.
    pub zero_idle: bool,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { critical_reserve_percent: 6, low_threshold_percent: 12, high_threshold_percent: 25, commit_limit_mb: None, guest_cpu_limit_s: 0, guest_wall_limit_s: 0, zero_idle: true }
    }
}

impl MemoryConfig {
    /// The defaults overridden by the boot configuration; unknown keys and bad values are reported
    /// and ignored.
    pub fn from_boot() -> MemoryConfig {
        let mut c = MemoryConfig::default();
        for (key, value) in crate::arch::fw_cfg::config_pairs() {
            let Ok(n) = value.parse::<u64>() else {
                log::warn!("config: {key}={value}: not a number, ignored");
                continue;
            };
            match key.as_str() {
                "critical_reserve_percent" if n <= 50 => c.critical_reserve_percent = n,
                "low_threshold_percent" if n <= 100 => c.low_threshold_percent = n,
                "high_threshold_percent" if n <= 100 => c.high_threshold_percent = n,
                "commit_limit_mb" if n > 0 => c.commit_limit_mb = Some(n),
                "guest_cpu_limit_s" => c.guest_cpu_limit_s = n,
                "guest_wall_limit_s" => c.guest_wall_limit_s = n,
                "zero_idle" if n <= 1 => c.zero_idle = n == 1,
                _ => {
                    log::warn!("config: {key}={value}: unknown key or out of range, ignored");
                    continue;
                }
            }
            log::info!("config: {key}={n}");
        }
        if c.high_threshold_percent < c.low_threshold_percent {
            c.high_threshold_percent = c.low_threshold_percent;
        }
        c
    }
}

pub(super) static CONFIG: Once<MemoryConfig> = Once::new();

/// The memory configuration in force (defaults before [`super::init`]).
pub fn config() -> MemoryConfig {
    CONFIG.get().copied().unwrap_or_default()
}

