//! `cargo xtask`: project automation. Kept light (std and anyhow only) because CI builds it.
//!
//! ```text
//! cargo xtask test                       run the workspace tests (installing what they need)
//! cargo xtask bench tunnel [ARGS]        tunnel throughput (ARGS go to tunnel-bench)
//! cargo xtask bench agents --count N     N simulated agents against a real server
//! cargo xtask bench peers-forward        `ssh -L` throughput (../shared/peers/forward.sh)
//! cargo xtask bench authz [ARGS]          authorization of a 10,000-node fan-out and listing
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use process::{clock_ticks_per_sec, cpu_ticks, memory_kib, Proc};

mod bench_assoc;
mod bench_console;
mod bench_fairness;
mod bench_forward;
mod bench_run;
mod bench_sessions;
mod packages;
mod process;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test                              run the workspace tests (cargo nextest run --workspace)
  bench tunnel [ARGS...]            build release and run tunnel-bench ARGS
  bench authz [--nodes N] [--policies P] [--runs R]
                                    one user's decisions on N nodes under P policies
                                    (a fan-out and a listing), median and slowest
                                    (e.g. --split-send-size 16K,64K,256K --runs 3)
  bench agents --count N [--idle-secs S] [--timeout-secs S]
                                    start a release server and drover-sim with N agents; measure
                                    time to all Online, server RSS and idle CPU, and time to all
                                    Online again after a SIGKILL and restart of the server.
                                    State is kept in target/bench-sim/N (reused by reruns).
  bench peers-forward [--no-drover] ssh -L throughput: ../shared/peers/forward.sh (or the one in
                                    $DROVER_PEERS_DIR; its FORWARD_* variables apply), with Drover's
                                    tunnel as an extra contender (tunnel-bench --forward-listen)

  bench run [--count N]... [--runs R]
                                    Run Command: `drover run -- echo ok` on N simulated agents
                                    (default 100, 1000, 10000), from send to CLI exit, median of R
  bench floor [--count N]... [--runs R]
                                    the same N nodes' shells with no Drover: N `sh -c 'echo ok'`
                                    at once, and N wrapper-shaped pairs as an agent runs a step
  bench output [--count N] [--mib M]
                                    Run Command where every node prints M MiB (default 100
                                    nodes, 16 MiB): time and server CPU until all is stored
  bench stress [--agents N] [--slow M]
                                    M slow clients (default 5000, from 20 addresses) hold
                                    connections while N agents (default 1000) connect: time to
                                    all Online, server RSS and descriptors
  bench sessions                    Session Manager beside OpenSSH: keystroke round trip and
                                    one-shot start (../shared/peers latency.sh, session_start.sh),
                                    agent RSS idle and with 100 shells, 100 sessions x 10 MB
  bench forward                     port forwarding and SSH beside OpenSSH: drover forward in
                                    ../shared/peers/forward.sh (1 stream, 100 at once, 100 beside
                                    an unread one), scp of 1 GiB through drover ssh-proxy; CPU/GiB
  bench assoc                       100 associations on rate(1 minute): the server's CPU idle
                                    (targets match no node) and applying (one command each a
                                    minute), per second and per application
  bench console [--count N]         the console's node table in headless chromium over N
                                    simulated nodes (default 10000): time to first rows, to
                                    scroll through all of them, to sort and to search
  bench fanout [N ...]              ../shared/peers/fanout.sh (parallel-ssh, Ansible) with Drover
                                    as the extra contender on simulated nodes node0001..

  bench ... --no-build              use the release binaries already built";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((c, r)) => (c.as_str(), r),
        None => ("", &[][..]),
    };
    let result = match cmd {
        "test" => test(rest),
        "bench" => bench(rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace tests, installing what they need that is missing: cargo-nextest (a fresh
/// machine of this kind has it, but not every machine does) and the Debian packages the tests
/// run. No network beyond loopback and the package registries.
fn test(args: &[String]) -> Result<()> {
    let has_nextest = cargo()
        .args(["nextest", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_nextest {
        log("cargo-nextest is missing: installing it from crates.io");
        run(cargo().args(["install", "cargo-nextest", "--locked"]))?;
    }
    // Debian packages the tests run: strace watches the agent's system calls (the journal's
    // durability test); asciinema plays session recordings and top is the full-screen program
    // of the session tests; setpriv and useradd switch and create session users; OpenSSH's
    // server and client, and rsync, are what SSH through the tunnel is tested with; chromium is
    // the browser the web console is tested in.
    packages::ensure_debian(&[
        ("strace", "strace"),
        ("asciinema", "asciinema"),
        ("top", "procps"),
        ("setpriv", "util-linux"),
        ("useradd", "passwd"),
        ("sshd", "openssh-server"),
        ("ssh", "openssh-client"),
        ("rsync", "rsync"),
        ("curl", "curl"),
        ("npm", "npm"),
        ("chromium", "chromium"),
    ])?;
    // The OpenID provider of the federated login test (oidc-provider, from npm).
    packages::ensure_npm(&root().join("crates/drover/tests/idp"))?;
    // playwright-core drives chromium through the web console (tests/console).
    packages::ensure_npm(&root().join("crates/drover/tests/browser"))?;
    // Schemathesis (PyPI) fuzzes the API against its OpenAPI document (tests/openapi.rs).
    let st = packages::ensure_schemathesis(&target_dir().join("tools"))?;
    run(cargo()
        .current_dir(root())
        .env("DROVER_SCHEMATHESIS", st)
        .args(["nextest", "run", "--workspace", "--no-fail-fast"])
        .args(args))
}

fn bench(args: &[String]) -> Result<()> {
    // `--no-build` anywhere: use the release binaries as they are.
    let build = !args.iter().any(|a| a == "--no-build");
    let args: Vec<String> = args
        .iter()
        .filter(|a| *a != "--no-build")
        .cloned()
        .collect();
    let (what, rest) = match args.split_first() {
        Some((w, r)) => (w.as_str(), r),
        None => bail!("{USAGE}"),
    };
    match what {
        "tunnel" => bench_tunnel(rest, build),
        "agents" => bench_agents(rest, build),
        "peers-forward" => bench_peers_forward(rest, build),
        "run" => bench_run::bench_run(rest, build),
        "fanout" => bench_run::bench_fanout(rest, build),
        "floor" => bench_run::bench_floor(rest),
        "output" => bench_run::bench_output(rest, build),
        "stress" => bench_run::bench_stress(rest, build),
        "sessions" => bench_sessions::bench_sessions(build),
        "forward" => bench_forward::bench_forward(build),
        "assoc" => bench_assoc::bench_assoc(build),
        "console" => bench_console::bench_console(rest, build),
        "authz" => {
            if build {
                build_release(&[("drover-bench", "authz-bench")])?;
            }
            wait_idle()?;
            run(Command::new(release_bin("authz-bench")).args(rest))
        }
        other => bail!("unknown benchmark {other:?}\n\n{USAGE}"),
    }
}

// ------------------------------------------------------------------------------------ helpers

fn root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => root().join("target"),
    }
}

fn release_bin(name: &str) -> PathBuf {
    target_dir().join("release").join(name)
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn build_release(bins: &[(&str, &str)]) -> Result<()> {
    let mut cmd = cargo();
    cmd.current_dir(root()).args(["build", "--release"]);
    for (package, bin) in bins {
        cmd.args(["-p", package, "--bin", bin]);
    }
    run(&mut cmd)
}

fn log(msg: &str) {
    eprintln!("[xtask {}] {msg}", clock());
}

/// Wall-clock time of day (UTC), for logs.
fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Busy and total jiffies of the whole machine (first line of /proc/stat).
fn machine_jiffies() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// Waits (up to `XTASK_IDLE_WAIT` seconds, default 900) until the machine has been idle (under
/// 10 % busy) for 3 s in a row, so that a compile elsewhere does not skew the figures.
fn wait_idle() -> Result<()> {
    let max = std::env::var("XTASK_IDLE_WAIT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(900);
    let deadline = Instant::now() + Duration::from_secs(max);
    let mut quiet = 0;
    let mut said = false;
    let mut prev = machine_jiffies()?;
    while quiet < 3 {
        std::thread::sleep(Duration::from_secs(1));
        let now = machine_jiffies()?;
        let busy = (now.0 - prev.0) as f64 / (now.1 - prev.1).max(1) as f64 * 100.0;
        prev = now;
        if busy < 10.0 {
            quiet += 1;
        } else {
            quiet = 0;
            if !said {
                log(&format!(
                    "machine busy ({busy:.0} %): waiting until it is idle"
                ));
                said = true;
            }
        }
        if Instant::now() > deadline {
            log(&format!(
                "machine still busy after {max} s: going ahead anyway"
            ));
            return Ok(());
        }
    }
    log("machine idle");
    Ok(())
}

// ------------------------------------------------------------------------------------ tunnel

fn bench_tunnel(args: &[String], build: bool) -> Result<()> {
    if build {
        build_release(&[("drover-bench", "tunnel-bench")])?;
    }
    wait_idle()?;
    run(Command::new(release_bin("tunnel-bench")).args(args))
}

// ------------------------------------------------------------------------------------ peers

fn bench_peers_forward(args: &[String], build: bool) -> Result<()> {
    // DROVER_PEERS_DIR: where the peers harness lives (default ../shared/peers).
    let peers = std::env::var_os("DROVER_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/peers"));
    let script = peers.join("forward.sh");
    if !script.exists() {
        bail!("{} not found", script.display());
    }
    let with_drover = !args.iter().any(|a| a == "--no-drover");
    let args: Vec<&String> = args.iter().filter(|a| *a != "--no-drover").collect();
    let mut cmd = Command::new("bash");
    cmd.arg(script).args(args);
    // Drover's tunnel side by side, measured by the harness like `ssh -L`: tunnel-bench in
    // forward mode listens on $LPORT (the server side) and the agent side connects to the sink.
    if with_drover && std::env::var_os("FORWARD_EXTRA_CMD").is_none() {
        if build {
            build_release(&[("drover-bench", "tunnel-bench")])?;
        }
        let bin = release_bin("tunnel-bench");
        cmd.env(
            "FORWARD_EXTRA_CMD",
            format!(
                "exec '{}' --forward-listen 127.0.0.1:$LPORT --forward-to 127.0.0.1:$SINK_PORT",
                bin.display()
            ),
        );
        if std::env::var_os("FORWARD_EXTRA_NAME").is_none() {
            cmd.env("FORWARD_EXTRA_NAME", "drover_tunnel");
        }
    }
    wait_idle()?;
    run(&mut cmd)
}

// ------------------------------------------------------------------------------------ agents

struct AgentsArgs {
    count: usize,
    idle_secs: u64,
    timeout_secs: u64,
}

fn parse_agents_args(args: &[String]) -> Result<AgentsArgs> {
    let mut out = AgentsArgs {
        count: 0,
        idle_secs: 30,
        timeout_secs: 900,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .with_context(|| format!("{flag} needs a value"))
                .map(String::as_str)
        };
        match a.as_str() {
            "--count" => out.count = value("--count")?.parse().context("--count")?,
            "--idle-secs" => {
                out.idle_secs = value("--idle-secs")?.parse().context("--idle-secs")?
            }
            "--timeout-secs" => {
                out.timeout_secs = value("--timeout-secs")?.parse().context("--timeout-secs")?
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    if out.count == 0 {
        bail!("--count N is required\n\n{USAGE}");
    }
    Ok(out)
}

fn start_server(
    data: &Path,
    listen: &str,
    log_path: &Path,
    extra: &[String],
) -> Result<(Proc, String, String)> {
    let mut cmd = Command::new(release_bin("drover"));
    cmd.arg("server")
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg(listen)
        .args(extra);
    let mut server = Proc::spawn("server", &mut cmd, log_path)?;
    let (_, line) = server.wait_line("drover server listening on", Duration::from_secs(60))?;
    let url = line
        .rsplit(' ')
        .next()
        .context("no URL in the listening line")?
        .to_string();
    let (_, fp) = server.wait_line("CA fingerprint:", Duration::from_secs(10))?;
    let fp = fp.rsplit(' ').next().context("no fingerprint")?.to_string();
    Ok((server, url, fp))
}

/// Nodes the API reports Online (through the CLI), or `None` if the query failed.
fn online_count(cli_config: &Path) -> Option<usize> {
    let out = Command::new(release_bin("drover"))
        .env("DROVER_CONFIG", cli_config)
        .args(["nodes", "list", "--filter", "status=online", "-o", "csv"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(
        text.lines()
            .filter(|l| !l.is_empty())
            .count()
            .saturating_sub(1),
    )
}

/// Polls until `n` nodes are Online; returns when the poll first saw them all.
fn wait_online(cli_config: &Path, n: usize, timeout: Duration, what: &str) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    let mut last = None;
    loop {
        let count = online_count(cli_config);
        let seen = Instant::now();
        if count.is_some_and(|c| c >= n) {
            return Ok(seen);
        }
        if count != last || last_report.elapsed() > Duration::from_secs(10) {
            log(&format!(
                "{what}: online {}/{n}",
                count.map_or("?".to_string(), |c| c.to_string())
            ));
            last = count;
            last_report = Instant::now();
        }
        if seen > deadline {
            bail!("{what}: not all {n} nodes Online within {timeout:?} (last count {count:?})");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn bench_agents(args: &[String], build: bool) -> Result<()> {
    let a = parse_agents_args(args)?;
    let n = a.count;
    let timeout = Duration::from_secs(a.timeout_secs);
    if build {
        build_release(&[("drover", "drover"), ("drover-bench", "drover-sim")])?;
    }
    let base = target_dir().join("bench-sim").join(n.to_string());
    let data = base.join("server");
    let agents_dir = base.join("agents");
    let cli_config = base.join("cli.toml");
    std::fs::create_dir_all(&data)?;
    let server_log = base.join("server.log");
    let sim_log = base.join("sim.log");
    for p in [&server_log, &sim_log] {
        let _ = std::fs::remove_file(p);
    }
    let hz = clock_ticks_per_sec();
    let mut results = Vec::new();
    wait_idle()?;
    let name = format!("agents.n{n}");

    // 1. The server, on a port the kernel picks.
    let (mut server, url, fp) = start_server(&data, "127.0.0.1:0", &server_log, &[])?;
    let listen = url.trim_start_matches("https://").to_string();
    log(&format!("server pid {} at {url}, CA {fp}", server.pid()));
    let token_file = data.join("admin.token");
    run(Command::new(release_bin("drover"))
        .env("DROVER_CONFIG", &cli_config)
        .arg("login")
        .arg("--server")
        .arg(&url)
        .arg("--token-file")
        .arg(&token_file)
        .arg("--ca-fingerprint")
        .arg(&fp)
        .stdout(Stdio::null()))?;

    // 2. The simulator: registers what is missing, then starts all agents.
    let mut sim_cmd = Command::new(release_bin("drover-sim"));
    sim_cmd
        .arg("--server")
        .arg(&url)
        .arg("--ca-fingerprint")
        .arg(&fp)
        .arg("--token-file")
        .arg(&token_file)
        .arg("--count")
        .arg(n.to_string())
        .arg("--dir")
        .arg(&agents_dir);
    let mut sim = Proc::spawn("drover-sim", &mut sim_cmd, &sim_log)?;
    log(&format!(
        "drover-sim pid {} ({n} agents; registering any missing identities, log {})",
        sim.pid(),
        sim_log.display()
    ));
    let server_cpu_before = cpu_ticks(server.pid())?;
    let (t_start, _) = sim.wait_line("STARTED", Duration::from_secs(3600))?;
    let server_cpu_start = cpu_ticks(server.pid())?;
    log("agents started; waiting until all are Online");
    let t_online = wait_online(&cli_config, n, timeout, "connect")?;
    let connect_s = t_online.duration_since(t_start).as_secs_f64();
    let server_cpu_connect = (cpu_ticks(server.pid())? - server_cpu_start) as f64 / hz;
    let sim_all = sim.wait_line("ALL_CONNECTED", Duration::from_secs(30))?;
    log(&format!(
        "all {n} Online after {connect_s:.1} s (simulator: {})",
        sim_all.1
    ));
    results.push(format!(
        "RESULT {name}.all_online_s={connect_s:.1} unit=s from=agents_started sim_line=\"{}\" server_cpu_s={server_cpu_connect:.1} registration_server_cpu_s={:.1}",
        sim_all.1,
        (server_cpu_start - server_cpu_before) as f64 / hz
    ));

    // 3. Memory and idle CPU.
    std::thread::sleep(Duration::from_secs(5));
    let (rss, hwm) = memory_kib(server.pid())?;
    let (sim_rss, _) = memory_kib(sim.pid())?;
    log(&format!(
        "server RSS {} MiB (peak {} MiB); simulator RSS {} MiB; idling {} s",
        rss / 1024,
        hwm / 1024,
        sim_rss / 1024,
        a.idle_secs
    ));
    let (s0, m0, j0, w0) = (
        cpu_ticks(server.pid())?,
        cpu_ticks(sim.pid())?,
        machine_jiffies()?,
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(a.idle_secs));
    let (s1, m1, j1, wall) = (
        cpu_ticks(server.pid())?,
        cpu_ticks(sim.pid())?,
        machine_jiffies()?,
        w0.elapsed().as_secs_f64(),
    );
    let server_idle = (s1 - s0) as f64 / hz / wall * 100.0;
    let sim_idle = (m1 - m0) as f64 / hz / wall * 100.0;
    let others =
        ((j1.0 - j0.0) as f64 - (s1 - s0) as f64 - (m1 - m0) as f64).max(0.0) / hz / wall * 100.0;
    let (rss_after, _) = memory_kib(server.pid())?;
    results.push(format!(
        "RESULT {name}.server_rss_mib={:.1} unit=MiB peak_mib={:.1} after_idle_mib={:.1} sim_rss_mib={:.1} per_agent_kib={:.1}",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        sim_rss as f64 / 1024.0,
        rss as f64 / n as f64
    ));
    results.push(format!(
        "RESULT {name}.server_idle_cpu_pct={server_idle:.2} unit=%_of_one_core window_s={wall:.0} sim_idle_cpu_pct={sim_idle:.2} other_processes_cpu_pct={others:.1}"
    ));
    log(&format!(
        "idle CPU over {wall:.0} s: server {server_idle:.2} %, simulator {sim_idle:.2} %"
    ));

    // 4. SIGKILL the server, restart it on the same port with the same data, wait for all.
    let _ = sim.drain_matching("ALL_RECONNECTED");
    log("SIGKILL the server");
    let t_kill = Instant::now();
    server.kill()?;
    let (server2, url2, _) = start_server(&data, &listen, &server_log, &[])?;
    let t_listening = Instant::now();
    server = server2;
    log(&format!(
        "server restarted (pid {}) at {url2} after {:.2} s",
        server.pid(),
        t_listening.duration_since(t_kill).as_secs_f64()
    ));
    let cpu_restart0 = cpu_ticks(server.pid())?;
    let t_back = wait_online(&cli_config, n, timeout, "reconnect")?;
    let from_kill = t_back.duration_since(t_kill).as_secs_f64();
    let from_listen = t_back.duration_since(t_listening).as_secs_f64();
    let reconnect_cpu = (cpu_ticks(server.pid())? - cpu_restart0) as f64 / hz;
    let sim_back = sim
        .wait_line("ALL_RECONNECTED", Duration::from_secs(30))
        .map(|(_, l)| l)
        .unwrap_or_else(|e| format!("none ({e})"));
    let (rss2, hwm2) = memory_kib(server.pid())?;
    log(&format!(
        "all {n} Online again {from_kill:.1} s after the kill ({from_listen:.1} s after the restart; simulator: {sim_back})"
    ));
    results.push(format!(
        "RESULT {name}.restart_all_online_s={from_kill:.1} unit=s from=sigkill from_listening_s={from_listen:.1} sim_line=\"{sim_back}\" server_cpu_s={reconnect_cpu:.1} rss_mib={:.1} peak_mib={:.1}",
        rss2 as f64 / 1024.0,
        hwm2 as f64 / 1024.0
    ));

    // 5. Stop everything.
    sim.stop(Duration::from_secs(20))?;
    server.stop(Duration::from_secs(20))?;
    for line in &results {
        println!("{line}");
    }
    Ok(())
}
