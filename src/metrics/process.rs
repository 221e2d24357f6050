//! Process metrics in the names Prometheus' own clients use
//! (`process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_cpu_seconds_total`, `process_start_time_seconds`), read from
//! `/proc/self` at each scrape. Elsewhere than Linux they are left out.
//!
//! Reads files only; a value that cannot be read is skipped, never guessed.

/// Clock ticks per second of `/proc/<pid>/stat` times: USER_HZ, 100 on every
/// Linux architecture postern builds for (the kernel converts to it).
const USER_HZ: f64 = 100.0;

/// Series names.
pub const RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
pub const OPEN_FDS: &str = "process_open_fds";
pub const MAX_FDS: &str = "process_max_fds";
pub const CPU_SECONDS: &str = "process_cpu_seconds_total";
pub const START_TIME: &str = "process_start_time_seconds";

pub fn describe() {
    use metrics::{Unit, describe_gauge};
    describe_gauge!(RESIDENT_MEMORY, Unit::Bytes, "Resident memory size");
    describe_gauge!(OPEN_FDS, "Open file descriptors");
    describe_gauge!(MAX_FDS, "Limit of open file descriptors");
    describe_gauge!(CPU_SECONDS, Unit::Seconds, "User and system CPU time spent");
    describe_gauge!(
        START_TIME,
        Unit::Seconds,
        "Start time of the process since the Unix epoch"
    );
}

/// Sets every process gauge from `/proc/self` (called before each render).
pub fn update() {
    let Some(sample) = read() else {
        return;
    };
    metrics::gauge!(RESIDENT_MEMORY).set(sample.resident_bytes as f64);
    metrics::gauge!(OPEN_FDS).set(sample.open_fds as f64);
    if let Some(max) = sample.max_fds {
        metrics::gauge!(MAX_FDS).set(max as f64);
    }
    metrics::gauge!(CPU_SECONDS).set(sample.cpu_seconds);
    if let Some(start) = sample.start_time {
        metrics::gauge!(START_TIME).set(start);
    }
}

/// One reading of the process.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub resident_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub cpu_seconds: f64,
    pub start_time: Option<f64>,
}

/// The current process's figures, or `None` where `/proc` is not Linux's.
pub fn read() -> Option<Sample> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (utime, stime, start_ticks) = parse_stat(&stat)?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| parse_max_open_files(&text));
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| parse_boot_time(&text));
    Some(Sample {
        resident_bytes: parse_vm_rss(&status)?,
        // read_dir's own descriptor is counted while listing: leave it out.
        open_fds: open_fds.saturating_sub(1),
        max_fds,
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        start_time: boot_time.map(|boot| boot as f64 + start_ticks as f64 / USER_HZ),
    })
}

/// `VmRSS:   1234 kB` in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// utime, stime and starttime (fields 14, 15 and 22) of `/proc/self/stat`. The
/// command name (field 2) may hold spaces and parentheses: fields are counted
/// from the last `)`.
fn parse_stat(stat: &str) -> Option<(u64, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)?, field(15)?, field(22)?))
}

/// The soft limit in `Max open files  1024  4096  files`.
fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime 1700000000` of `/proc/stat`.
fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t  2048 kB\n"),
            Some(2048 * 1024)
        );
        let stat = "42 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0 12345 0 0";
        assert_eq!(parse_stat(stat), Some((250, 50, 12345)));
        let limits = "Limit Soft Hard Units\nMax open files            65536                65536                files\n";
        assert_eq!(parse_max_open_files(limits), Some(65536));
        assert_eq!(
            parse_boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_plausibly() {
        let sample = read().expect("a Linux /proc");
        assert!(sample.resident_bytes > 1024 * 1024, "{sample:?}");
        assert!(sample.open_fds >= 3, "{sample:?}");
        assert!(sample.cpu_seconds >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = sample.start_time.expect("btime");
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start}"
        );
    }
}
