//! A slow client, for the stress check (`cargo xtask bench stress`): holds `--count` TCP
//! connections to `--target`, spread over `--sources` loopback addresses (127.0.0.2 on), each
//! having sent the first bytes of a TLS record and nothing more. A connection the server closes
//! is opened again a second later, as a persistent attacker would. Prints `HOLDING n` once all are
//! open, and every second `OPEN n REOPENED m`. Stops on SIGTERM or Ctrl-C.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, default_value_t = 5000)]
    count: usize,
    #[arg(long, default_value_t = 20)]
    sources: u8,
}

/// A TLS handshake record header announcing 512 bytes that never come.
const HALF_A_HELLO: [u8; 5] = [0x16, 0x03, 0x01, 0x02, 0x00];

async fn hold(
    target: SocketAddr,
    source: Ipv4Addr,
    open: Arc<AtomicU64>,
    reopened: Arc<AtomicU64>,
) {
    let mut first = true;
    loop {
        let connected = async {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source.into(), 0))?;
            let mut tcp = socket.connect(target).await?;
            tcp.write_all(&HALF_A_HELLO).await?;
            anyhow::Ok(tcp)
        }
        .await;
        if let Ok(mut tcp) = connected {
            open.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 256];
            // Until the server closes it.
            while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            open.fetch_sub(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !first {
            reopened.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.sources >= 1 && args.sources <= 200,
        "--sources: 1 to 200"
    );
    let open = Arc::new(AtomicU64::new(0));
    let reopened = Arc::new(AtomicU64::new(0));
    for i in 0..args.count {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % usize::from(args.sources)) as u8);
        tokio::spawn(hold(args.target, source, open.clone(), reopened.clone()));
    }
    let mut said_holding = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let (o, r) = (open.load(Ordering::Relaxed), reopened.load(Ordering::Relaxed));
                if !said_holding && o >= args.count as u64 {
                    println!("HOLDING {o}");
                    said_holding = true;
                }
                println!("OPEN {o} REOPENED {r}");
            }
            _ = &mut stop => break,
            _ = term.recv() => break,
        }
    }
    Ok(())
}
