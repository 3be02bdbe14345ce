//! The processes an agent starts (`weft sidecar` and `weft eastwest` run
//! Envoy and the app, `weft up` runs every component), tied to the
//! agent's life so that killing the agent, even with SIGKILL, leaves
//! nothing behind that would stop it from starting again.
//!
//! Three things make that hold:
//! - each child is started through `weft x tie`, which asks the kernel to
//!   send it SIGTERM when its parent dies (`PR_SET_PDEATHSIG`, kept across
//!   the `exec` into the real program) and then becomes that program;
//! - each child leads its own process group, so a stop reaches what the
//!   child started in turn (an app run through a shell, say);
//! - an agent instance owns a runtime directory, locked while it runs,
//!   that records its children. A new run of the same instance takes the
//!   lock (a live run holding it is refused with its pid), stops whatever
//!   the recorded children left running, and clears the files a previous
//!   run left (sockets, the bootstrap). A clean exit removes the directory.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};
use tokio::process::{Child, Command};

use crate::AgentError;
use crate::procfs;

type Result<T> = std::result::Result<T, AgentError>;

/// `weft x tie` is a command of the `weft` CLI, which reads this
/// variable's settings file: the child must not get the agent's.
const SETTINGS_FILE_ENV: &str = "WEFT_CONFIG_FILE";

/// An I/O error on the runtime directory's `path`.
fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AgentError + 'a {
    move |e| AgentError::file(what, path, e)
}

/// The lock a running instance holds; it names the holder's pid.
const LOCK: &str = "lock";
/// One line per child: `PID START NAME` (START: its start time in clock
/// ticks since boot, so a reused pid is not mistaken for the child).
const CHILDREN: &str = "children";
/// Files in the directory that outlive a crash on purpose.
const KEPT: [&str; 3] = [LOCK, CHILDREN, NODE];
/// The node id an instance chose for itself, reused after a crash so its
/// edge sees the same proxy come back rather than a new one.
pub const NODE: &str = "node";

/// Where agents keep their runtime directories when `--runtime-dir` is
/// not given: `$XDG_RUNTIME_DIR/weft`, else `/tmp/weft-UID`.
pub fn default_base() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("weft"),
        None => std::env::temp_dir().join(format!("weft-{}", rustix::process::getuid().as_raw())),
    }
}

/// An agent instance's runtime directory, held (locked) while it runs.
pub struct RuntimeDir {
    path: PathBuf,
    /// Held for the life of the run; the kernel releases it on any death.
    _lock: std::fs::File,
}

