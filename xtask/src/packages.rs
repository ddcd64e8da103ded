//! Debian packages the tests need, installed with apt-get when missing (a fresh machine, CI).

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::{log, run};

/// Where `cmd` is on the PATH, if it is.
pub fn on_path(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// Installs with apt-get the `(command, package)` pairs whose command is not on the PATH.
pub fn ensure_debian(needed: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(cmd, _)| on_path(cmd).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    log(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// The schemathesis version the API test runs (pinned: a new release may add checks).
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// Schemathesis (from PyPI) in a virtual environment under the target directory; returns the
/// path of its `st` command.
pub fn ensure_schemathesis(tools: &std::path::Path) -> Result<std::path::PathBuf> {
    let venv = tools.join("venv");
    let st = venv.join("bin").join("st");
    let pinned = venv.join(".schemathesis-version");
    if st.is_file() && std::fs::read_to_string(&pinned).is_ok_and(|v| v == SCHEMATHESIS) {
        return Ok(st);
    }
    log(&format!(
        "installing {SCHEMATHESIS} into {}",
        venv.display()
    ));
    std::fs::create_dir_all(tools)?;
    let made = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status();
    if !made.is_ok_and(|s| s.success()) {
        // Debian's python3 has no venv module until python3-venv is installed.
        ensure_debian(&[("python3", "python3")])?;
        run(Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "python3-venv",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    run(Command::new(venv.join("bin").join("pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        SCHEMATHESIS,
    ]))?;
    std::fs::write(&pinned, SCHEMATHESIS)?;
    Ok(st)
}

/// The npm packages of `dir` (its package-lock.json), installed when missing or changed.
pub fn ensure_npm(dir: &std::path::Path) -> Result<()> {
    let lock = dir.join("package-lock.json");
    let stamp = dir.join("node_modules/.package-lock.json");
    let current = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if matches!((current(&lock), current(&stamp)), (Some(l), Some(s)) if s >= l) {
        return Ok(());
    }
    log(&format!("installing npm packages in {}", dir.display()));
    run(Command::new("npm")
        .current_dir(dir)
        .args(["ci", "--no-audit", "--no-fund"]))
}
