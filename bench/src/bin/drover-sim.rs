//! `drover-sim`: the agent simulator. One process runs N real agents (the same
//! `drover_agent::run` the `drover agent run` command runs), each with its own enrolled
//! identity in `DIR/<prefix>NNNN` and a fixed inventory naming it `<prefix>NNNN`.
//!
//! Identities missing (or belonging to another server CA) are registered first, through
//! activations created with the admin token and `drover_agent::register`. Then all agents start;
//! stdout gets `ALL_CONNECTED n=N ms=...` once every agent has connected, and
//! `ALL_RECONNECTED n=N ms=...` each time all are connected again after losing some (ms counted
//! from the first loss). Runs until SIGTERM or SIGINT.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use drover_agent::{
    AgentConfig, AgentEvent, AgentState, Identity, InventorySource, RebootMode, RegisterOptions,
};
use drover_api::CreateActivation;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(about = "Run many real Drover agents in one process")]
struct Args {
    /// Server URL, e.g. https://127.0.0.1:8443
    #[arg(long)]
    server: String,
    /// SHA-256 fingerprint of the server's CA.
    #[arg(long)]
    ca_fingerprint: String,
    /// File holding an admin API token (to create activations).
    #[arg(long)]
    token_file: PathBuf,
    /// Number of agents.
    #[arg(long)]
    count: usize,
    /// Number of the first agent: this process runs FIRST..FIRST+COUNT. A fleet split over
    /// several processes keeps each one's descriptor table small (every process an agent
    /// starts copies its parent's table, which a real node's agent keeps small).
    #[arg(long, default_value_t = 1)]
    first: usize,
    /// Directory of the agents' state directories (kept between runs).
    #[arg(long)]
    dir: PathBuf,
    /// Node name prefix: names are PREFIX0001, PREFIX0002, ...
    #[arg(long, default_value = "node")]
    prefix: String,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 32)]
    register_concurrency: usize,
    /// Register the missing identities, then exit without running the agents.
    #[arg(long)]
    register_only: bool,
}

fn name(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:04}")
}

fn raise_nofile() -> Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    // As root, lift the hard limit too: N agents hold N sockets, and each unit waiting at its
    // gate a pipe (up to 2N for N nodes running a command).
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(1 << 20),
            maximum: Some(1 << 20),
        },
    );
    let limit = getrlimit(Resource::Nofile);
    if let Some(max) = limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        )
        .context("raising RLIMIT_NOFILE")?;
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

