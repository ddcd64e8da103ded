//! `aws:downloadContent`: fetch a file over HTTP(S), a Git repository, or a document stored on
//! the server, into the command's directory (or an absolute destination).

use std::path::PathBuf;

use drover_docs::ResolvedStep;
use drover_proto::Invoke;
use serde_json::Value;

use crate::executor::ExecCtx;
use crate::journal::Entry;

/// `sourceInfo` is a map, or a JSON string of one (as SSM documents often write it).
fn source_info(step: &ResolvedStep) -> Result<serde_json::Map<String, Value>, String> {
    match step.inputs.get("sourceInfo") {
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(Value::String(s)) => {
            serde_json::from_str(s).map_err(|e| format!("sourceInfo is not a JSON map: {e}"))
        }
        _ => Err("sourceInfo is missing".into()),
    }
}

fn destination(entry: &Entry, step: &ResolvedStep) -> PathBuf {
    match step.inputs.get("destinationPath").and_then(Value::as_str) {
        Some(d) if !d.trim().is_empty() => entry.work_dir().join(d),
        _ => entry.work_dir(),
    }
}

fn text(m: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).map(str::to_string)
}

pub async fn run(
    ctx: &ExecCtx,
    entry: &Entry,
    invoke: &Invoke,
    step: &ResolvedStep,
) -> Result<(), String> {
    let info = source_info(step)?;
    let dest = destination(entry, step);
    let kind = step
        .inputs
        .get("sourceType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match kind {
        "HTTP" => {
            let url = text(&info, "url").ok_or("sourceInfo.url is required for HTTP")?;
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!("sourceInfo.url {url:?} must be an http(s) URL"));
            }
            let name = url
                .split(['?', '#'])
                .next()
                .and_then(|u| u.rsplit('/').next())
                .filter(|n| !n.is_empty() && *n != ".." && *n != ".")
                .unwrap_or("download")
                .to_string();
            let resp = http_client()
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("download of {url} failed: {}", crate::error_chain(&e)))?;
            if !resp.status().is_success() {
                return Err(format!("download of {url} failed: HTTP {}", resp.status()));
            }
            save_capped(resp, &url, &dest.join(&name), ctx.max_download_bytes).await
        }
        "Git" | "GitHub" => {
            let repo = if kind == "GitHub" {
                let owner =
                    text(&info, "owner").ok_or("sourceInfo.owner is required for GitHub")?;
                let name = text(&info, "repository")
                    .ok_or("sourceInfo.repository is required for GitHub")?;
                format!("https://github.com/{owner}/{name}.git")
            } else {
                text(&info, "repository").ok_or("sourceInfo.repository is required for Git")?
            };
            let options = text(&info, "getOptions").unwrap_or_default();
            git_clone(&repo, &options, &dest).await
        }
        "SSMDocument" => {
            let name = text(&info, "name").ok_or("sourceInfo.name is required for SSMDocument")?;
            let content = invoke
                .contents
                .get(&name)
                .ok_or_else(|| format!("document {name:?} was not sent with the command"))?;
            let base = name.split(':').next().unwrap_or(&name);
            let ext = if content.trim_start().starts_with('{') {
                "json"
            } else {
                "yaml"
            };
            write(&dest.join(format!("{base}.{ext}")), content.as_bytes())
        }
        other => Err(format!("sourceType {other:?} is not supported")),
    }
}

/// Streams a response to `path` through a temporary file beside it, refusing more than `max`
/// bytes (announced or received): a download never sits whole in memory, and never fills the
/// disk past the cap. The file appears under its name only when complete.
async fn save_capped(
    mut resp: reqwest::Response,
    url: &str,
    path: &std::path::Path,
    max: u64,
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let too_big = || {
        format!(
            "download of {url} refused: it is larger than this agent's limit of {max} bytes \
             (drover agent run --max-download-bytes)"
        )
    };
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(too_big());
    }
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // A fresh, unpredictable name, created exclusively: a link planted in a shared destination
    // is never followed, and the guard removes the file however this ends (a cancel drops the
    // future).
    let part = dir.join(format!(
        ".{}.{:016x}.part",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("download"),
        rand::random::<u64>()
    ));
    let mut guard = RemoveOnDrop(Some(part.clone()));
    let result = async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part)
            .await
            .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        let mut total = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("download of {url} failed: {}", crate::error_chain(&e)))?
        {
            total = total.saturating_add(chunk.len() as u64);
            if total > max {
                return Err(too_big());
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        }
        file.flush()
            .await
            .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        tokio::fs::rename(&part, path)
            .await
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
    .await;
    if result.is_ok() {
        guard.0 = None;
    }
    result
}

/// Removes a file when dropped, unless disarmed (`.0 = None`).
struct RemoveOnDrop(Option<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn write(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `getOptions`: `branch:NAME` or `commitID:SHA` (SSM's syntax), or empty for the default branch.
async fn git_clone(repo: &str, options: &str, dest: &std::path::Path) -> Result<(), String> {
    let mut clone = tokio::process::Command::new("git");
    clone.arg("clone").arg("--quiet");
    let mut commit = None;
    if let Some(branch) = options.strip_prefix("branch:") {
        clone.args(["--branch", branch]);
    } else if let Some(c) = options.strip_prefix("commitID:") {
        commit = Some(commit_id(c)?);
    } else if !options.is_empty() {
        return Err(format!(
            "getOptions {options:?}: use branch:NAME or commitID:SHA"
        ));
    }
    clone.arg("--").arg(repo).arg(dest);
    let out = clone
        .output()
        .await
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git clone {repo} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if let Some(c) = commit {
        let out = tokio::process::Command::new("git")
            .arg("-C")
            .arg(dest)
            // `--` after the commit: it names a commit, never an option or a path.
            .args(["checkout", "--quiet", &c, "--"])
            .output()
            .await
            .map_err(|e| format!("cannot run git: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "git checkout {c} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// A commit ID as git names one: 4 to 64 hex digits (so never an option such as `--upload-pack`).
fn commit_id(c: &str) -> Result<String, String> {
    if (4..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(c.to_string())
    } else {
        Err(format!(
            "getOptions commitID:{c:?} is not a commit ID (4 to 64 hex digits)"
        ))
    }
}

/// The HTTP client for downloads, made on first use and shared by the whole process (reading the
/// system's roots is not free, and the agent simulator runs thousands of agents in one process).
fn http_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(new_http_client)
}

/// An HTTP client trusting the system's roots (and `SSL_CERT_FILE`).
fn new_http_client() -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    let tls = rustls::ClientConfig::builder_with_provider(drover_pki::crypto_provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(600));
    match tls {
        Ok(cfg) => builder.use_preconfigured_tls(cfg),
        Err(_) => builder,
    }
    .build()
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_id_is_hex_and_never_an_option() {
        assert_eq!(commit_id("a1b2c3d"), Ok("a1b2c3d".to_string()));
        for bad in [
            "--upload-pack=touch /tmp/x",
            "-f",
            "main",
            "",
            "abc",
            &"a".repeat(65),
        ] {
            assert!(commit_id(bad).is_err(), "{bad}");
        }
    }
}