impl RuntimeDir {
    /// Takes `base/instance` for this run: refuses if a live run holds it,
    /// stops what a dead run's children left running, clears its files.
    /// Both directories are created private (0700); existing ones must
    /// be this user's (`base` may be root's), `base` writable by its owner
    /// only and `instance` private.
    pub fn claim(base: &Path, instance: &str) -> Result<RuntimeDir> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(base)
            .map_err(io("cannot create the runtime directory", base))?;
        // Nobody else may rename or replace what is in it.
        refuse_shared(base, 0o022)?;
        let path = base.join(instance);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(io("cannot create the runtime directory", &path))?;
        // Nobody else may read what is in it (the bootstrap holds a
        // credential), as a directory someone else made beforehand could.
        refuse_shared(&path, 0o077)?;
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path.join(LOCK))
            .map_err(io("cannot open the lock", &path))?;
        if let Err(std::fs::TryLockError::WouldBlock) = lock.try_lock() {
            let holder = std::fs::read_to_string(path.join(LOCK)).unwrap_or_default();
            return Err(AgentError::RuntimeDir(format!(
                "another process (pid {}) is using the runtime directory {}; \
                 hint: stop it first, or give this one other addresses",
                holder.trim(),
                path.display()
            )));
        }
        lock.set_len(0)
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(io("cannot write the lock", &path))?;
        let dir = RuntimeDir { path, _lock: lock };
        dir.stop_leftovers();
        dir.clear()?;
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Spawns `command` (made by [`tied`]) and records the child as `name`.
    /// Fails only if it cannot start; a child it cannot record is
    /// logged (tied, it dies with this process all the same).
    pub fn spawn(&self, name: &str, command: &mut Command) -> std::io::Result<Child> {
        let child = command.spawn()?;
        if let Some(pid) = child.id() {
            let start = procfs::stat(pid).map_or(0, |s| s.start);
            let path = self.path.join(CHILDREN);
            let recorded = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .and_then(|mut file| writeln!(file, "{pid} {start} {name}"));
            if let Err(error) = recorded {
                tracing::warn!(%error, path = %path.display(), name, pid, "cannot record a child");
            }
        }
        Ok(child)
    }

    /// The node id kept from a previous run of this instance, or `new`
    /// (then kept for the next).
    pub fn node_id(&self, new: impl FnOnce() -> String) -> Result<String> {
        let file = self.path.join(NODE);
        if let Ok(kept) = std::fs::read_to_string(&file)
            && !kept.trim().is_empty()
        {
            return Ok(kept.trim().to_string());
        }
        let node = new();
        std::fs::write(&file, format!("{node}\n"))
            .map_err(io("cannot keep the node id in", &file))?;
        Ok(node)
    }

    /// A clean exit: nothing is left to find.
    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }

    /// Stops every process group a previous run's children led that is
    /// still there: SIGTERM, then SIGKILL after 3 s.
    fn stop_leftovers(&self) {
        let recorded = std::fs::read_to_string(self.path.join(CHILDREN)).unwrap_or_default();
        let mut groups = Vec::new();
        for line in recorded.lines() {
            let mut fields = line.splitn(3, ' ');
            let (Some(Ok(pid)), Some(Ok(start)), name) = (
                fields.next().map(str::parse::<i32>),
                fields.next().map(str::parse::<u64>),
                fields.next().unwrap_or("child"),
            ) else {
                continue;
            };
            let members = group_members(pid, start);
            if !members.is_empty() {
                tracing::warn!(
                    name,
                    pid,
                    processes = members.len(),
                    "a previous run's child is still running; stopping it"
                );
                groups.push((pid, start));
            }
        }
        for (pid, _) in &groups {
            signal_group(*pid, Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while groups
            .iter()
            .any(|(pid, start)| !group_members(*pid, *start).is_empty())
        {
            if Instant::now() > deadline {
                for (pid, _) in &groups {
                    signal_group(*pid, Signal::KILL);
                }
                std::thread::sleep(Duration::from_millis(100));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Removes what a previous run left, but the lock, the node id and
    /// the (now empty) record of children.
    fn clear(&self) -> Result<()> {
        let entries = std::fs::read_dir(&self.path).map_err(io("cannot read", &self.path))?;
        for entry in entries {
            let entry = entry.map_err(io("cannot read", &self.path))?;
            let name = entry.file_name();
            if KEPT.iter().any(|kept| name == *kept) {
                continue;
            }
            let path = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(io("cannot remove what a previous run left:", &path))?;
        }
        let children = self.path.join(CHILDREN);
        std::fs::write(&children, "").map_err(io("cannot write", &children))?;
        let lock = self.path.join(LOCK);
        std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o600))
            .map_err(io("cannot make private", &lock))?;
        Ok(())
    }
}

/// Refuses `dir` unless this user (or, but for a private directory, root)
/// owns it and it has none of the permission bits in `forbidden`.
fn refuse_shared(dir: &Path, forbidden: u32) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir).map_err(io("cannot inspect", dir))?;
    let me = rustix::process::getuid().as_raw();
    let owner_ok = meta.uid() == me || (meta.uid() == 0 && forbidden != 0o077);
    if !meta.is_dir() || !owner_ok || meta.mode() & forbidden != 0 {
        return Err(AgentError::RuntimeDir(format!(
            "the runtime directory {} is not safe to use (owner uid {}, mode {:o}): it must be \
             a directory of this user's that others cannot change{}; \
             hint: pass --runtime-dir with a directory only you can use",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777,
            if forbidden == 0o077 { " or read" } else { "" },
        )));
    }
    Ok(())
}

/// A command that runs `program` tied to this process: through `weft x
/// tie`, in its own process group, killed if the handle is dropped.
/// Append the program's arguments with `.args`. Spawn it from a thread
/// that lives as long as the process (the main thread or a runtime
/// worker, never `spawn_blocking`): the kernel sends the signal when the
/// thread that forked the child ends.
pub fn tied(program: impl Into<OsString>) -> Command {
    let mut command = Command::new("/proc/self/exe");
    command
        .args([
            "x",
            "tie",
            "--parent",
            &std::process::id().to_string(),
            "--",
        ])
        .arg(program.into())
        // The settings file is this process's, not the child's.
        .env_remove(SETTINGS_FILE_ENV)
        .process_group(0)
        .kill_on_drop(true);
    command
}

