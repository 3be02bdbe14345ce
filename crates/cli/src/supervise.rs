//! How `weft up` runs its components: each is a `weft` command, tied to
//! `weft up`'s life (`children`), with its output in its own log. Once the
//! mesh is up, a component that crashes (killed, or a non-zero exit) is
//! started again with the same command after a short backoff, so any
//! process can be killed and the mesh heals; one that exits cleanly
//! (SIGTERM, exit 0) was asked to stop and stays stopped.
//!
//! The running components and their pids are kept in
//! `RUNTIME/components.json`, for tools that watch or break the mesh
//! (`weft x chaos`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::process::Child;

use weft_agent::children::{self, RuntimeDir};

/// The file in the runtime directory that lists the running components.
pub const COMPONENTS: &str = "components.json";

/// A component that runs longer than this before crashing starts the
/// backoff over.
const STABLE: Duration = Duration::from_secs(30);

/// What `components.json` says of one component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Running {
    pub name: String,
    /// `server`, `edge`, `eastwest` or `sidecar`.
    pub kind: String,
    /// None while it waits to be started again, or after a clean exit.
    pub pid: Option<u32>,
    /// Times it was started again after a crash.
    pub restarts: u32,
    /// For an edge: its admin address (`/status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
}

/// One component: the `weft` arguments that start it, and its process.
pub struct Component {
    running: Running,
    args: Vec<OsString>,
    child: Option<Child>,
    log: PathBuf,
    started: Instant,
    /// Crashes in a row, each within `STABLE` of its start.
    crashes: u32,
    restart_at: Option<Instant>,
}

impl Component {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The end of its log, to say why it stopped.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// The components of one `weft up`, stopped in reverse order of start.
pub struct Mesh {
    exe: PathBuf,
    runtime: RuntimeDir,
    logs: PathBuf,
    components: Vec<Component>,
}

/// The wait before the `crashes`th start in a row: 0.5 s, doubling, at
/// most 10 s.
fn backoff(crashes: u32) -> Duration {
    Duration::from_millis(250 << crashes.clamp(1, 6)).min(Duration::from_secs(10))
}

impl Mesh {
    pub fn new(exe: &Path, runtime: RuntimeDir, logs: &Path) -> Mesh {
        Mesh {
            exe: exe.to_path_buf(),
            runtime,
            logs: logs.to_path_buf(),
            components: Vec::new(),
        }
    }

    pub fn runtime(&self) -> &Path {
        self.runtime.path()
    }

    /// Starts `weft ARGS` as component `name` of `kind`, its log truncated.
    pub fn start(&mut self, name: &str, kind: &str, args: Vec<OsString>) -> Result<&mut Component> {
        let log = self.logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = self.spawn(name, &args, file)?;
        self.components.push(Component {
            running: Running {
                name: name.to_string(),
                kind: kind.to_string(),
                pid: child.id(),
                restarts: 0,
                admin: None,
            },
            args,
            child: Some(child),
            log,
            started: Instant::now(),
            crashes: 0,
            restart_at: None,
        });
        self.write_state();
        Ok(self.components.last_mut().expect("just pushed"))
    }

    fn spawn(&self, name: &str, args: &[OsString], log: std::fs::File) -> Result<Child> {
        self.runtime
            .spawn(
                name,
                children::tied(&self.exe)
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log),
            )
            .with_context(|| format!("cannot start the {name}"))
    }

    /// Names an edge's admin address in `components.json`.
    pub fn set_admin(&mut self, name: &str, admin: &str) {
        if let Some(c) = self.components.iter_mut().find(|c| c.running.name == name) {
            c.running.admin = Some(admin.to_string());
        }
        self.write_state();
    }

    /// Replaces the arguments a component is started again with (the
    /// server, once its ports are known: a restart keeps them).
    pub fn set_args(&mut self, name: &str, args: Vec<OsString>) {
        if let Some(c) = self.components.iter_mut().find(|c| c.running.name == name) {
            c.args = args;
        }
    }

    /// While the mesh starts: fails with the component's log if one has
    /// already exited.
    pub fn check(&mut self) -> Result<()> {
        for component in &mut self.components {
            if let Some(Ok(Some(status))) = component.child.as_mut().map(Child::try_wait) {
                bail!(
                    "the {} stopped ({status}); the end of its log ({}):\n{}",
                    component.running.name,
                    component.log.display(),
                    component.log_tail()
                );
            }
        }
        Ok(())
    }

    /// Restarts crashed components, for as long as it is polled.
    pub async fn supervise(&mut self) {
        loop {
            let mut changed = false;
            for i in 0..self.components.len() {
                changed |= self.look_after(i);
            }
            if changed {
                self.write_state();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Notices component `i` exiting and starts it again when due;
    /// whether anything changed.
    fn look_after(&mut self, i: usize) -> bool {
        let component = &mut self.components[i];
        let exited = match component.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(status),
            _ => None,
        };
        if let Some(status) = exited {
            component.child = None;
            component.running.pid = None;
            let name = &component.running.name;
            if status.success() {
                eprintln!("weft up: the {name} stopped (exit 0); it stays stopped");
                return true;
            }
            component.crashes = if component.started.elapsed() > STABLE {
                1
            } else {
                component.crashes + 1
            };
            let wait = backoff(component.crashes);
            eprintln!(
                "weft up: the {name} stopped ({status}); starting it again in {} (log {})",
                humantime::format_duration(wait),
                component.log.display()
            );
            component.restart_at = Some(Instant::now() + wait);
            return true;
        }
        if component.restart_at.is_none_or(|at| Instant::now() < at) {
            return false;
        }
        let (name, args, log) = (
            component.running.name.clone(),
            component.args.clone(),
            component.log.clone(),
        );
        let started = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .map_err(anyhow::Error::from)
            .and_then(|mut file| {
                use std::io::Write;
                writeln!(file, "--- weft up: started again after a crash ---")?;
                self.spawn(&name, &args, file)
            });
        let component = &mut self.components[i];
        match started {
            Ok(child) => {
                component.running.pid = child.id();
                component.running.restarts += 1;
                component.child = Some(child);
                component.started = Instant::now();
                component.restart_at = None;
                eprintln!("weft up: the {name} runs again");
            }
            Err(error) => {
                component.crashes += 1;
                let wait = backoff(component.crashes);
                eprintln!(
                    "weft up: cannot start the {name} again ({error:#}); next try in {wait:?}"
                );
                component.restart_at = Some(Instant::now() + wait);
            }
        }
        true
    }

    /// Stops every component, the last started first.
    pub async fn stop(mut self) {
        while let Some(mut component) = self.components.pop() {
            if let Some(child) = component.child.as_mut() {
                children::stop(child).await;
            }
        }
        self.runtime.remove();
    }

    /// Rewrites `components.json` (whole, then renamed into place).
    fn write_state(&self) {
        let running: Vec<&Running> = self.components.iter().map(|c| &c.running).collect();
        let path = self.runtime.path().join(COMPONENTS);
        let partial = path.with_extension("json.partial");
        let written = serde_json::to_vec_pretty(&running)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&partial, bytes))
            .and_then(|()| std::fs::rename(&partial, &path));
        if let Err(error) = written {
            tracing::warn!(%error, path = %path.display(), "cannot record the running components");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_to_ten() {
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]);
    }
}
