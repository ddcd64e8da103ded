//! `cargo xtask bench console [--count N]`: the node table of the web console, in Debian's
//! chromium (headless, through playwright-core), over a fleet of N simulated nodes: the time
//! from opening the page to the first rows, to scroll through every row a screen at a time
//! (each screen counted once its rows are drawn), to sort and to search.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::bench_run::fleet;
use crate::{build_release, log, release_bin, root};

pub fn bench_console(args: &[String], build: bool) -> Result<()> {
    let n = match args {
        [] => 10_000,
        [flag, n] if flag == "--count" => n.replace('_', "").parse().context("--count N")?,
        _ => bail!("usage: cargo xtask bench console [--count N]"),
    };
    let browser = root().join("crates/drover/tests/browser");
    let chromium = crate::packages::on_path("chromium")
        .context("chromium is not installed: run `cargo xtask test` once (it installs it)")?;
    if !browser.join("node_modules/playwright-core").is_dir() {
        bail!(
            "playwright-core is not installed in {}: run `cargo xtask test` once (it installs it)",
            browser.display()
        );
    }
    if build {
        build_release(&[("drover", "drover"), ("drover-bench", "drover-sim")])?;
    }
    let mut f = fleet(n)?;
    let password = "the console benchmark's password";
    // The fleet's state is kept between runs; each run signs in as a user of its own.
    let user = format!("bench-{}", std::process::id());
    let mut create = Command::new(release_bin("drover"))
        .env("DROVER_CONFIG", &f.cli_config)
        .args([
            "users",
            "create",
            &user,
            "--group",
            "admins",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("drover users create")?;
    create
        .stdin
        .take()
        .context("no stdin")?
        .write_all(format!("{password}\n").as_bytes())?;
    if !create.wait()?.success() {
        bail!("drover users create failed");
    }
    log(&format!("{n} nodes Online; opening the console"));
    let out = Command::new("node")
        .arg(browser.join("bench.mjs"))
        .env("CONSOLE_URL", &f.url)
        .env("CONSOLE_USER", &user)
        .env("CONSOLE_PASSWORD", password)
        .env("CHROMIUM", &chromium)
        .env("NODES", n.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running node")?;
    let text = String::from_utf8_lossy(&out.stdout);
    f.sims.stop()?;
    f.server.stop(Duration::from_secs(30))?;
    if !out.status.success() {
        bail!("the browser benchmark failed:\n{text}");
    }
    for line in text.lines().filter(|l| l.starts_with("RESULT ")) {
        println!("{line}");
    }
    Ok(())
}
