//! `cargo xtask bench run` and `cargo xtask bench fanout`: Run Command at scale. A release
//! server and `drover-sim` with N agents (each spawning a real process per invocation), then
//! `drover run ... -- echo ok` timed from send until every result is stored and the CLI exited;
//! and the same side by side with parallel-ssh and Ansible through ../shared/peers/fanout.sh.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::process::{children_cpu_ms, cpu_ms, fd_count, memory_kib, Proc};
use crate::{
    build_release, log, online_count, release_bin, root, run, start_server, target_dir, wait_online,
};

pub(crate) struct Fleet {
    pub(crate) server: Proc,
    pub(crate) sims: Sims,
    pub(crate) cli_config: PathBuf,
    pub(crate) url: String,
    fp: String,
    pub(crate) base: PathBuf,
    n: usize,
}

/// Agents per `drover-sim` process. Every shell an agent starts copies its process's
/// descriptor table (one socket per agent) when it forks and closes it when it execs: with
/// 10,000 agents in one process that was a fifth of the machine's CPU in a 10,000-node run
/// (`dup_fd`, `filp_flush`), a cost a real node, one agent with a few descriptors, never pays.
const AGENTS_PER_SIM: usize = 250;

/// The simulated fleet: `drover-sim` processes of at most `AGENTS_PER_SIM` agents each.
pub(crate) struct Sims(Vec<Proc>);

impl Sims {
    /// Registers the `n` agents' missing identities under `base`, then starts them all.
    fn start(base: &Path, url: &str, fp: &str, n: usize) -> Result<Self> {
        let dir = agents_dir(base)?;
        clear_journals(&dir)?;
        let sim = |first: usize, count: usize| {
            let mut cmd = Command::new(release_bin("drover-sim"));
            cmd.args(["--server", url, "--ca-fingerprint", fp])
                .args(["--first", &first.to_string()])
                .args(["--count", &count.to_string()])
                .arg("--token-file")
                .arg(base.join("server").join("admin.token"))
                .arg("--dir")
                .arg(&dir);
            cmd
        };
        run(sim(1, n).arg("--register-only").stdout(Stdio::null()))?;
        let mut procs = Vec::new();
        for first in (1..=n).step_by(AGENTS_PER_SIM) {
            let count = AGENTS_PER_SIM.min(n + 1 - first);
            procs.push(Proc::spawn(
                "drover-sim",
                &mut sim(first, count),
                &base.join("sim-run.log"),
            )?);
        }
        for p in &mut procs {
            p.wait_line("STARTED", Duration::from_secs(600))?;
        }
        Ok(Self(procs))
    }

    pub(crate) fn stop(&mut self) -> Result<()> {
        for p in &mut self.0 {
            p.stop(Duration::from_secs(30))?;
        }
        Ok(())
    }
}

/// Where the simulated nodes keep their state: on tmpfs (`/dev/shm`) when there is one. A real
/// node has a disk of its own; N simulated nodes sharing one ext4 directory spend most of the
/// simulator's CPU allocating inodes (`recently_deleted`, see BENCHMARKS.md section 3), which
/// would measure the filesystem, not Drover. `DROVER_BENCH_AGENTS_DIR` overrides it.
fn agents_dir(base: &Path) -> Result<PathBuf> {
    let name = base
        .file_name()
        .context("the bench directory has no name")?
        .to_owned();
    let dir = match std::env::var_os("DROVER_BENCH_AGENTS_DIR") {
        Some(d) => PathBuf::from(d).join(name),
        None if Path::new("/dev/shm").is_dir() => Path::new("/dev/shm/drover-bench-sim").join(name),
        None => base.join("agents"),
    };
    log(&format!("simulated nodes' state under {}", dir.display()));
    Ok(dir)
}

