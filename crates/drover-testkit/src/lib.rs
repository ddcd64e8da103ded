//! Runs the real `drover` binary in temporary directories on loopback for end-to-end tests:
//! a server (which binds port 0 and prints the address it got), agents, and CLI calls. Waits
//! are on events (a line in a log, a condition on the API) with a deadline, never fixed sleeps.
//! Every child gets SIGTERM, then SIGKILL, when its handle drops.

pub mod browser;
pub mod fleet;
pub mod wire;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long an event may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Lines a child printed, shared with the threads that read its pipes.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

/// A running child process.
pub struct Proc {
    name: String,
    child: Option<Child>,
    out: Arc<Lines>,
}

fn pump(reader: impl std::io::Read + Send + 'static, lines: Arc<Lines>, echo: String) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            // Echo for the test's own output (shown when a test fails).
            eprintln!("[{echo}] {line}");
            if let Ok(mut l) = lines.lines.lock() {
                l.push(line);
            }
            lines.changed.notify_all();
        }
    });
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .env("DROVER_LOG", "info");
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let out = Arc::new(Lines::default());
        if let Some(o) = child.stdout.take() {
            pump(o, out.clone(), name.to_string());
        }
        if let Some(e) = child.stderr.take() {
            pump(e, out.clone(), name.to_string());
        }
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            out,
        })
    }

    /// Waits until a line containing `needle` has been printed (stdout or stderr), and returns it.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        self.wait_for_lines(needle, 1, timeout)
    }

    /// Waits until `count` lines containing `needle` have been printed; returns the last.
    pub fn wait_for_lines(
        &self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self
            .out
            .lines
            .lock()
            .map_err(|_| anyhow::anyhow!("log lock poisoned"))?;
        loop {
            let found: Vec<&String> = lines.iter().filter(|l| l.contains(needle)).collect();
            if found.len() >= count {
                return Ok(found.last().map(|s| s.to_string()).unwrap_or_default());
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "{}: no line containing {needle:?} within {timeout:?}; last lines:\n{}",
                    self.name,
                    lines
                        .iter()
                        .rev()
                        .take(15)
                        .rev()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            lines = self
                .out
                .changed
                .wait_timeout(lines, deadline - now)
                .map_err(|_| anyhow::anyhow!("log lock poisoned"))?
                .0;
        }
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.out
            .lines
            .lock()
            .map(|l| l.join("\n"))
            .unwrap_or_default()
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("already reaped")?;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            // Polling a child's exit status: the only portable wait with a deadline.
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }

    /// The exit status, if the process has exited (reaps it); `None` while it runs.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and returns at once; see [`Proc::wait_exit`].
    pub fn sigterm(&self) {
        let Some(c) = self.child.as_ref() else { return };
        if let Some(pid) = i32::try_from(c.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::Term);
        }
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(c.id()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::Term);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::park_timeout(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `drover` binary under test and a temporary directory for everything it writes.
pub struct Env {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new(bin: &str) -> anyhow::Result<Self> {
        Ok(Self {
            bin: PathBuf::from(bin),
            dir: tempfile::tempdir()?,
        })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A command for the binary with the CLI config inside the temp dir.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("DROVER_CONFIG", self.path("cli.toml"))
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .current_dir(self.dir.path());
        c
    }

    /// Runs a CLI verb to completion.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = self
            .command()
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .with_context(|| format!("running drover {}", args.join(" ")))?;
        Ok(out)
    }

    /// Runs a CLI verb that must succeed; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "drover {} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a server on 127.0.0.1 (port 0 unless `port` is given) and logs the CLI in to it.
    pub fn start_server(&self, port: u16, extra: &[&str]) -> anyhow::Result<Server> {
        self.start_server_with_env(port, extra, &[])
    }

    /// [`Env::start_server`] with extra environment variables for the server.
    pub fn start_server_with_env(
        &self,
        port: u16,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let data = self.path("server");
        let mut cmd = self.command();
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.args(["server", "--data-dir"])
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra);
        let proc = Proc::spawn("server", cmd)?;
        let line = proc.wait_for_line("listening on https://", DEADLINE)?;
        let url = line
            .split("listening on ")
            .nth(1)
            .context("no URL in the server's first line")?
            .trim()
            .to_string();
        let fp_line = proc.wait_for_line("CA fingerprint:", DEADLINE)?;
        let fingerprint = fp_line
            .split_whitespace()
            .last()
            .context("no fingerprint")?
            .to_string();
        let token_file = data.join("admin.token");
        self.cli_ok(&[
            "login",
            "--server",
            &url,
            "--token-file",
            &token_file.to_string_lossy(),
            "--ca-fingerprint",
            &fingerprint,
        ])?;
        let token = std::fs::read_to_string(&token_file)?.trim().to_string();
        Ok(Server {
            proc,
            url,
            fingerprint,
            token,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Creates an activation; returns `ID:CODE`.
    pub fn activation(&self, count: u32, extra: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["activation", "create", "--count"];
        let count = count.to_string();
        args.push(&count);
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", "json"]);
        let out = self.cli_ok(&args)?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(format!(
            "{}:{}",
            v.get("id").and_then(|x| x.as_str()).context("no id")?,
            v.get("code").and_then(|x| x.as_str()).context("no code")?
        ))
    }

    /// Registers an agent state directory `name` with a fresh activation; returns its node ID.
    pub fn register_agent(
        &self,
        server: &Server,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<String> {
        let activation = self.activation(1, &[])?;
        let state = self.path(name);
        let mut args = vec![
            "agent",
            "register",
            "--server",
            &server.url,
            "--activation",
            &activation,
            "--ca-fingerprint",
            &server.fingerprint,
            "--name",
            name,
        ];
        let state_s = state.to_string_lossy().into_owned();
        args.extend_from_slice(&["--state-dir", &state_s]);
        args.extend_from_slice(extra);
        let out = self.cli_ok(&args)?;
        out.split_whitespace()
            .find(|w| w.starts_with("n-"))
            .map(|w| w.trim_end_matches(';').to_string())
            .context("no node ID in the registration output")
    }

    /// Starts `drover agent run` for a registered state directory.
    pub fn run_agent(&self, name: &str, env: &[(&str, &str)]) -> anyhow::Result<Proc> {
        self.run_agent_with(name, &[], env)
    }

    /// Starts `drover agent run` with extra arguments.
    pub fn run_agent_with(
        &self,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        let mut cmd = self.command();
        cmd.args(["agent", "run", "--state-dir"])
            .arg(self.path(name))
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn(name, cmd)
    }

    pub fn state_dir(&self, name: &str) -> PathBuf {
        self.path(name)
    }

    /// Starts `drover agent run` for `name` under a [`Supervised`] handle.
    pub fn supervise_agent(
        &self,
        name: &str,
        args: &[&str],
        env_vars: &[(&str, &str)],
    ) -> anyhow::Result<Supervised> {
        Ok(Supervised {
            name: name.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env_vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            proc: self.run_agent_with(name, args, env_vars)?,
            exits: Vec::new(),
        })
    }
}

/// An agent kept running as systemd keeps it: when it exits it is started again, as it was.
pub struct Supervised {
    pub name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub proc: Proc,
    /// How each earlier run ended.
    pub exits: Vec<std::process::ExitStatus>,
}

impl Supervised {
    /// Starts the agent again if it has exited; true if it did.
    pub fn tend(&mut self, env: &Env) -> anyhow::Result<bool> {
        let Some(status) = self.proc.exited() else {
            return Ok(false);
        };
        self.exits.push(status);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let vars: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.proc = env.run_agent_with(&self.name, &args, &vars)?;
        Ok(true)
    }

    /// Whether an earlier run was killed by SIGKILL.
    pub fn was_killed(&self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        self.exits.iter().any(|s| s.signal() == Some(9))
    }
}

/// A running server.
pub struct Server {
    pub proc: Proc,
    pub url: String,
    pub fingerprint: String,
    pub token: String,
    extra: Vec<String>,
}

impl Server {
    pub fn port(&self) -> anyhow::Result<u16> {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("no port in the server URL")
    }

    /// An API client with the admin token.
    pub fn client(&self) -> anyhow::Result<drover_client::Client> {
        Ok(drover_client::Client::new(
            &self.url,
            &self.fingerprint,
            Some(self.token.clone()),
        )?)
    }

    /// SIGKILLs the server and starts it again on the same port with the same data.
    pub fn kill_and_restart(&mut self, env: &Env) -> anyhow::Result<()> {
        self.proc.kill9();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let next = env.start_server(self.port()?, &extra)?;
        *self = next;
        Ok(())
    }
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_err = String::new();
    let mut pause = Duration::from_millis(10);
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = format!("{e:#}"),
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what} {last_err}");
        }
        // Back off between checks of an external condition; this is a poll with a deadline,
        // not a guess at how long something takes.
        tokio::time::sleep_until((tokio::time::Instant::now() + pause).min(deadline)).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Waits until every node in `ids` has `status` (`Online`, `ConnectionLost`, `Inactive`).
pub async fn wait_status(
    server: &Server,
    ids: &[String],
    status: &str,
) -> anyhow::Result<Vec<drover_api::NodeView>> {
    let client = server.client()?;
    wait_until(&format!("{ids:?} to be {status}"), DEADLINE * 2, || {
        let client = client.clone();
        async move {
            let mut views = Vec::new();
            for id in ids {
                let n = client.get_node(id).await?;
                if n.status != status {
                    return Ok(None);
                }
                views.push(n);
            }
            Ok(Some(views))
        }
    })
    .await
}

/// Every process whose command line (arguments joined by spaces) contains `needle`, like
/// `pgrep -f`, without procps.
pub fn pids_with_cmdline(needle: &str) -> Vec<i32> {
    let Ok(dirs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dirs.filter_map(Result::ok)
        .filter_map(|d| {
            let pid: i32 = d.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(d.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(needle)
                .then_some(pid)
        })
        .collect()
}

/// Reads a file that must exist.
pub fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
