//! `cargo xtask bench sessions`: Session Manager's figures, side by side with OpenSSH in one run.
//! A release server and one release agent on this machine, then:
//! - keystroke round trip (p50, p99) through `drover shell` and through `ssh -tt`
//!   (../shared/peers/latency.sh, with Drover as its extra contender);
//! - one-shot `drover shell NODE -- true` against `ssh host true` (../shared/peers/session_start.sh);
//! - the agent's RSS idle and with 100 open shells;
//! - 100 sessions each printing 10 MB at once: every one completes, the slowest against the
//!   mean, and the server's CPU per MB relayed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{cpu_ms, memory_kib, Proc};
use crate::{build_release, log, release_bin, run, start_server, target_dir, wait_online};

pub(crate) const NODE: &str = "bench-node";

pub(crate) struct Setup {
    pub base: PathBuf,
    pub cli_config: PathBuf,
    pub server: Proc,
    pub agent: Proc,
}

pub(crate) fn drover(cli_config: &Path) -> Command {
    let mut c = Command::new(release_bin("drover"));
    c.env("DROVER_CONFIG", cli_config);
    c
}

pub(crate) fn setup() -> Result<Setup> {
    let base = target_dir().join("bench-sessions");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    let cli_config = base.join("cli.toml");
    let (server, url, fp) = start_server(
        &base.join("server"),
        "127.0.0.1:0",
        &base.join("server.log"),
        &[],
    )?;
    run(drover(&cli_config)
        .args([
            "login",
            "--server",
            &url,
            "--ca-fingerprint",
            &fp,
            "--token-file",
        ])
        .arg(base.join("server/admin.token")))?;
    let out = drover(&cli_config)
        .args(["activation", "create", "--count", "1", "-o", "json"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let activation = format!("{}:{}", json_str(&text, "id")?, json_str(&text, "code")?);
    let state = base.join("agent");
    run(drover(&cli_config)
        .args([
            "agent",
            "register",
            "--server",
            &url,
            "--activation",
            &activation,
        ])
        .args(["--ca-fingerprint", &fp, "--name", NODE, "--state-dir"])
        .arg(&state))?;
    let mut cmd = drover(&cli_config);
    cmd.args(["agent", "run", "--state-dir"]).arg(&state);
    let agent = Proc::spawn("agent", &mut cmd, &base.join("agent.log"))?;
    wait_online(&cli_config, 1, Duration::from_secs(60), "the agent")?;
    // Sessions as root: the benchmark creates no OS user.
    let prefs = base.join("prefs.yaml");
    std::fs::write(
        &prefs,
        "schemaVersion: \"1.0\"\nsessionType: Standard_Stream\ninputs:\n  runAsEnabled: true\n  runAsDefaultUser: root\n",
    )?;
    run(drover(&cli_config)
        .args(["docs", "update", "SessionManagerRunShell", "--file"])
        .arg(&prefs))?;
    run(drover(&cli_config).args(["docs", "set-default", "SessionManagerRunShell", "2"]))?;
    Ok(Setup {
        base,
        cli_config,
        server,
        agent,
    })
}

/// A string field of a flat JSON object (xtask keeps to std and anyhow).
fn json_str(text: &str, key: &str) -> Result<String> {
    let at = text
        .find(&format!("\"{key}\""))
        .with_context(|| format!("no {key:?} in {text:?}"))?;
    let rest = text.get(at + key.len() + 2..).unwrap_or_default();
    let value = rest
        .split('"')
        .nth(1)
        .with_context(|| format!("no value for {key:?}"))?;
    Ok(value.to_string())
}

fn peers_dir() -> PathBuf {
    std::env::var_os("DROVER_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root().join("../shared/peers"))
}

/// Runs a peers script with Drover as its extra contender; returns its RESULT lines.
pub(crate) fn peers(script: &str, vars: &[(&str, String)]) -> Result<Vec<String>> {
    let dir = peers_dir();
    if !dir.join(script).is_file() {
        bail!(
            "{} not found (set DROVER_PEERS_DIR)",
            dir.join(script).display()
        );
    }
    let mut cmd = Command::new("bash");
    cmd.arg(dir.join(script)).stderr(Stdio::inherit());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter(|l| l.starts_with("RESULT"))
        .map(str::to_string)
        .collect())
}

/// Starts `n` sessions running `script` (no PTY), each with its output counted; returns, per
/// session, the bytes it printed and how long it took.
fn sessions_at_once(cli: &Path, n: usize, script: &str, pty: bool) -> Result<Vec<(u64, Duration)>> {
    let mut children = Vec::new();
    for _ in 0..n {
        let mut c = drover(cli);
        c.args(["shell", NODE]);
        if !pty {
            c.arg("--no-pty");
        }
        c.args(["--", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let started = Instant::now();
        let mut child = c.spawn()?;
        let out = child.stdout.take().context("no stdout")?;
        let reader = std::thread::spawn(move || crate::process::drain(out));
        children.push((child, reader, started));
    }
    let mut results = Vec::new();
    for (mut child, reader, started) in children {
        let status = child.wait()?;
        let took = started.elapsed();
        let bytes = reader.join().unwrap_or(0);
        if !status.success() {
            bail!("a session failed: {status}");
        }
        results.push((bytes, took));
    }
    Ok(results)
}

pub fn bench_sessions(build: bool) -> Result<()> {
    if build {
        build_release(&[("drover", "drover")])?;
    }
    let s = setup()?;
    let mut results: Vec<String> = Vec::new();
    let exe = release_bin("drover");
    let env_prefix = format!("env DROVER_CONFIG={}", s.cli_config.display());

    std::thread::sleep(Duration::from_secs(2));
    let (idle_rss, _) = memory_kib(s.agent.pid())?;
    log(&format!("agent idle RSS {idle_rss} KiB"));
    results.push(format!(
        "RESULT sessions.agent_idle_rss={:.1} unit=MiB",
        idle_rss as f64 / 1024.0
    ));

    // Keystroke round trip and session start, beside OpenSSH.
    let lat = peers(
        "latency.sh",
        &[
            ("LATENCY_EXTRA_NAME", "drover".into()),
            (
                "LATENCY_EXTRA_CMD",
                format!(
                    "{env_prefix} {} shell {NODE} -- \"$REMOTE_CMD\"",
                    exe.display()
                ),
            ),
        ],
    )?;
    results.extend(lat);
    let start = peers(
        "session_start.sh",
        &[
            ("SESSION_EXTRA_NAME", "drover".into()),
            ("SESSION_MODES", "fresh mux".into()),
            (
                "SESSION_EXTRA_CMD",
                format!("{env_prefix} {} shell {NODE} -- true", exe.display()),
            ),
        ],
    )?;
    results.extend(start);

    // 100 open shells: the agent's memory per session.
    log("opening 100 shells");
    let mut shells = Vec::new();
    for _ in 0..100 {
        let mut c = drover(&s.cli_config);
        c.args(["shell", NODE, "--", "echo up; exec sleep 20"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c.spawn()?;
        let mut out = child.stdout.take().context("no stdout")?;
        let mut buf = [0u8; 2];
        out.read_exact(&mut buf)?;
        shells.push((child, out));
    }
    let (rss100, _) = memory_kib(s.agent.pid())?;
    let per = (rss100.saturating_sub(idle_rss)) as f64 / 100.0;
    log(&format!(
        "agent RSS with 100 shells {rss100} KiB ({per:.0} KiB each)"
    ));
    results.push(format!(
        "RESULT sessions.agent_rss_100_shells={:.1} unit=MiB per_session_kib={per:.0}",
        rss100 as f64 / 1024.0
    ));
    for (mut c, _) in shells {
        let _ = c.kill();
        let _ = c.wait();
    }

    // 100 sessions printing 10 MB each, at once.
    log("100 sessions printing 10 MB each");
    let cpu0 = cpu_ms(s.server.pid())?;
    let t0 = Instant::now();
    let runs = sessions_at_once(&s.cli_config, 100, "yes | head -c 10000000", false)?;
    let wall = t0.elapsed();
    let cpu = cpu_ms(s.server.pid())? - cpu0;
    let total: u64 = runs.iter().map(|(b, _)| b).sum();
    if let Some((b, _)) = runs.iter().find(|(b, _)| *b != 10_000_000) {
        bail!("a session printed {b} bytes instead of 10000000");
    }
    let secs: Vec<f64> = runs.iter().map(|(_, d)| d.as_secs_f64()).collect();
    let mean = secs.iter().sum::<f64>() / secs.len() as f64;
    let slowest = secs.iter().cloned().fold(0.0, f64::max);
    let mb = total as f64 / 1e6;
    results.push(format!(
        "RESULT sessions.bulk_100x10MB={:.2} unit=s mean_s={mean:.2} slowest_s={slowest:.2} slowest_over_mean={:.2} server_cpu_ms_per_mb={:.3} throughput_mb_s={:.0}",
        wall.as_secs_f64(),
        slowest / mean,
        cpu / mb,
        mb / wall.as_secs_f64()
    ));
    let _ = s.base;
    println!();
    for r in &results {
        println!("{r}");
    }
    Ok(())
}