/// Empties the simulated nodes' journals of earlier runs, keeping their identities. An agent
/// keeps a week of delivered invocations (two inodes each) against repeated deliveries; run
/// after run, ten thousand nodes' weeks filled the tmpfs's inodes, and agents that could not
/// record an invocation refused it until the run took 71 s instead of 18 (BENCHMARKS.md,
/// section 11).
fn clear_journals(dir: &Path) -> Result<()> {
    let Ok(nodes) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for node in nodes.flatten() {
        let journal = node.path().join("journal");
        if journal.is_dir() {
            std::fs::remove_dir_all(&journal)
                .with_context(|| format!("emptying {}", journal.display()))?;
        }
    }
    Ok(())
}

/// A release server and `n` simulated agents, all Online.
pub(crate) fn fleet(n: usize) -> Result<Fleet> {
    fleet_with(n, &History::default())
}

/// Command history stored before the server starts, and the server's retention.
#[derive(Default)]
struct History {
    /// Invocations already stored (seeded by `seed-history`).
    seeded: usize,
    /// `--history-max-invocations` for the server (the default when `None`).
    keep: Option<usize>,
}

fn fleet_with(n: usize, history: &History) -> Result<Fleet> {
    // A fleet of its own per history, so that seeded rows never reach the plain runs.
    let name = match history.seeded {
        0 => n.to_string(),
        h => format!("{n}-history{h}"),
    };
    let base = target_dir().join("bench-sim").join(name);
    let data = base.join("server");
    let cli_config = base.join("cli.toml");
    std::fs::create_dir_all(&data)?;
    if history.seeded > 0 {
        log(&format!(
            "seeding the history up to {} invocations",
            history.seeded
        ));
        run(Command::new(release_bin("seed-history"))
            .arg("--db")
            .arg(data.join("drover.db"))
            .args(["--invocations", &history.seeded.to_string()]))?;
    }
    let keep = match history.keep {
        Some(k) => vec!["--history-max-invocations".to_string(), k.to_string()],
        // Never prune during a plain run: the runs add to the history.
        None => vec![
            "--history-max-invocations".to_string(),
            "1000000000".to_string(),
        ],
    };
    let server_log = base.join("server-run.log");
    let (server, url, fp) = start_server(&data, "127.0.0.1:0", &server_log, &keep)?;
    let token_file = data.join("admin.token");
    run(Command::new(release_bin("drover"))
        .env("DROVER_CONFIG", &cli_config)
        .args(["login", "--server", &url, "--ca-fingerprint", &fp])
        .arg("--token-file")
        .arg(&token_file)
        .stdout(Stdio::null()))?;
    let sims = Sims::start(&base, &url, &fp, n)?;
    wait_online(&cli_config, n, Duration::from_secs(900), "connect")?;
    Ok(Fleet {
        server,
        sims,
        cli_config,
        url,
        fp,
        base,
        n,
    })
}

/// Writes back dirty pages, so that each run starts from the same filesystem state. Without
/// it, each run of N invocations leaves N times a few just-deleted inodes in dirty inode-table
/// blocks, which ext4 without a journal skips over for 5 minutes when it allocates
/// (`recently_deleted`: 5 s once the block is written back), and every run is slower than the
/// one before.
fn settle_filesystem() {
    let _ = Command::new("sync").status();
}

/// Runs `drover run` once; returns the wall time and how many `ok` lines came back.
fn run_once(cli_config: &Path, targets: &[&str]) -> Result<(Duration, usize)> {
    settle_filesystem();
    let t0 = Instant::now();
    let out = Command::new(release_bin("drover"))
        .env("DROVER_CONFIG", cli_config)
        .arg("run")
        .args(targets)
        .args(["--max-concurrency", "100%", "-o", "text", "--", "echo ok"])
        .stdin(Stdio::null())
        .output()
        .context("running drover run")?;
    let elapsed = t0.elapsed();
    let oks = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| *l == "ok")
        .count();
    if !out.status.success() {
        bail!(
            "drover run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((elapsed, oks))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

struct RunArgs {
    counts: Vec<usize>,
    runs: usize,
    history: History,
}

fn parse_counts(args: &[String]) -> Result<RunArgs> {
    let mut counts = Vec::new();
    let mut runs = 3;
    let mut history = History::default();
    let mut it = args.iter();
    let num = |it: &mut std::slice::Iter<'_, String>, flag: &str| -> Result<usize> {
        it.next()
            .with_context(|| format!("{flag} N"))?
            .replace('_', "")
            .parse()
            .with_context(|| flag.to_string())
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--count" => counts.push(num(&mut it, "--count")?),
            "--runs" => runs = num(&mut it, "--runs")?,
            "--history" => history.seeded = num(&mut it, "--history")?,
            "--keep" => history.keep = Some(num(&mut it, "--keep")?),
            other => bail!(
                "unknown argument {other:?}: use --count N (repeatable), --runs R, \
                 --history INVOCATIONS (seeded first), --keep INVOCATIONS (the server's retention)"
            ),
        }
    }
    if counts.is_empty() {
        counts = vec![100, 1000, 10_000];
    }
    Ok(RunArgs {
        counts,
        runs,
        history,
    })
}

