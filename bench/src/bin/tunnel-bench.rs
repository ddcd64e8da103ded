//! `tunnel-bench`: throughput of the agent tunnel (TCP, mutual TLS, yamux) on loopback, both
//! ends in this one process, exactly as the server and the agent set it up.
//!
//! * `single`: the server opens one stream and writes `--mib` MiB; the agent side reads to EOF
//!   and writes the byte count back. Time from the first write until the server has the count.
//! * `multi`: `--streams` streams at once share `--mib` MiB, while one more stream, which the
//!   agent accepts but never reads, holds `--stalled-mib` MiB of pending writes. Reports the
//!   aggregate rate and the mean and slowest stream durations.
//!
//! Each measurement runs `--runs` times on one connection per `--split-send-size`; the median
//! is reported on stdout as `RESULT name=value unit=... ...` lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use drover_pki::{CertificateAuthority, NodeKey};
use drover_tunnel::dial::{self, Endpoint};
use drover_tunnel::{Incoming, Role, Stream, Tunnel, TunnelConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

#[path = "../measure.rs"]
mod measure;

use measure::{cpu_mark, cpu_since, discard, human_size, list, median, parse_size};

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Parser)]
#[command(about = "Throughput of the Drover agent tunnel on loopback")]
struct Args {
    /// Leave glibc's allocator as shipped instead of the setting the drover binary applies
    /// (`drover_tunnel::heap`), to measure what it gives.
    #[arg(long)]
    glibc_defaults: bool,
    /// Runs per measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// MiB per run (the single stream's size; shared by all streams in the multi test).
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Concurrent streams in the multi test.
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// yamux split send size(s), comma-separated, e.g. 16K,64K,256K (default: TunnelConfig's).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    split_send_size: Vec<usize>,
    /// MiB the server tries to write to the stream that is never read (multi test).
    #[arg(long, default_value_t = 16)]
    stalled_mib: u64,
    /// Size of each write call, in KiB.
    #[arg(long, default_value_t = 256)]
    write_kib: usize,
    /// TunnelConfig::accept_backlog (default: TunnelConfig's).
    #[arg(long)]
    accept_backlog: Option<usize>,
    /// Which tests: single, multi (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "single,multi")]
    tests: Vec<String>,
    /// A run during which other processes used more CPU than this (% of one core) is thrown
    /// away and repeated (at most --max-discards times in all), so that a compile elsewhere
    /// does not skew the figures.
    #[arg(long, default_value_t = 20.0)]
    max_other_cpu: f64,
    #[arg(long, default_value_t = 30)]
    max_discards: usize,
    /// Restrict the server to one TLS 1.3 cipher suite (aes128, aes256 or chacha20), to compare
    /// them; by default both ends use drover_pki::crypto_provider() as it is.
    #[arg(long)]
    server_cipher: Option<String>,
    /// Instead of measuring, forward TCP through the tunnel until killed: accept on this address
    /// (the server side), open a stream per connection, and connect from the agent side to
    /// --forward-to. For ../shared/peers/forward.sh (FORWARD_EXTRA_CMD), beside `ssh -L`.
    #[arg(long, requires = "forward_to")]
    forward_listen: Option<String>,
    /// Where the agent side connects each forwarded stream.
    #[arg(long, requires = "forward_listen")]
    forward_to: Option<String>,
}

/// The agent side parks the next stream it accepts here instead of reading it.
type Park = Arc<Mutex<Option<oneshot::Sender<Stream>>>>;

/// What the agent side does with the streams it accepts.
#[derive(Clone)]
enum AgentMode {
    /// Count and answer (the measurements), parking one on request.
    Sink(Park),
    /// Connect to this address and copy both ways (forward mode).
    Forward(String),
}

/// Both ends of one tunnel connection.
struct Pair {
    server: Tunnel,
    agent: Tunnel,
    park: Park,
    cipher: String,
    _server_incoming: Incoming,
}