/// Whether `dir` holds an identity for this server: `Some(true)` usable as is (its URL fixed up
/// if the server moved to another port), `Some(false)` stale, `None` absent.
fn check_identity(dir: &Path, server: &str, fingerprint: &str) -> Result<Option<bool>> {
    let Ok(identity) = Identity::load(dir) else {
        return Ok(if dir.exists() { Some(false) } else { None });
    };
    if identity.state.ca_fingerprint != fingerprint {
        return Ok(Some(false));
    }
    if identity.state.server != server {
        let state = AgentState {
            server: server.to_string(),
            ..identity.state.clone()
        };
        let path = dir.join("agent.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&state)?)
            .with_context(|| format!("updating {}", path.display()))?;
    }
    Ok(Some(true))
}

fn inventory(base: &drover_proto::Inventory, hostname: String) -> drover_proto::Inventory {
    drover_proto::Inventory {
        hostname,
        ..base.clone()
    }
}

async fn register_missing(
    args: &Args,
    server: &str,
    fingerprint: &str,
    base: &drover_proto::Inventory,
) -> Result<()> {
    let mut missing = Vec::new();
    for i in args.first..args.first + args.count {
        let dir = args.dir.join(name(&args.prefix, i));
        match check_identity(&dir, server, fingerprint)? {
            Some(true) => {}
            Some(false) => {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing the stale identity {}", dir.display()))?;
                missing.push(i);
            }
            None => missing.push(i),
        }
    }
    if missing.is_empty() {
        eprintln!(
            "drover-sim: all {} identities already registered",
            args.count
        );
        return Ok(());
    }
    eprintln!("drover-sim: registering {} node(s)", missing.len());
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading {}", args.token_file.display()))?
        .trim()
        .to_string();
    let admin = drover_client::Client::new(server, fingerprint, Some(token))?;
    let started = Instant::now();
    let mut done = 0usize;
    let mut next_report = 500usize;
    for chunk in missing.chunks(100_000) {
        let activation = admin
            .create_activation(&CreateActivation {
                registration_limit: chunk.len() as i64,
                expires_in_secs: 86400,
                tags: Default::default(),
                description: "drover-sim".into(),
                default_name: String::new(),
            })
            .await
            .context("creating an activation")?;
        let activation = Arc::new(activation);
        let mut results = futures::stream::iter(chunk.iter().copied())
            .map(|i| {
                let activation = activation.clone();
                let opts = RegisterOptions {
                    server: server.to_string(),
                    activation_id: activation.id.clone(),
                    activation_code: activation.code.clone(),
                    ca_fingerprint: Some(fingerprint.to_string()),
                    name: name(&args.prefix, i),
                    tags: Default::default(),
                    state_dir: args.dir.join(name(&args.prefix, i)),
                    proxy: None,
                };
                let inv = inventory(base, name(&args.prefix, i));
                async move {
                    drover_agent::register(opts, inv)
                        .await
                        .with_context(|| format!("registering {}", name(&args.prefix, i)))
                }
            })
            .buffer_unordered(args.register_concurrency.max(1));
        while let Some(res) = results.next().await {
            res?;
            done += 1;
            if done >= next_report || done == missing.len() {
                next_report = done + 500;
                eprintln!(
                    "drover-sim: registered {done}/{} ({:.1} s)",
                    missing.len(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    println!(
        "REGISTERED n={} ms={}",
        missing.len(),
        started.elapsed().as_millis()
    );
    Ok(())
}

/// What the agents report, tagged with their index.
enum Report {
    Event(usize, AgentEvent),
    Exited(usize, String),
}

async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn main() -> Result<()> {
    // The same allocator setting as the drover binary: the simulated agents are real ones.
    drover_tunnel::heap::keep_freed_heap();
    tokio::runtime::Runtime::new()?.block_on(run(Args::parse()))
}

async fn run(args: Args) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DROVER_SIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let nofile = raise_nofile()?;
    if (nofile as usize) < 2 * args.count + 256 {
        eprintln!(
            "drover-sim: warning: only {nofile} file descriptors for {} agents",
            args.count
        );
    }
    let server = args.server.trim_end_matches('/').to_string();
    let fingerprint = drover_pki::normalize_fingerprint(&args.ca_fingerprint)?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let base = drover_agent::inventory::collect();
    register_missing(&args, &server, &fingerprint, &base).await?;
    if args.register_only {
        return Ok(());
    }

    let root = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<Report>();
    let mut agents = tokio::task::JoinSet::new();
    let started = Instant::now();
    println!("STARTED n={}", args.count);
    for i in args.first..args.first + args.count {
        let node = name(&args.prefix, i);
        let mut config = AgentConfig::new(args.dir.join(&node));
        config.inventory = InventorySource::Fixed(inventory(&base, node));
        // Never the machine: a simulated node "reboots" by restarting its agent (below).
        config.reboot = RebootMode::RestartAgent;
        let (cancel, tx) = (root.child_token(), tx.clone());
        agents.spawn(async move {
            // Like a service supervisor: an agent that ends on its own (a reboot that a
            // script asked for) is started again; one that the server refused stays down.
            loop {
                let (ev_tx, mut ev_rx) = mpsc::channel(16);
                let run = drover_agent::run(config.clone(), cancel.clone(), Some(ev_tx));
                tokio::pin!(run);
                let res = loop {
                    tokio::select! {
                        res = &mut run => break res,
                        Some(ev) = ev_rx.recv() => {
                            let _ = tx.send(Report::Event(i, ev));
                        }
                    }
                };
                while let Ok(ev) = ev_rx.try_recv() {
                    let _ = tx.send(Report::Event(i, ev));
                }
                match res {
                    Ok(()) if !cancel.is_cancelled() => continue,
                    Ok(()) => {
                        let _ = tx.send(Report::Exited(i, "stopped".into()));
                    }
                    Err(e) => {
                        let _ = tx.send(Report::Exited(i, format!("{e:#}")));
                    }
                }
                return;
            }
        });
    }
    drop(tx);
    eprintln!("drover-sim: started {} agents", args.count);

    let n = args.count;
    let mut up = vec![false; args.first + n];
    let (mut connected, mut ever_count, mut disconnects, mut exits) =
        (0usize, 0usize, 0u64, 0usize);
    let mut ever = vec![false; args.first + n];
    let mut all_once = false;
    let mut first_loss: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            r = &mut signal => {
                r?;
                eprintln!("drover-sim: stopping");
                break;
            }
            _ = tick.tick() => {
                eprintln!(
                    "drover-sim: {:>7.1} s  connected {connected}/{n}  ever {ever_count}  disconnects {disconnects}  exited {exits}",
                    started.elapsed().as_secs_f64()
                );
            }
            report = rx.recv() => {
                let Some(report) = report else { break };
                match report {
                    Report::Event(i, AgentEvent::Connected { .. }) => {
                        if let Some(u) = up.get_mut(i) {
                            if !*u {
                                *u = true;
                                connected += 1;
                            }
                        }
                        if let Some(e) = ever.get_mut(i) {
                            if !*e {
                                *e = true;
                                ever_count += 1;
                            }
                        }
                    }
                    Report::Event(i, AgentEvent::Disconnected { reason }) => {
                        disconnects += 1;
                        if let Some(u) = up.get_mut(i) {
                            if *u {
                                *u = false;
                                connected -= 1;
                                if all_once && first_loss.is_none() {
                                    first_loss = Some(Instant::now());
                                }
                            }
                        }
                        if disconnects <= 3 {
                            eprintln!("drover-sim: {} disconnected: {reason}", name(&args.prefix, i));
                        }
                    }
                    Report::Event(_, _) => {}
                    Report::Exited(i, why) => {
                        exits += 1;
                        if let Some(u) = up.get_mut(i) {
                            if *u {
                                *u = false;
                                connected -= 1;
                            }
                        }
                        if exits <= 3 {
                            eprintln!("drover-sim: {} exited: {why}", name(&args.prefix, i));
                        }
                    }
                }
                if connected == n {
                    if !all_once {
                        all_once = true;
                        println!("ALL_CONNECTED n={n} ms={}", started.elapsed().as_millis());
                    } else if let Some(t) = first_loss.take() {
                        println!("ALL_RECONNECTED n={n} ms={}", t.elapsed().as_millis());
                    }
                }
            }
        }
    }
    root.cancel();
    let stop = Instant::now();
    let drained = tokio::time::timeout(Duration::from_secs(15), async {
        while agents.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "drover-sim: {} agents still running after 15 s; exiting",
            agents.len()
        );
        agents.abort_all();
    }
    eprintln!(
        "drover-sim: stopped in {:.1} s",
        stop.elapsed().as_secs_f64()
    );
    Ok(())
}
