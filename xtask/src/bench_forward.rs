//! `cargo xtask bench forward`: port forwarding and SSH through the real path (`drover forward`
//! and `drover ssh-proxy`, the real server and agent), beside OpenSSH in the same run:
//! ../shared/peers/forward.sh with Drover as its extra contender (one stream, then 100 at once,
//! then 100 at once beside a connection nobody reads), each connection of 100 timed from both
//! ends (`bench_fairness`: the slowest against the mean), and scp of 1 GiB through `ssh-proxy`
//! against scp straight to the same sshd. `FORWARD_ONLY=fairness` runs only the fairness part. CPU is the whole machine's busy time around each run
//! (both ends share these 2 cores), per GiB moved.

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::bench_sessions::{drover, peers, setup, NODE};
use crate::process::cpu_ms;
use crate::{build_release, log, release_bin};

/// Busy CPU seconds of the whole machine so far (all but idle and iowait, from /proc/stat).
fn machine_busy_secs() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy: u64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| *x)
        .sum();
    // USER_HZ is 100 on Linux.
    Ok(busy as f64 / 100.0)
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sets the session preferences (run as root, as `setup` does) with end-to-end encryption
/// `mode`; `version` is the document version this update creates.
fn set_e2e(cli: &Path, mode: &str, version: u32) -> Result<()> {
    let prefs = cli.with_file_name(format!("prefs-{mode}.yaml"));
    std::fs::write(
        &prefs,
        format!(
            "schemaVersion: \"1.0\"\nsessionType: Standard_Stream\ninputs:\n  runAsEnabled: true\n  \
             runAsDefaultUser: root\n  endToEndEncryption: \"{mode}\"\n"
        ),
    )?;
    crate::run(
        drover(cli)
            .args(["docs", "update", "SessionManagerRunShell", "--file"])
            .arg(&prefs),
    )?;
    crate::run(drover(cli).args([
        "docs",
        "set-default",
        "SessionManagerRunShell",
        &version.to_string(),
    ]))?;
    log(&format!("end-to-end encryption {mode}"));
    Ok(())
}

/// forward.sh with `vars`, and the machine's busy seconds it took.
fn forward_sh(vars: &[(&str, String)]) -> Result<(Vec<String>, f64)> {
    let before = machine_busy_secs()?;
    let lines = peers("forward.sh", vars)?;
    Ok((lines, machine_busy_secs()? - before))
}

