//! `cargo xtask bench assoc`: what 100 associations on `rate(1 minute)` cost the server. A
//! release server and one release agent, then two phases of two minutes each:
//! - idle: the associations' targets match no node, so only the scheduler runs;
//! - applying: they target the node, so each sends one command a minute (100 a minute).
//!
//! Reported: the server's CPU per second of wall time in each phase, and per application.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::bench_sessions::{drover, setup, NODE};
use crate::process::cpu_ms;
use crate::{build_release, log, run};

const ASSOCIATIONS: usize = 100;
const PHASE: Duration = Duration::from_secs(120);

fn create(cli: &std::path::Path, prefix: &str, targets: &str) -> Result<()> {
    for i in 0..ASSOCIATIONS {
        run(drover(cli).args([
            "assoc",
            "create",
            &format!("{prefix}-{i:03}"),
            "--doc",
            "AWS-RunShellScript",
            "--param",
            "commands=true",
            "--targets",
            targets,
            "--schedule",
            "rate(1 minute)",
            "-o",
            "json",
        ]))?;
    }
    Ok(())
}

/// The server's CPU over one phase, in ms per second of wall time.
fn phase(server: u32) -> Result<f64> {
    let (cpu0, t0) = (cpu_ms(server)?, Instant::now());
    std::thread::sleep(PHASE);
    Ok((cpu_ms(server)? - cpu0) / t0.elapsed().as_secs_f64())
}

pub fn bench_assoc(build: bool) -> Result<()> {
    if build {
        build_release(&[("drover", "drover")])?;
    }
    let s = setup()?;
    let server = s.server.pid();
    // Baseline: the server with one agent and nothing scheduled.
    std::thread::sleep(Duration::from_secs(5));
    let base = phase(server)?;
    log(&format!("baseline: {base:.2} ms CPU per second"));
    println!("RESULT assoc.baseline_cpu_ms_per_s={base:.2}");

    create(&s.cli_config, "idle", "tag:role=none")?;
    let idle = phase(server)?;
    log(&format!(
        "100 associations, no target: {idle:.2} ms CPU per second"
    ));
    println!("RESULT assoc.idle_100_cpu_ms_per_s={idle:.2}");
    for i in 0..ASSOCIATIONS {
        run(drover(&s.cli_config).args(["assoc", "delete", &format!("idle-{i:03}")]))?;
    }

    create(&s.cli_config, "live", NODE)?;
    let live = phase(server)?;
    let per_run = (live - base) * 60.0 / ASSOCIATIONS as f64;
    log(&format!(
        "100 associations applying: {live:.2} ms CPU per second, {per_run:.2} ms per application"
    ));
    println!("RESULT assoc.applying_100_cpu_ms_per_s={live:.2}");
    println!("RESULT assoc.cpu_ms_per_application={per_run:.2}");
    Ok(())
}
