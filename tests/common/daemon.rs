//! A running stratad for tests: started with its API socket, waited for until RUNNING,
//! stopped by PID with SIGTERM (then SIGKILL) and unmounted on drop, also when a test fails.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The stratad binary of this build.
pub fn stratad_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stratad"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub fn is_mounted(p: &Path) -> bool {
    let canon = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(canon.to_str().unwrap_or("")))
}

/// A running stratad: stopped with SIGTERM (then SIGKILL) and unmounted on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub mnt: PathBuf,
    pub sock: PathBuf,
}

impl Daemon {
    pub fn start(args: &[&str], mnt: &Path, sock: &Path) -> Daemon {
        let child = Command::new(stratad_bin())
            .args(args)
            .args(["--mountpoint", s(mnt), "--apisock", s(sock), "--log-level", "warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stratad");
        let mut d = Daemon { child: Some(child), mnt: mnt.to_path_buf(), sock: sock.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let mut err = String::new();
                if let Some(e) = d.child.as_mut().and_then(|c| c.stderr.as_mut()) {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("stratad exited early ({st}): {err}");
            }
            if is_mounted(mnt) && sock.exists() {
                if let Ok((200, body)) = http(sock, "GET", "/api/v1/daemon", None) {
                    if body.contains("RUNNING") {
                        return d;
                    }
                }
            }
            assert!(Instant::now() < deadline, "stratad did not reach RUNNING in 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn api(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = http(&self.sock, method, path, None).expect("API request");
        (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
    }

    /// SIGKILL and wait (a crash: nothing is flushed); the guard still unmounts.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// Minimal HTTP/1.1 over a unix socket.
pub fn http(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut c = UnixStream::connect(sock)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    c.read_to_string(&mut out)?;
    let status = out.split(' ').nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}
