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

    /// User plus system CPU seconds of each process, in the order given.
    pub(crate) fn cpu_seconds_each(&self) -> Result<Vec<f64>, String> {
        self.pids
            .iter()
            .map(|pid| cpu_seconds(&format!("/proc/{pid}/stat"), self.ticks))
            .collect()
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

/// A process and all its children, such as a PostgreSQL server's postmaster
/// and the backend process that it starts for each connection.
///
/// Children come and go during a run, so the CPU time sums three parts:
/// the root's own time, the time of its ended children (`cutime` and
/// `cstime`, which count every child that the root has waited for), and
/// the time of the children alive now. A difference of two readings is then
/// the tree's CPU time in between. The exception is a child that ends
/// between the scan of `/proc` and the read of the root's line, which a
/// reading counts twice or not at all.
#[derive(Debug, Clone)]
pub(crate) struct ProcessTree {
    root: u32,
    ticks: f64,
}

impl ProcessTree {
    pub(crate) fn new(root: u32) -> ProcessTree {
        ProcessTree {
            root,
            ticks: clock_ticks(),
        }
    }

    /// User plus system CPU seconds of the root, its ended children and its
    /// live children.
    pub(crate) fn cpu_seconds(&self) -> Result<f64, String> {
        let mut total = 0.0;
        let entries =
            fs::read_dir("/proc").map_err(|error| format!("cannot read /proc: {error}"))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|name| name.parse::<u32>().ok()) else {
                continue;
            };
            // A process may end between the listing and the read.
            let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let fields = stat_fields(&text);
            if fields.get(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(self.root) {
                total += stat_seconds(&fields, &[11, 12], self.ticks).unwrap_or(0.0);
            }
        }
        let path = format!("/proc/{}/stat", self.root);
        let text =
            fs::read_to_string(&path).map_err(|error| format!("cannot read {path}: {error}"))?;
        let fields = stat_fields(&text);
        total += stat_seconds(&fields, &[11, 12, 13, 14], self.ticks)
            .ok_or_else(|| format!("{path} has no CPU time fields"))?;
        Ok(total)
    }
}

/// Splits a `/proc/PID/stat` line into the fields after the command name.
/// Index 0 is then field 3 (`state`), 1 is `ppid`, 11 and 12 are `utime`
/// and `stime`, and 13 and 14 are `cutime` and `cstime`. The command name
/// in field 2 may contain spaces, so fields are counted from the last `)`.
fn stat_fields(text: &str) -> Vec<&str> {
    text.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// Sums the clock-tick fields at `indexes` of [`stat_fields`], in seconds.
fn stat_seconds(fields: &[&str], indexes: &[usize], ticks: f64) -> Option<f64> {
    let mut total = 0.0;
    for &index in indexes {
        total += fields.get(index)?.parse::<f64>().ok()?;
    }
    Some(total / ticks)
}

/// CPU seconds of this process (the load tool itself).
pub(crate) fn own_cpu_seconds() -> f64 {
    cpu_seconds("/proc/self/stat", clock_ticks()).unwrap_or(f64::NAN)
}

fn cpu_seconds(path: &str, ticks: f64) -> Result<f64, String> {
    let text = fs::read_to_string(path).map_err(|error| format!("cannot read {path}: {error}"))?;
    // utime and stime are fields 14 and 15 of the line.
    stat_seconds(&stat_fields(&text), &[11, 12], ticks)
        .ok_or_else(|| format!("{path} has no CPU time fields"))
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

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::Duration;

    use super::*;

    #[test]
    fn stat_fields_skip_command_with_spaces() {
        let line = "42 (postgres: a b) S 7 42 42 0 -1 0 0 0 0 0 150 50 20 10 20 0";
        let fields = stat_fields(line);
        assert_eq!(fields[1], "7");
        assert_eq!(stat_seconds(&fields, &[11, 12], 100.0), Some(2.0));
        assert_eq!(stat_seconds(&fields, &[13, 14], 100.0), Some(0.3));
    }

    #[test]
    fn process_tree_counts_ended_children() {
        let tree = ProcessTree::new(std::process::id());
        let before = tree.cpu_seconds().unwrap();
        let mut child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        child.kill().unwrap();
        child.wait().unwrap();
        let used = tree.cpu_seconds().unwrap() - before;
        // The busy child ran for 0.5 s. A shared machine may give it less
        // than a whole core, so the check asks for a tenth of that.
        assert!(used >= 0.05, "the tree used {used} s");
    }
}
