//! Debian packages the tests need, installed with apt-get when missing (a fresh machine, CI).

use std::process::Command;

use anyhow::Result;

use crate::{log, run};

/// Installs with apt-get the `(command, package)` pairs whose command is not on the PATH.
pub fn ensure_debian(needed: &[(&str, &str)]) -> Result<()> {
    let on_path = |cmd: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
    };
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
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