/// Stops a child and what it started: SIGTERM to its process group so it
/// can drain, SIGKILL after 5 s.
pub async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        signal_group(pid as i32, Signal::TERM);
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
        signal_group(pid as i32, Signal::KILL);
    }
    let _ = child.kill().await;
}

/// `weft x tie`: asks for SIGTERM when `parent` dies, then becomes
/// `command`. Returns only if that fails, with why.
pub fn exec_tied(parent: u32, command: &[OsString]) -> String {
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = command.split_first() else {
        return "weft x tie: no program given".into();
    };
    if let Err(error) = rustix::process::set_parent_process_death_signal(Some(Signal::TERM)) {
        return format!("weft x tie: cannot ask for a parent-death signal: {error}");
    }
    // The parent may have died before the request above took effect.
    if rustix::process::getppid().map(|p| p.as_raw_pid() as u32) != Some(parent) {
        return format!("weft x tie: the parent (pid {parent}) is gone");
    }
    let error = std::process::Command::new(program).args(args).exec();
    format!("cannot run {}: {error}", Path::new(program).display())
}

fn signal_group(leader: i32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(leader) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// The live processes of this user in the group `leader` led, started no
/// earlier than it (`start`): a group whose number was reused by an
/// unrelated process started before is not ours.
fn group_members(leader: i32, start: u64) -> Vec<u32> {
    procfs::processes()
        .into_iter()
        .filter(|pid| procfs::stat(*pid).is_some_and(|s| s.group == leader && s.start >= start))
        .collect()
}

/// A child forked by one test holds another test's lock until it execs:
/// the tests that lock and those that fork take turns.
#[cfg(test)]
pub(crate) static FORKS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_live_instance_is_refused_and_a_dead_one_is_cleared() {
        let _turn = FORKS.blocking_lock();
        let base = tempfile::tempdir().unwrap();
        let first = RuntimeDir::claim(base.path(), "sidecar-a").unwrap();
        std::fs::write(first.path().join("sds.sock"), "").unwrap();
        let node = first.node_id(|| "reviews-1".into()).unwrap();
        let refused = RuntimeDir::claim(base.path(), "sidecar-a").err().unwrap();
        assert!(
            refused
                .to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{refused:#}"
        );
        drop(first);
        let second = RuntimeDir::claim(base.path(), "sidecar-a").unwrap();
        assert!(!second.path().join("sds.sock").exists());
        assert_eq!(second.node_id(|| "other".into()).unwrap(), node);
        second.remove();
        assert!(!base.path().join("sidecar-a").exists());
    }

    #[tokio::test]
    async fn a_previous_runs_child_still_running_is_stopped() {
        let _turn = FORKS.lock().await;
        let base = tempfile::tempdir().unwrap();
        let first = RuntimeDir::claim(base.path(), "sidecar-b").unwrap();
        // Not tied: it outlives the run that started it, as a child
        // somehow left behind would.
        let mut orphan = first
            .spawn("app", Command::new("sleep").arg("60").process_group(0))
            .unwrap();
        let pid = orphan.id().unwrap();
        drop(first);
        assert!(orphan.try_wait().unwrap().is_none(), "still running");
        let _second = RuntimeDir::claim(base.path(), "sidecar-b").unwrap();
        let status = tokio::time::timeout(Duration::from_secs(5), orphan.wait())
            .await
            .expect("the leftover is stopped")
            .unwrap();
        assert_eq!(status.signal(), Some(15), "pid {pid} got SIGTERM");
    }

    #[test]
    fn a_shared_base_directory_is_refused() {
        let base = tempfile::tempdir().unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = RuntimeDir::claim(base.path(), "x").err().unwrap();
        assert!(refused.to_string().contains("not safe"), "{refused:#}");
        // An instance directory others can read is refused too.
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(base.path().join("y"))
            .unwrap();
        let refused = RuntimeDir::claim(base.path(), "y").err().unwrap();
        assert!(refused.to_string().contains("or read"), "{refused:#}");
    }
}
