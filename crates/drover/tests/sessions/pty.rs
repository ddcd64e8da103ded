//! `drover shell` driven through a real PTY, as a person at a terminal drives it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use drover_testkit::Env;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

pub struct PtyCli {
    write: pty_process::OwnedWritePty,
    child: tokio::process::Child,
    out: Arc<Mutex<Vec<u8>>>,
    changed: Arc<Notify>,
}

impl PtyCli {
    pub fn spawn(env: &Env, args: &[&str], extra_env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let (pty, pts) = pty_process::open()?;
        pty.resize(pty_process::Size::new(24, 80))?;
        let mut cmd = pty_process::Command::new(&env.bin)
            .args(args)
            .env("DROVER_CONFIG", env.path("cli.toml"))
            .env("TERM", "xterm")
            .current_dir(env.dir.path())
            .kill_on_drop(true);
        for (k, v) in extra_env {
            cmd = cmd.env(k, v);
        }
        let child = cmd.spawn(pts)?;
        let (mut read, write) = pty.into_split();
        let out = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let (o, c) = (out.clone(), changed.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Ok(mut v) = o.lock() {
                            v.extend_from_slice(&buf[..n]);
                        }
                        c.notify_waiters();
                    }
                }
            }
            c.notify_waiters();
        });
        Ok(Self {
            write,
            child,
            out,
            changed,
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().map(|v| v.clone()).unwrap_or_default())
            .into_owned()
    }

    /// Waits until the screen so far contains `needle` (after `from` bytes).
    pub async fn expect_after(
        &self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let text = self.text();
            if let Some(at) = text.get(from..).and_then(|t| t.find(needle)) {
                return Ok(from + at + needle.len());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!(
                    "{needle:?} did not appear within {timeout:?}; the screen:\n{}",
                    text
                );
            }
        }
    }

    pub async fn expect(&self, needle: &str, timeout: Duration) -> anyhow::Result<usize> {
        self.expect_after(0, needle, timeout).await
    }

    pub fn len(&self) -> usize {
        self.text().len()
    }

    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.write.write_all(bytes).await?;
        Ok(())
    }

    /// Resizes the terminal: the kernel sends SIGWINCH to the CLI, as a terminal emulator does.
    pub fn resize(&self, rows: u16, cols: u16) -> anyhow::Result<()> {
        self.write.resize(pty_process::Size::new(rows, cols))?;
        Ok(())
    }

    pub async fn exit_code(&mut self, timeout: Duration) -> anyhow::Result<i32> {
        let status = tokio::time::timeout(timeout, self.child.wait()).await??;
        Ok(status.code().unwrap_or(-1))
    }
}
