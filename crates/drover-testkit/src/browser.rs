//! The browser tests' parts: Debian's chromium and the playwright-core scripts in
//! `crates/drover/tests/browser`, both installed by `cargo xtask test`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The browser scripts' directory, with playwright-core installed; `manifest_dir` is the
/// calling test crate's `CARGO_MANIFEST_DIR`.
pub fn scripts(manifest_dir: &str) -> anyhow::Result<PathBuf> {
    let dir = Path::new(manifest_dir).join("tests/browser");
    anyhow::ensure!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `cargo xtask test` (it runs npm ci in {})",
        dir.display()
    );
    Ok(dir)
}

/// Debian's chromium, from PATH.
pub fn chromium() -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "chromium is not installed: run `cargo xtask test` (it installs Debian's chromium)"
            )
        })
}

/// Runs one script with `vars` in its environment (CHROMIUM set); returns whether it exited
/// 0, and what it printed.
pub fn run(script: &Path, vars: &[(&str, String)]) -> anyhow::Result<(bool, String)> {
    let out = Command::new("node")
        .arg(script)
        .env("CHROMIUM", chromium()?)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// How many checks a script passed (its `ok ...` lines).
pub fn passed(out: &str) -> usize {
    out.lines().filter(|l| l.starts_with("ok ")).count()
}