/// `bench run [--count N]... [--runs R] [--history H] [--keep K]`
pub fn bench_run(args: &[String], build: bool) -> Result<()> {
    let RunArgs {
        counts,
        runs,
        history,
    } = parse_counts(args)?;
    if build {
        build_release(&[
            ("drover", "drover"),
            ("drover-bench", "drover-sim"),
            ("drover-bench", "seed-history"),
        ])?;
    }
    let mut results = Vec::new();
    for n in counts {
        let mut f = fleet_with(n, &history)?;
        log(&format!("{n} agents Online; warm-up run"));
        let (_, oks) = run_once(&f.cli_config, &["--targets", "all"])?;
        if oks != n {
            bail!("warm-up: {oks}/{n} nodes answered ok");
        }
        let mut times = Vec::new();
        let mut cpu = Vec::new();
        for r in 1..=runs {
            let before = cpu_ms(f.server.pid())?;
            let (t, oks) = run_once(&f.cli_config, &["--targets", "all"])?;
            let server_ms = cpu_ms(f.server.pid())? - before;
            if oks != n {
                bail!("run {r}: {oks}/{n} nodes answered ok");
            }
            log(&format!(
                "N={n} run {r}: {:.0} ms, server CPU {server_ms:.0} ms",
                t.as_secs_f64() * 1000.0
            ));
            times.push(t.as_secs_f64() * 1000.0);
            cpu.push(server_ms);
        }
        let (rss, hwm) = memory_kib(f.server.pid())?;
        let all = times
            .iter()
            .map(|t| format!("{t:.0}"))
            .collect::<Vec<_>>()
            .join(",");
        results.push(format!(
            "RESULT run.echo_ok.n{n}{}={:.0} unit=ms stat=median runs={runs} all={all} server_cpu_ms_per_1000_invocations={:.0} server_rss_mib={:.0} server_peak_rss_mib={:.0}",
            match history.seeded {
                0 => String::new(),
                h => format!(".history{h}"),
            },
            median(times),
            // The mean, not the median: the kernel counts a process's CPU in 10 ms ticks, which
            // at 100 nodes is a third of a run's figure; summed over the runs, it is not.
            cpu.iter().sum::<f64>() / cpu.len().max(1) as f64 * 1000.0 / n as f64,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        ));
        f.sims.stop()?;
        f.server.stop(Duration::from_secs(30))?;
    }
    for line in &results {
        println!("{line}");
    }
    Ok(())
}

