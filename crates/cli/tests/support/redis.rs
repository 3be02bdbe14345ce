//! A real Redis (`redis-server` from Debian's packages, installed by
//! `scripts/setup`) on a free loopback port, without persistence, stopped
//! when dropped. It can be stopped and started again on the same port.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Proc, free_port};

pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    process: Option<Proc>,
}

impl Redis {
    pub fn start(dir: &Path) -> Redis {
        let mut redis = Redis::stopped(dir);
        redis.resume();
        redis
    }

    /// One with its port chosen, not started yet.
    pub fn stopped(dir: &Path) -> Redis {
        Redis {
            port: free_port(),
            dir: dir.to_path_buf(),
            process: None,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL): what a crash or a lost host looks like.
    pub fn crash(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.0.kill();
            let _ = process.0.wait();
        }
    }

    /// Starts it (again) on its port, and waits until it answers.
    pub fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (install it with scripts/setup)");
        self.process = Some(Proc(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
