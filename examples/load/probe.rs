//! Reads CPU time and memory of processes from Linux's `/proc`.

use std::fs;

/// Clock ticks per second of the `utime` and `stime` fields in
/// `/proc/PID/stat`, from `getconf CLK_TCK`; 100 when that fails, the value
/// on every mainstream Linux architecture.
pub(crate) fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A set of processes whose resources are summed, such as an nginx master
/// and its workers.
#[derive(Debug, Clone)]
pub(crate) struct Processes {
    pids: Vec<u32>,
    ticks: f64,
}

impl Processes {
    pub(crate) fn new(pids: Vec<u32>) -> Processes {
        Processes {
            pids,
            ticks: clock_ticks(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    /// User plus system CPU seconds of all the processes.
    pub(crate) fn cpu_seconds(&self) -> Result<f64, String> {
        let mut total = 0.0;
        for pid in &self.pids {
            total += cpu_seconds(&format!("/proc/{pid}/stat"), self.ticks)?;
        }
        Ok(total)
    }

    /// Resident set size in KiB (`VmRSS`), summed; pages shared between the
    /// processes count once per process.
    pub(crate) fn rss_kib(&self) -> Result<u64, String> {
        self.sum_field("status", "VmRSS:")
    }

    /// Proportional set size in KiB (`Pss` in `smaps_rollup`), summed; a
    /// shared page is split among the processes that map it.
    pub(crate) fn pss_kib(&self) -> Result<u64, String> {
        self.sum_field("smaps_rollup", "Pss:")
    }

    fn sum_field(&self, file: &str, field: &str) -> Result<u64, String> {
        let mut total = 0;
        for pid in &self.pids {
            let path = format!("/proc/{pid}/{file}");
            let text = fs::read_to_string(&path)
                .map_err(|error| format!("cannot read {path}: {error}"))?;
            let value = text
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|number| number.parse::<u64>().ok())
                .ok_or_else(|| format!("{path} has no {field} line"))?;
            total += value;
        }
        Ok(total)
    }
}

/// CPU seconds of this process (the load tool itself).
pub(crate) fn own_cpu_seconds() -> f64 {
    cpu_seconds("/proc/self/stat", clock_ticks()).unwrap_or(f64::NAN)
}

fn cpu_seconds(path: &str, ticks: f64) -> Result<f64, String> {
    let text = fs::read_to_string(path).map_err(|error| format!("cannot read {path}: {error}"))?;
    // The command name in field 2 may contain spaces, so fields are counted
    // from the last ')': utime and stime are fields 14 and 15 of the line.
    let after_name = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("{path} has no command name"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let parse = |index: usize| -> Result<f64, String> {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .ok_or_else(|| format!("{path} has no CPU time field {}", index + 3))
    };
    Ok((parse(11)? + parse(12)?) / ticks)
}

/// CPU seconds of the calling thread, and the file they were read from.
///
/// It reads the run time in nanoseconds from `/proc/thread-self/schedstat`,
/// which kernels built with `CONFIG_SCHED_INFO` provide, and falls back to
/// `utime` plus `stime` in `/proc/thread-self/stat`, which counts whole
/// clock ticks (10 ms at 100 per second). Both are the thread's user plus
/// system time.
pub(crate) fn thread_cpu_seconds() -> Result<(f64, &'static str), String> {
    const SCHEDSTAT: &str = "/proc/thread-self/schedstat";
    let nanoseconds = fs::read_to_string(SCHEDSTAT).ok().and_then(|text| {
        text.split_whitespace()
            .next()
            .and_then(|field| field.parse::<u64>().ok())
    });
    match nanoseconds {
        Some(nanoseconds) => Ok((nanoseconds as f64 / 1e9, SCHEDSTAT)),
        None => {
            const STAT: &str = "/proc/thread-self/stat";
            Ok((cpu_seconds(STAT, clock_ticks())?, STAT))
        }
    }
}
