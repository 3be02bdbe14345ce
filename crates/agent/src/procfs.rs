//! What `/proc` says of a process: its parent, group, start time and
//! memory. Linux only, as weft's agents are.

/// The fields of `/proc/PID/stat` weft reads.
pub struct Stat {
    pub parent: u32,
    pub group: i32,
    /// Clock ticks since boot: with the pid, names one process for good.
    pub start: u64,
}

/// `pid`'s stat, or None if it is gone or a zombie (which holds nothing).
pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start after the last ')'.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    // state(3) ppid(4) pgrp(5) ... starttime(22), counted from 1.
    if fields.first() == Some(&"Z") {
        return None;
    }
    Some(Stat {
        parent: fields.get(1)?.parse().ok()?,
        group: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// Every live process of this user.
pub fn processes() -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let uid = rustix::process::getuid().as_raw();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == uid))
        .collect()
}

/// The live children of `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|pid| stat(*pid).is_some_and(|s| s.parent == parent))
        .collect()
}

/// Resident memory in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The program name the kernel keeps (`comm`), e.g. `envoy`.
pub fn program(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|name| name.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let stat = stat(me).unwrap();
        assert!(stat.start > 0);
        assert_eq!(stat.group, rustix::process::getpgrp().as_raw_pid());
        assert_eq!(
            Some(stat.parent),
            rustix::process::getppid().map(|p| p.as_raw_pid() as u32)
        );
        assert!(rss(me).unwrap() > 1 << 20);
        assert!(processes().contains(&me));
    }

    #[test]
    fn finds_a_child_and_its_name() {
        let _turn = crate::children::FORKS.blocking_lock();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(children_of(std::process::id()).contains(&pid));
        assert_eq!(program(pid).as_deref(), Some("sleep"));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(stat(pid).is_none());
    }
}
