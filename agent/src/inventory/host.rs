//! Host facts from the kernel: name, OS, CPU, memory, and the disk under the data dir.

use std::path::PathBuf;

use comfyfleet_config::HostInfo;

pub struct HostProbe {
    data_dir: PathBuf,
    hostname_override: Option<String>,
}

impl HostProbe {
    pub fn new(data_dir: PathBuf, hostname_override: Option<String>) -> Self {
        Self { data_dir, hostname_override }
    }

    pub fn probe(&self) -> HostInfo {
        let uname = rustix::system::uname();
        let text = |value: &std::ffi::CStr| value.to_string_lossy().into_owned();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let (data_dir_free_bytes, data_dir_total_bytes) = disk_space(&self.data_dir);
        HostInfo {
            hostname: self.hostname_override.clone().unwrap_or_else(|| text(uname.nodename())),
            os: os_name(&std::fs::read_to_string("/etc/os-release").unwrap_or_default()),
            kernel: text(uname.release()),
            arch: text(uname.machine()),
            cpu_model: cpu_model(&cpuinfo),
            cpu_cores: cpu_count(&cpuinfo),
            memory_total_bytes: memory_total(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default()),
            data_dir_free_bytes,
            data_dir_total_bytes,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            problems: crate::identity::IdentityDir::new(&self.data_dir)
                .missing_problem()
                .into_iter()
                .collect(),
        }
    }
}

/// The machine's hostname as the kernel knows it.
pub fn kernel_hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

fn os_name(os_release: &str) -> String {
    let value = |key: &str| {
        os_release
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('=').map(|v| v.trim_matches('"')))
    };
    value("PRETTY_NAME").or_else(|| value("NAME")).unwrap_or("Linux").to_owned()
}

fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|line| {
            let (key, value) = line.split_once(':')?;
            matches!(key.trim(), "model name" | "Model" | "cpu model").then(|| value.trim().to_owned())
        })
        .unwrap_or_default()
}

/// Logical CPUs of the machine (not of this process's cgroup).
fn cpu_count(cpuinfo: &str) -> u32 {
    let listed = cpuinfo
        .lines()
        .filter(|line| line.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count();
    let count = if listed > 0 { listed } else { std::thread::available_parallelism().map_or(1, usize::from) };
    u32::try_from(count).unwrap_or(u32::MAX)
}

fn memory_total(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix("MemTotal:")?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn disk_space(path: &std::path::Path) -> (u64, u64) {
    match rustix::fs::statvfs(path) {
        Ok(stat) => {
            (stat.f_bavail.saturating_mul(stat.f_frsize), stat.f_blocks.saturating_mul(stat.f_frsize))
        }
        Err(_) => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(
            os_name("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            "Debian GNU/Linux 12 (bookworm)"
        );
        assert_eq!(cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 9354\n"), "AMD EPYC 9354");
        assert_eq!(cpu_count("processor\t: 0\nprocessor\t: 1\n"), 2);
        assert_eq!(memory_total("MemTotal:       16384 kB\n"), 16384 * 1024);
    }

    #[test]
    fn probes_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostProbe::new(dir.path().to_owned(), Some("render-01".into())).probe();
        assert_eq!(host.hostname, "render-01");
        assert!(host.cpu_cores >= 1 && host.memory_total_bytes > 0 && host.data_dir_total_bytes > 0);
        assert!(!host.kernel.is_empty());
    }
}