/// The server's crypto provider, restricted to one cipher suite if asked.
fn server_provider(cipher: Option<&str>) -> Result<Arc<rustls::crypto::CryptoProvider>> {
    let provider = drover_pki::crypto_provider();
    let Some(cipher) = cipher else {
        return Ok(provider);
    };
    let wanted = match cipher {
        "aes128" => rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        "aes256" => rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
        "chacha20" => rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        other => bail!("unknown cipher {other:?}: aes128, aes256 or chacha20"),
    };
    let mut p = (*provider).clone();
    p.cipher_suites.retain(|s| s.suite() == wanted);
    Ok(Arc::new(p))
}

async fn connect(
    cfg: &TunnelConfig,
    forward_to: Option<String>,
    cipher: Option<&str>,
) -> Result<Pair> {
    let lifetime = Duration::from_secs(86400);
    let ca = CertificateAuthority::generate("tunnel-bench CA")?;
    let issued = ca.issue_server(&["127.0.0.1".to_string()], lifetime)?;
    let node = NodeKey::generate()?;
    let (node_cert, _) = ca.sign_node_csr(&node.csr_pem, "n-0123456789abcdef0", lifetime)?;

    // The server: client certificates required, chaining to the CA; the agent ALPN.
    let provider = server_provider(cipher)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in drover_pki::certs_from_pem(ca.cert_pem())? {
        roots.add(cert)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    // The chain includes the CA, which the agent pins by fingerprint.
    let chain = drover_pki::certs_from_pem(&format!("{}{}", issued.cert_pem, ca.cert_pem()))?;
    let mut server_cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, drover_pki::key_from_pem(&issued.key_pem)?)?;
    server_cfg.alpn_protocols = vec![drover_proto::ALPN_AGENT.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let accepted = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        anyhow::Ok(acceptor.accept(tcp).await?)
    });

    // The agent: the same dial and TLS configuration as drover-agent.
    let client_cfg = drover_client::pinned_tls(
        &ca.fingerprint()?,
        &[drover_proto::ALPN_AGENT],
        Some((
            drover_pki::certs_from_pem(&node_cert)?,
            drover_pki::key_from_pem(&node.key_pem)?,
        )),
    )?;
    let target = Endpoint {
        credentials: None,
        host: "127.0.0.1".into(),
        port,
    };
    let agent_tls = dial::dial(&target, None, Arc::new(client_cfg), Duration::from_secs(10))
        .await
        .context("dialling the bench server")?;
    let server_tls = accepted.await??;
    {
        let conn = server_tls.get_ref().1;
        ensure!(
            conn.alpn_protocol() == Some(drover_proto::ALPN_AGENT),
            "ALPN not negotiated"
        );
        ensure!(
            conn.peer_certificates().is_some_and(|c| !c.is_empty()),
            "no client certificate"
        );
    }
    let cipher = agent_tls
        .get_ref()
        .1
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();

    let (server, server_incoming, server_driver) = Tunnel::start(server_tls, Role::Server, cfg);
    tokio::spawn(report_end("server", server_driver));
    let (agent, agent_incoming, agent_driver) = Tunnel::start(agent_tls, Role::Agent, cfg);
    tokio::spawn(report_end("agent", agent_driver));
    let park: Park = Arc::new(Mutex::new(None));
    let mode = match forward_to {
        Some(to) => AgentMode::Forward(to),
        None => AgentMode::Sink(park.clone()),
    };
    tokio::spawn(agent_accept_loop(agent_incoming, mode));
    Ok(Pair {
        server,
        agent,
        park,
        cipher,
        _server_incoming: server_incoming,
    })
}

/// Runs a tunnel driver and says how it ended, if it ends with an error.
async fn report_end(
    side: &'static str,
    driver: impl std::future::Future<Output = Result<(), drover_tunnel::TunnelError>>,
) {
    match driver.await {
        Err(e) => eprintln!("{side} side: the tunnel ended: {:#}", anyhow::Error::new(e)),
        Ok(()) => tracing::debug!("{side} side: the tunnel ended"),
    }
}

