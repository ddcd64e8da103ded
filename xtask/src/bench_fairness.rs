//! Fairness of many connections through one `drover forward`, measured from both ends here
//! (forward.sh reports only the slowest connection): 100 connections at once, 1 GiB in all,
//! each timed from the common start to the end of its bytes at the sink, so the slowest can be
//! set against the mean; and the same beside one connection of the same forward that nobody
//! reads. Every connection's byte count is checked.

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::bench_sessions::{drover, NODE};
use crate::log;

const CONNS: usize = 100;
const TOTAL: u64 = 1024 * 1024 * 1024;

/// One run; `name` names the RESULT line.
pub(crate) fn fairness(cli: &Path, name: &str, beside_unread: bool) -> Result<String> {
    let sink = TcpListener::bind("127.0.0.1:0")?;
    let sink_port = sink.local_addr()?.port();
    let (ends, ended) = mpsc::channel::<(u64, Instant)>();
    // The sink: every connection read to its end on a thread of its own, except (beside_unread)
    // the first, which is held open and never read.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (i, conn) in sink.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            if beside_unread && i == 0 {
                held.push(conn);
                continue;
            }
            let ends = ends.clone();
            std::thread::spawn(move || {
                let n = crate::process::drain(&mut conn);
                let _ = ends.send((n, Instant::now()));
            });
        }
    });
    let mut fwd = drover(cli)
        .args(["forward", NODE, "--remote-port", &sink_port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| -> Result<String> {
        let local = crate::bench_forward::first_port(&mut fwd)?;
        let mut _held = None;
        if beside_unread {
            let mut held = TcpStream::connect(("127.0.0.1", local))?;
            held.set_write_timeout(Some(Duration::from_secs(3)))?;
            let chunk = vec![0u8; 1024 * 1024];
            let mut stuck = 0usize;
            while held.write_all(&chunk).is_ok() {
                stuck += chunk.len();
            }
            log(&format!("the unread connection holds {} MiB", stuck >> 20));
            _held = Some(held);
        }
        let each = TOTAL / CONNS as u64;
        let start = Instant::now();
        let senders: Vec<_> = (0..CONNS)
            .map(|_| {
                std::thread::spawn(move || -> Result<()> {
                    let mut s = TcpStream::connect(("127.0.0.1", local))?;
                    let chunk = vec![0x5au8; 64 * 1024];
                    let mut left = each;
                    while left > 0 {
                        let k = usize::try_from(left.min(chunk.len() as u64))?;
                        s.write_all(chunk.get(..k).context("chunk")?)?;
                        left -= k as u64;
                    }
                    s.shutdown(Shutdown::Write)?;
                    Ok(())
                })
            })
            .collect();
        let mut times = Vec::with_capacity(CONNS);
        for _ in 0..CONNS {
            let (n, at) = ended
                .recv_timeout(Duration::from_secs(300))
                .context("a connection never ended")?;
            ensure!(n == each, "a connection delivered {n} bytes, not {each}");
            times.push(at.duration_since(start).as_secs_f64());
        }
        for s in senders {
            s.join()
                .map_err(|_| anyhow::anyhow!("a sender panicked"))??;
        }
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let slowest = times.iter().copied().fold(0.0, f64::max);
        let fastest = times.iter().copied().fold(f64::MAX, f64::min);
        Ok(format!(
            "RESULT forward.{name}.c100_fairness={:.2} unit=slowest_over_mean mean_s={mean:.2} \
             slowest_s={slowest:.2} fastest_s={fastest:.2} aggregate_mb_s={:.0} conns={CONNS}",
            slowest / mean,
            (each * CONNS as u64) as f64 / 1e6 / slowest,
        ))
    })();
    let _ = fwd.kill();
    let _ = fwd.wait();
    result
}
