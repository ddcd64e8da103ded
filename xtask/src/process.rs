//! The processes the benchmarks start and watch: a child with its output lines on a channel,
//! and what `/proc` says of a process (memory, CPU time, descriptors).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{log, run};

/// Reads `r` to its end (or its first error) in 64 KiB reads, keeping nothing: the bytes read.
/// (`std::io::copy` into a sink would read 8 KiB at a time, and cost the benchmarked sink more.)
pub fn drain(mut r: impl Read) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    while let Ok(k) = r.read(&mut buf) {
        if k == 0 {
            break;
        }
        total += k as u64;
    }
    total
}

/// A child process whose stdout lines arrive, timestamped, on a channel (and are copied to a
/// log file); killed with SIGKILL if still running when dropped.
pub struct Proc {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command, log_path: &Path) -> Result<Self> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut stdout_log = stderr.try_clone()?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("could not start {cmd:?}"))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(stdout_log, "STDOUT {line}");
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            name,
            child,
            lines: rx,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line starting with `prefix` (after trimming), up to `timeout`.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Result<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, line)) if line.trim_start().starts_with(prefix) => {
                    return Ok((t, line.trim().to_string()))
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("{}: no line {prefix:?} within {timeout:?}", self.name)
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("{}: exited before printing {prefix:?}", self.name)
                }
            }
        }
    }

    /// Lines printed so far that start with `prefix`.
    pub fn drain_matching(&mut self, prefix: &str) -> Vec<(Instant, String)> {
        self.lines
            .try_iter()
            .filter(|(_, l)| l.starts_with(prefix))
            .collect()
    }

    pub fn signal(&self, sig: &str) -> Result<()> {
        run(Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string()))
    }

    /// SIGKILL, and wait for it to end.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        self.signal("TERM")?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        log(&format!("{} did not stop in {grace:?}: SIGKILL", self.name));
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Two fields of `/proc/{which}/stat` added, by their 1-based numbers in proc(5).
fn stat_sum(which: &str, a: usize, b: usize) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{which}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let after = stat.rsplit_once(") ").map(|(_, a)| a).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |n: usize| {
        f.get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("reading field {n} of /proc/{which}/stat"))
    };
    Ok(get(a)? + get(b)?)
}

/// utime + stime (fields 14 and 15) of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    stat_sum(&pid.to_string(), 14, 15)
}

pub fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// CPU time (user and system) of this process's waited-for children (cutime and cstime, fields
/// 16 and 17), in milliseconds.
pub fn children_cpu_ms() -> Result<f64> {
    Ok(stat_sum("self", 16, 17)? as f64 * 1000.0 / clock_ticks_per_sec())
}

/// CPU time (user and system) that process `pid` has used, in milliseconds.
pub fn cpu_ms(pid: u32) -> Result<f64> {
    Ok(cpu_ticks(pid)? as f64 * 1000.0 / clock_ticks_per_sec())
}

/// Open file descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}
