//! Builds the web console in `web/` (TypeScript, Vite) into `OUT_DIR/dist` and writes
//! `OUT_DIR/assets.rs`, the table of its files that `src/lib.rs` embeds. Runs again only when
//! something under `web/` changed. `npm ci` runs only when `web/package-lock.json` differs from
//! what is installed. Node.js 20.19+ and npm are needed; without them the build stops and says so.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let env = |k: &str| {
        PathBuf::from(std::env::var_os(k).unwrap_or_else(|| fail(&format!("{k} is not set"))))
    };
    let manifest = env("CARGO_MANIFEST_DIR");
    let web = manifest.join("../../web");
    let out = env("OUT_DIR");
    for f in [
        "index.html",
        "src",
        "public",
        "package.json",
        "package-lock.json",
        "vite.config.ts",
        "tsconfig.json",
    ] {
        println!("cargo:rerun-if-changed={}", web.join(f).display());
    }
    check_node();
    npm_ci(&web);
    let dist = out.join("dist");
    let status = Command::new("npm")
        .args(["run", "--silent", "build", "--", "--outDir"])
        .arg(&dist)
        .args(["--emptyOutDir", "--logLevel", "warn"])
        .current_dir(&web)
        .stdout(std::io::stderr())
        .status()
        .unwrap_or_else(|e| fail(&format!("could not run npm: {e}")));
    if !status.success() {
        fail(&format!(
            "`npm run build` in {} failed ({status}); its output is above",
            web.display()
        ));
    }
    let mut files = Vec::new();
    collect(&dist, &dist, &mut files);
    files.sort();
    let mut code = String::from("pub static ASSETS: &[Asset] = &[\n");
    for (path, file) in &files {
        // Vite names everything under /assets/ by its content's hash: cacheable for good.
        let immutable = path.starts_with("/assets/");
        let _ = writeln!(
            code,
            "    Asset {{ path: {path:?}, mime: {:?}, body: include_bytes!({:?}), immutable: {immutable} }},",
            mime(path),
            file.display().to_string(),
        );
    }
    code.push_str("];\n");
    std::fs::write(out.join("assets.rs"), code)
        .unwrap_or_else(|e| fail(&format!("writing assets.rs: {e}")));
}

/// Installs `web/`'s packages when what is installed is not what the lock file says: a copy of
/// the lock file that `npm ci` installed from is kept beside the packages.
fn npm_ci(web: &Path) {
    let lock = std::fs::read(web.join("package-lock.json"))
        .unwrap_or_else(|e| fail(&format!("reading web/package-lock.json: {e}")));
    let stamp = web.join("node_modules/.drover-installed-lock.json");
    if std::fs::read(&stamp).is_ok_and(|installed| installed == lock) {
        return;
    }
    let status = Command::new("npm")
        // No install scripts: nothing the packages ship runs during a build.
        .args([
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--loglevel",
            "error",
        ])
        .current_dir(web)
        .stdout(std::io::stderr())
        .status()
        .unwrap_or_else(|e| fail(&format!("could not run npm: {e}")));
    if !status.success() {
        fail(&format!("`npm ci` in {} failed ({status})", web.display()));
    }
    std::fs::write(&stamp, &lock)
        .unwrap_or_else(|e| fail(&format!("writing {}: {e}", stamp.display())));
}

/// Vite 7 needs Node.js 20.19 or newer; an older one would fail later, less clearly.
fn check_node() {
    let out = Command::new("node")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| fail(&format!("could not run node: {e}")));
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let parts: Vec<u32> = version
        .trim_start_matches('v')
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    let (major, minor) = (
        parts.first().copied().unwrap_or(0),
        parts.get(1).copied().unwrap_or(0),
    );
    if major < 20 || (major == 20 && minor < 19) || (major == 22 && minor < 12) {
        fail(&format!(
            "Node.js {version} is too old: Vite needs 20.19 or newer (22.12 or newer on 22)"
        ));
    }
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| fail(&format!("reading {}: {e}", dir.display())));
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            collect(root, &p, files);
        } else if let Ok(rel) = p.strip_prefix(root) {
            files.push((format!("/{}", rel.to_string_lossy()), p.clone()));
        }
    }
}

fn mime(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("woff2") => "font/woff2",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn fail(why: &str) -> ! {
    eprintln!(
        "error: building Drover's web console: {why}\n\
         The console in web/ is built with Node.js 20.19 or newer and npm \
         (https://nodejs.org, or NodeSource's packages; Debian 12's own nodejs is too old)."
    );
    std::process::exit(1);
}