/// `bench output [--count N] [--mib M]`: every node prints M MiB; time from send until every
/// result is stored and the CLI exited, and the server's CPU time for it. One run: the figure
/// of interest is the server's cost per byte, which one run shows.
pub fn bench_output(args: &[String], build: bool) -> Result<()> {
    let mut n = 100usize;
    let mut mib = 16u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--count" => n = it.next().context("--count N")?.parse().context("--count")?,
            "--mib" => mib = it.next().context("--mib M")?.parse().context("--mib")?,
            other => bail!("unknown argument {other:?}: use --count N and --mib M"),
        }
    }
    if build {
        build_release(&[("drover", "drover"), ("drover-bench", "drover-sim")])?;
    }
    let mut f = fleet(n)?;
    let bytes = mib * 1024 * 1024;
    let script = format!("head -c {bytes} /dev/zero | tr '\\0' a");
    settle_filesystem();
    let before = cpu_ms(f.server.pid())?;
    let t0 = Instant::now();
    let out = Command::new(release_bin("drover"))
        .env("DROVER_CONFIG", &f.cli_config)
        .args(["run", "--targets", "all", "--max-concurrency", "100%"])
        .args([
            "--output-limit",
            &bytes.to_string(),
            "-o",
            "json",
            "--",
            &script,
        ])
        .stdin(Stdio::null())
        .output()
        .context("running drover run")?;
    let elapsed = t0.elapsed();
    let server_ms = cpu_ms(f.server.pid())? - before;
    let (rss, hwm) = memory_kib(f.server.pid())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ok = text.matches("\"Success\"").count();
    if !out.status.success() {
        bail!(
            "drover run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    log(&format!("{ok} Success mentions in the CLI's JSON"));
    println!(
        "RESULT run.output.n{n}.mib{mib}={:.0} unit=ms server_cpu_ms={server_ms:.0} server_rss_mib={:.0} server_peak_rss_mib={:.0}",
        elapsed.as_secs_f64() * 1000.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    f.sims.stop()?;
    f.server.stop(Duration::from_secs(30))?;
    Ok(())
}

/// `bench fanout [N ...]`: fanout.sh with Drover as the extra contender, on 200 simulated nodes.
pub fn bench_fanout(args: &[String], build: bool) -> Result<()> {
    if build {
        build_release(&[("drover", "drover"), ("drover-bench", "drover-sim")])?;
    }
    let ns: Vec<String> = if args.is_empty() {
        ["10", "50", "100", "200"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        args.to_vec()
    };
    let max = ns
        .iter()
        .filter_map(|n| n.parse::<usize>().ok())
        .max()
        .unwrap_or(200);
    let mut f = fleet(max)?;
    let script = root()
        .join("..")
        .join("shared")
        .join("peers")
        .join("fanout.sh");
    let extra = format!(
        "DROVER_CONFIG={} {} run --targets-file \"$HOSTS_FILE\" --max-concurrency 100% -o text -- echo ok",
        f.cli_config.display(),
        release_bin("drover").display()
    );
    let status = Command::new("bash")
        .arg(&script)
        .args(&ns)
        .env("FANOUT_EXTRA_CMD", extra)
        .env("FANOUT_EXTRA_NAME", "drover")
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    f.sims.stop()?;
    f.server.stop(Duration::from_secs(30))?;
    if !status.success() {
        bail!("fanout.sh failed: {status}");
    }
    Ok(())
}

/// `bench stress [--agents N] [--slow M]`: M slow clients (the `slowloris` binary: half a TLS
/// record each, from 20 loopback addresses, reconnecting a second after each close) hold
/// connections while N real agents connect at the same time. Reports how long until every
/// agent is Online, and the server's largest RSS and descriptor count meanwhile. Bounded: it
/// stops itself after 120 s of waiting.
pub fn bench_stress(args: &[String], build: bool) -> Result<()> {
    let (mut agents, mut slow) = (1000usize, 5000usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--agents" => {
                agents = it
                    .next()
                    .context("--agents N")?
                    .parse()
                    .context("--agents")?
            }
            "--slow" => slow = it.next().context("--slow M")?.parse().context("--slow")?,
            other => bail!("unknown argument {other:?}: use --agents N and --slow M"),
        }
    }
    if build {
        build_release(&[
            ("drover", "drover"),
            ("drover-bench", "drover-sim"),
            ("drover-bench", "slowloris"),
        ])?;
    }
    let mut f = fleet(agents)?;
    f.sims.stop()?;
    let offline_by = Instant::now() + Duration::from_secs(60);
    while online_count(&f.cli_config) != Some(0) {
        if Instant::now() > offline_by {
            bail!("the agents did not go offline");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let target = f.url.trim_start_matches("https://").to_string();
    let mut attacker = Proc::spawn(
        "slowloris",
        Command::new(release_bin("slowloris")).args([
            "--target",
            &target,
            "--count",
            &slow.to_string(),
            "--sources",
            "20",
        ]),
        &f.base.join("slowloris.log"),
    )?;
    // Let the attack build up: wait for the first report with most connections open.
    let ramp = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, line) = attacker.wait_line("OPEN", Duration::from_secs(20))?;
        let open: usize = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if open >= slow.min(2000) || Instant::now() > ramp {
            log(&format!("attack under way: {line}"));
            break;
        }
    }
    let pid = f.server.pid();
    let (mut max_rss, mut max_fds) = (0u64, 0usize);
    let t0 = Instant::now();
    let mut sims = Sims::start(&f.base, &f.url, &f.fp, f.n)?;
    let deadline = t0 + Duration::from_secs(120);
    let online_after = loop {
        max_rss = max_rss.max(memory_kib(pid)?.0);
        max_fds = max_fds.max(fd_count(pid));
        let online = online_count(&f.cli_config).unwrap_or(0);
        if online >= agents {
            break Some(t0.elapsed());
        }
        if Instant::now() > deadline {
            log(&format!("only {online}/{agents} Online after 120 s"));
            break None;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let attack = attacker
        .drain_matching("OPEN")
        .last()
        .map(|(_, l)| l.clone())
        .unwrap_or_default();
    let metrics = Command::new("curl")
        .args(["-sk", "-H"])
        .arg(format!(
            "Authorization: Bearer {}",
            std::fs::read_to_string(f.base.join("server").join("admin.token"))?.trim()
        ))
        .arg(format!("{}/metrics", f.url))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let refused: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("drover_agent_refused_total{"))
        .map(|l| {
            l.trim_start_matches("drover_agent_refused_total")
                .to_string()
        })
        .collect();
    attacker.stop(Duration::from_secs(10))?;
    sims.stop()?;
    f.server.stop(Duration::from_secs(30))?;
    println!(
        "RESULT stress.agents{agents}.slow{slow}.all_online_ms={} max_server_rss_mib={:.0} max_server_fds={max_fds} attacker_last=\"{attack}\" refused=\"{}\"",
        online_after.map_or("none".to_string(), |d| d.as_millis().to_string()),
        max_rss as f64 / 1024.0,
        refused.join(" ")
    );
    if online_after.is_none() {
        bail!("not every agent came Online within 120 s");
    }
    Ok(())
}

/// `bench floor [--count N]... [--runs R]`: what N nodes' shells cost with no Drover at all. N
/// `sh -c 'echo ok'` started at once from this process and waited for (the floor), and
/// the same shaped as an agent runs a step (a wrapper shell that starts `sh` on the script and
/// writes its exit code: two programs per invocation). Wall time and the children's CPU.
pub fn bench_floor(args: &[String]) -> Result<()> {
    let RunArgs { counts, runs, .. } = parse_counts(args)?;
    let shapes = [
        ("sh", "echo ok"),
        ("wrapper", "/bin/sh -c 'echo ok'; echo $? > /dev/null"),
    ];
    for n in counts {
        for (shape, script) in shapes {
            let (mut times, mut cpus) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                settle_filesystem();
                let cpu0 = children_cpu_ms()?;
                let t0 = Instant::now();
                let mut children = Vec::with_capacity(n);
                for _ in 0..n {
                    children.push(
                        Command::new("/bin/sh")
                            .args(["-c", script])
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .spawn()
                            .context("starting /bin/sh")?,
                    );
                }
                for mut c in children {
                    c.wait()?;
                }
                times.push(t0.elapsed().as_secs_f64() * 1000.0);
                cpus.push(children_cpu_ms()? - cpu0);
            }
            println!(
                "RESULT floor.{shape}.n{n}={:.0} unit=ms stat=median runs={runs} cpu_ms={:.0} cpu_ms_per_process={:.3}",
                median(times),
                median(cpus.clone()),
                median(cpus) / n as f64
            );
        }
    }
    Ok(())
}