/// The agent side: every stream is read to EOF and answered with its byte count, except one
/// asked to be parked, which is handed over unread.
async fn agent_accept_loop(mut incoming: Incoming, mode: AgentMode) {
    while let Some(stream) = incoming.accept().await {
        let park = match &mode {
            AgentMode::Sink(park) => park,
            AgentMode::Forward(to) => {
                let to = to.clone();
                tokio::spawn(async move {
                    if let Err(e) = forward_out(stream, &to).await {
                        eprintln!("agent side: forward to {to} failed: {e:#}");
                    }
                });
                continue;
            }
        };
        let parked = park.lock().map(|mut p| p.take()).unwrap_or(None);
        match parked {
            Some(tx) => {
                let _ = tx.send(stream);
            }
            None => {
                tokio::spawn(async move {
                    if let Err(e) = sink(stream).await {
                        eprintln!("agent side: stream failed: {e:#}");
                    }
                });
            }
        }
    }
}

/// Copy buffer of the forwarder, each way.
const FORWARD_BUF: usize = 256 * 1024;

async fn forward_out(mut stream: Stream, to: &str) -> Result<()> {
    let mut tcp = tokio::net::TcpStream::connect(to).await?;
    tcp.set_nodelay(true)?;
    tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut tcp, FORWARD_BUF, FORWARD_BUF)
        .await?;
    Ok(())
}

/// Forward mode, the server side: every TCP connection accepted on `listen` becomes a stream.
async fn forward(cfg: &TunnelConfig, listen: &str, to: &str, cipher: Option<&str>) -> Result<()> {
    let pair = connect(cfg, Some(to.to_string()), cipher).await?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    eprintln!(
        "tunnel-bench: forwarding {listen} -> tunnel ({}, split {}) -> {to}",
        pair.cipher,
        human_size(cfg.split_send_size)
    );
    loop {
        let (mut tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let tunnel = pair.server.clone();
        tokio::spawn(async move {
            let res = async {
                let mut stream = tunnel.open().await?;
                tokio::io::copy_bidirectional_with_sizes(
                    &mut tcp,
                    &mut stream,
                    FORWARD_BUF,
                    FORWARD_BUF,
                )
                .await?;
                anyhow::Ok(())
            };
            if let Err(e) = res.await {
                eprintln!("server side: forwarding failed: {e:#}");
            }
        });
    }
}

async fn sink(mut stream: Stream) -> Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    stream.write_all(&total.to_be_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Opens a stream, writes `bytes` from `buf`, half-closes and waits for the count. Returns the
/// time from the first write until the count arrived.
async fn send_counted(tunnel: &Tunnel, bytes: u64, buf: &[u8]) -> Result<Duration> {
    let mut stream = tunnel.open().await?;
    let t0 = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        stream
            .write_all(buf.get(..n).context("write size")?)
            .await?;
        left -= n as u64;
    }
    stream.shutdown().await?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).await?;
    let elapsed = t0.elapsed();
    let got = u64::from_be_bytes(count);
    ensure!(got == bytes, "the agent counted {got} bytes of {bytes}");
    Ok(elapsed)
}

struct MultiRun {
    rate: f64,
    mean_s: f64,
    slowest_s: f64,
    stalled_written: u64,
}