pub fn bench_forward(build: bool) -> Result<()> {
    if build {
        build_release(&[("drover", "drover")])?;
    }
    let s = setup()?;
    let exe = release_bin("drover");
    let mib = env_num("FORWARD_MB", 1024);
    let runs = env_num("FORWARD_RUNS", 3);
    let gib = (mib * runs) as f64 / 1024.0;
    let mut results: Vec<String> = Vec::new();
    let forward_cmd = format!(
        "exec env DROVER_CONFIG={} {} forward {NODE} --remote-port \"$SINK_PORT\" \
         --local-port \"$LPORT\" >/dev/null",
        s.cli_config.display(),
        exe.display()
    );
    let drover_vars = |modes: &str, name: &str| {
        vec![
            ("FORWARD_MODES", modes.to_string()),
            ("FORWARD_EXTRA_NAME", name.to_string()),
            ("FORWARD_EXTRA_CMD", forward_cmd.clone()),
        ]
    };
    let mut version = 2;
    let mut e2e = |mode: &str| -> Result<()> {
        version += 1;
        set_e2e(&s.cli_config, mode, version)
    };
    let fairness_only = std::env::var("FORWARD_ONLY").is_ok_and(|v| v == "fairness");
    if fairness_only {
        for (mode, name, unread) in [
            ("off", "drover", false),
            ("optional", "drover_e2e", false),
            ("optional", "drover_e2e_beside_unread", true),
        ] {
            e2e(mode)?;
            let line = crate::bench_fairness::fairness(&s.cli_config, name, unread)?;
            log(&line);
            results.push(line);
        }
        println!();
        for r in &results {
            println!("{r}");
        }
        return Ok(());
    }

    // One stream, each contender in a run of its own so that its CPU is its own.
    let mut direct_cpu = 0.0;
    for mode in ["direct", "ssh", "ssh_aes128gcm"] {
        let (lines, cpu) = forward_sh(&[("FORWARD_MODES", mode.to_string())])?;
        results.extend(lines);
        results.push(format!(
            "RESULT forward.{mode}.cpu_per_gib={:.2} unit=s",
            cpu / gib
        ));
        if mode == "direct" {
            direct_cpu = cpu;
        }
    }
    for (mode, name) in [("off", "drover"), ("optional", "drover_e2e")] {
        e2e(mode)?;
        let (server0, agent0) = (cpu_ms(s.server.pid())?, cpu_ms(s.agent.pid())?);
        let (lines, cpu) = forward_sh(&drover_vars("direct", name))?;
        let (server1, agent1) = (cpu_ms(s.server.pid())?, cpu_ms(s.agent.pid())?);
        results.extend(
            lines
                .into_iter()
                .filter(|l| l.contains(&format!("forward.{name}="))),
        );
        results.push(format!(
            "RESULT forward.{name}.cpu_per_gib={:.2} unit=s server={:.2} agent={:.2} \
             (the rest: the drover forward client, the sender and the sink)",
            (cpu - direct_cpu) / gib,
            (server1 - server0) / 1000.0 / gib,
            (agent1 - agent0) / 1000.0 / gib,
        ));
    }

    // 100 connections at once, 1 GiB in all.
    e2e("off")?;
    let mut vars = drover_vars("ssh ssh_aes128gcm", "drover");
    vars.push(("FORWARD_CONNS", "100".into()));
    let (lines, _) = forward_sh(&vars)?;
    results.extend(lines);
    e2e("optional")?;
    let mut vars = drover_vars("direct", "drover_e2e");
    vars.push(("FORWARD_CONNS", "100".into()));
    let (lines, _) = forward_sh(&vars)?;
    results.extend(lines.into_iter().filter(|l| l.contains("drover_e2e")));

    // The same beside a connection that nobody reads: it fills its windows and waits; the
    // others must not slow down.
    let stalled = TcpListener::bind("127.0.0.1:0")?;
    let stalled_port = stalled.local_addr()?.port();
    let mut stalled_fwd = drover(&s.cli_config)
        .args(["forward", NODE, "--remote-port", &stalled_port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let local = first_port(&mut stalled_fwd)?;
    let mut held = std::net::TcpStream::connect(("127.0.0.1", local))?;
    let (_peer, _) = stalled.accept()?;
    held.set_write_timeout(Some(Duration::from_secs(3)))?;
    let chunk = vec![0u8; 1024 * 1024];
    let mut stuck = 0usize;
    while held.write_all(&chunk).is_ok() {
        stuck += chunk.len();
    }
    log(&format!(
        "the unread connection holds {} MiB",
        stuck / (1024 * 1024)
    ));
    let mut vars = drover_vars("direct", "drover_e2e_beside_unread");
    vars.push(("FORWARD_CONNS", "100".into()));
    let (lines, _) = forward_sh(&vars)?;
    results.extend(
        lines
            .into_iter()
            .filter(|l| l.contains("drover_e2e_beside_unread")),
    );
    let _ = stalled_fwd.kill();
    let _ = stalled_fwd.wait();

    // Each of 100 connections timed from both ends: the slowest against the mean, alone and
    // beside a connection of the same forward that nobody reads.
    e2e("off")?;
    results.push(crate::bench_fairness::fairness(
        &s.cli_config,
        "drover",
        false,
    )?);
    e2e("optional")?;
    results.push(crate::bench_fairness::fairness(
        &s.cli_config,
        "drover_e2e",
        false,
    )?);
    results.push(crate::bench_fairness::fairness(
        &s.cli_config,
        "drover_e2e_beside_unread",
        true,
    )?);

    let mut scp_results = Vec::new();
    for mode in ["off", "optional"] {
        e2e(mode)?;
        scp_results.push(scp(&s.cli_config, &exe, mode == "off")?);
    }
    results.extend(scp_results.into_iter().flatten());
    println!();
    for r in &results {
        println!("{r}");
    }
    Ok(())
}

/// The local port `drover forward` prints.
pub(crate) fn first_port(child: &mut std::process::Child) -> Result<u16> {
    use std::io::BufRead;
    let out = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line)?;
    line.split_whitespace()
        .nth(1)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {line:?}"))
}

/// scp of 1 GiB (from memory, to /dev/null) straight to the peers' sshd, and through
/// `drover ssh-proxy` to the same sshd; median of 3 each, with the machine's CPU.
fn scp(cli_config: &Path, exe: &Path, with_direct: bool) -> Result<Vec<String>> {
    let state = std::env::var("PEERS_STATE").unwrap_or_else(|_| "/tmp/peers-bench".into());
    let cfg = format!("{state}/ssh_config");
    let file = Path::new("/dev/shm/drover-bench-scp");
    {
        let mut f = std::fs::File::create(file)?;
        let block = vec![0x5au8; 1024 * 1024];
        for _ in 0..1024 {
            f.write_all(&block)?;
        }
    }
    let proxy = format!(
        "ProxyCommand=env DROVER_CONFIG={} {} ssh-proxy {NODE} %p",
        cli_config.display(),
        exe.display()
    );
    let mut out = Vec::new();
    let drover_name = if with_direct { "drover" } else { "drover_e2e" };
    let mut contenders = vec![(drover_name, Some(proxy.as_str()))];
    if with_direct {
        contenders.insert(0, ("direct", None));
    }
    for (name, extra) in contenders {
        let mut times = Vec::new();
        let before = machine_busy_secs()?;
        for _ in 0..3 {
            let mut c = Command::new("scp");
            c.args(["-q", "-F", &cfg]);
            if let Some(o) = extra {
                c.args(["-o", o]);
            }
            c.arg(file).arg("node0001:/dev/null");
            let t = Instant::now();
            let st = c.status()?;
            anyhow::ensure!(st.success(), "scp ({name}) failed: {st}");
            times.push(t.elapsed().as_secs_f64());
        }
        let cpu = machine_busy_secs()? - before;
        times.sort_by(f64::total_cmp);
        let med = times.get(1).copied().unwrap_or_default();
        out.push(format!(
            "RESULT scp.{name}={:.1} unit=MB/s stat=median runs=3 cpu_per_gib={:.2} all={}",
            1024.0 * 1024.0 * 1024.0 / 1e6 / med,
            cpu / 3.0,
            times
                .iter()
                .map(|t| format!("{t:.2}s"))
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    let _ = std::fs::remove_file(file);
    Ok(out)
}