async fn multi_once(pair: &Pair, args: &Args, buf: Arc<Vec<u8>>) -> Result<MultiRun> {
    let streams = args.streams.max(1) as u64;
    let per = args.mib * MIB / streams;
    // The stream that is never read: parked on the agent side, written to from here until its
    // window is full; it must hold nothing but its own window.
    let (tx, rx) = oneshot::channel();
    if let Ok(mut p) = pair.park.lock() {
        *p = Some(tx);
    }
    let mut stalled = pair.server.open().await?;
    let written = Arc::new(AtomicU64::new(0));
    let stalled_bytes = args.stalled_mib * MIB;
    let writer = {
        let (buf, written) = (buf.clone(), written.clone());
        tokio::spawn(async move {
            let mut left = stalled_bytes;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                let chunk = buf.get(..n).unwrap_or_default();
                match stalled.write(chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        written.fetch_add(k as u64, Ordering::Relaxed);
                        left -= k as u64;
                    }
                }
            }
            stalled
        })
    };
    let parked = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .context("the agent side did not accept the never-read stream")??;

    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let (tunnel, buf) = (pair.server.clone(), buf.clone());
        tasks.spawn(async move { send_counted(&tunnel, per, &buf).await });
    }
    let mut durations = Vec::new();
    let mut failures = Vec::new();
    while let Some(res) = tasks.join_next().await {
        match res {
            Ok(Ok(d)) => durations.push(d.as_secs_f64()),
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let total = t0.elapsed().as_secs_f64();
    let stalled_written = written.load(Ordering::Relaxed);
    let stalled_done = writer.is_finished();
    writer.abort();
    drop(parked);
    if !failures.is_empty() {
        bail!(
            "{} of {streams} streams failed (a reset stream reads \"connection is closed\"), first: {}",
            failures.len(),
            failures.first().cloned().unwrap_or_default()
        );
    }
    if stalled_done {
        bail!("the never-read stream's writer finished: it was not held back by flow control");
    }
    let mean_s = durations.iter().sum::<f64>() / durations.len().max(1) as f64;
    let slowest_s = durations.iter().copied().fold(0.0, f64::max);
    Ok(MultiRun {
        rate: (per * streams) as f64 / total / 1e6,
        mean_s,
        slowest_s,
        stalled_written,
    })
}

async fn bench_one(args: &Args, cfg: &TunnelConfig) -> Result<Vec<String>> {
    let pair = connect(cfg, None, args.server_cipher.as_deref()).await?;
    let split = human_size(cfg.split_send_size);
    eprintln!(
        "split_send_size={split}: connected ({}), {} run(s) of {} MiB",
        pair.cipher, args.runs, args.mib
    );
    let buf = Arc::new(vec![0x5au8; args.write_kib.max(1) * 1024]);
    let detail = format!(
        "split={split} accept_backlog={} mib={} write_kib={} cipher={}",
        cfg.accept_backlog, args.mib, args.write_kib, pair.cipher
    );
    let mut results = Vec::new();
    let mut discarded = 0usize;

    if args.tests.iter().any(|t| t == "single") {
        // One untimed warm-up of 64 MiB, so that yamux has measured the round-trip time.
        send_counted(&pair.server, 64 * MIB, &buf).await?;
        let (mut rates, mut own_cpu, mut foreign_cpu) = (vec![], vec![], vec![]);
        let mut run = 1;
        while run <= args.runs {
            let mark = cpu_mark();
            let d = send_counted(&pair.server, args.mib * MIB, &buf).await?;
            let (own, foreign) = cpu_since(mark);
            let rate = (args.mib * MIB) as f64 / d.as_secs_f64() / 1e6;
            eprintln!(
                "  single run {run}: {rate:.1} MB/s ({:.3} s; CPU: this process {own:.0} %, others {foreign:.0} %)",
                d.as_secs_f64()
            );
            if discard(
                foreign,
                args.max_other_cpu,
                args.max_discards,
                &mut discarded,
            )
            .await
            {
                continue;
            }
            run += 1;
            rates.push(rate);
            own_cpu.push(own);
            foreign_cpu.push(foreign);
        }
        results.push(format!(
            "RESULT tunnel.single={:.1} unit=MB/s stat=median runs={} {detail} all={} cpu_pct={} other_cpu_pct={} discarded_busy={discarded}",
            median(&rates),
            args.runs,
            list(&rates, 1),
            list(&own_cpu, 0),
            list(&foreign_cpu, 0)
        ));
    }

    if args.tests.iter().any(|t| t == "multi") {
        let name = format!("tunnel.multi{}", args.streams);
        let (mut rates, mut means, mut slows, mut ratios) = (vec![], vec![], vec![], vec![]);
        let (mut own_cpu, mut foreign_cpu) = (vec![], vec![]);
        let mut failures: Vec<String> = Vec::new();
        let mut run = 0;
        while run < args.runs {
            run += 1;
            let mark = cpu_mark();
            match multi_once(&pair, args, buf.clone()).await {
                Ok(r) => {
                    let (own, foreign) = cpu_since(mark);
                    let ratio = r.slowest_s / r.mean_s;
                    eprintln!(
                        "  multi run {run}: {:.1} MB/s, mean {:.3} s, slowest {:.3} s (ratio {ratio:.2}); never-read stream took {} KiB; CPU: this process {own:.0} %, others {foreign:.0} %",
                        r.rate,
                        r.mean_s,
                        r.slowest_s,
                        r.stalled_written / 1024
                    );
                    if discard(
                        foreign,
                        args.max_other_cpu,
                        args.max_discards,
                        &mut discarded,
                    )
                    .await
                    {
                        run -= 1;
                        continue;
                    }
                    own_cpu.push(own);
                    foreign_cpu.push(foreign);
                    rates.push(r.rate);
                    means.push(r.mean_s);
                    slows.push(r.slowest_s);
                    ratios.push(ratio);
                }
                Err(e) => {
                    // A failed run does not count; the next one runs on the same connection if
                    // it is still up (a stream reset leaves the tunnel open).
                    let alive = !pair.server.is_closed() && !pair.agent.is_closed();
                    eprintln!("  multi run {run}: FAILED: {e:#} (tunnel still open: {alive})");
                    failures.push(format!("{e:#}"));
                    if !alive {
                        break;
                    }
                }
            }
        }
        let failed_runs = format!("failed_runs={}/{}", failures.len(), args.runs);
        results.push(if rates.is_empty() {
            format!(
                "RESULT {name}=NA unit=MB/s reason={:?} {failed_runs} {detail}",
                failures
                    .first()
                    .cloned()
                    .unwrap_or_default()
                    .replace(' ', "_")
            )
        } else {
            format!(
                "RESULT {name}={:.1} unit=MB/s stat=median runs={} {failed_runs} streams={} slowest_s={:.3} mean_s={:.3} ratio={:.2} stalled_stream=yes {detail} all={} ratios={} cpu_pct={} other_cpu_pct={} discarded_busy={discarded}",
                median(&rates),
                rates.len(),
                args.streams,
                median(&slows),
                median(&means),
                median(&ratios),
                list(&rates, 1),
                list(&ratios, 2),
                list(&own_cpu, 0),
                list(&foreign_cpu, 0)
            )
        });
    }
    // Close from the server side and let the agent side see it end, so that neither side
    // reports a broken pipe.
    pair.server.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), pair.agent.closed()).await;
    pair.agent.close();
    Ok(results)
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Before the runtime's threads exist, as the drover binary does it.
    if !args.glibc_defaults {
        drover_tunnel::heap::keep_freed_heap();
    }
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    // yamux logs through `log`; errors there say why a connection was torn down.
    let filter = tracing_subscriber::EnvFilter::try_from_env("TUNNEL_BENCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    ensure!(
        args.runs > 0 && args.mib > 0,
        "--runs and --mib must be positive"
    );
    let defaults = TunnelConfig::default();
    let sizes = if args.split_send_size.is_empty() {
        vec![defaults.split_send_size]
    } else {
        args.split_send_size.clone()
    };
    if let (Some(listen), Some(to)) = (&args.forward_listen, &args.forward_to) {
        let cfg = TunnelConfig {
            split_send_size: sizes.first().copied().unwrap_or(defaults.split_send_size),
            accept_backlog: args.accept_backlog.unwrap_or(defaults.accept_backlog),
            ..defaults.clone()
        };
        return forward(&cfg, listen, to, args.server_cipher.as_deref()).await;
    }
    let mut results = Vec::new();
    for size in sizes {
        let cfg = TunnelConfig {
            split_send_size: size,
            accept_backlog: args.accept_backlog.unwrap_or(defaults.accept_backlog),
            ..defaults.clone()
        };
        results.extend(bench_one(&args, &cfg).await?);
    }
    for line in results {
        println!("{line}");
    }
    Ok(())
}
