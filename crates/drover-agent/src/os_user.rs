//! Which OS user a session runs as, and how to start a process as that user.
//!
//! The agent switches users with util-linux's `setpriv` (`--init-groups` gives the user's own
//! supplementary groups, which `std`'s `uid()` would drop), and asks it for `--pdeathsig` so a
//! session's process dies with the agent instead of living on as an orphan.

use std::path::PathBuf;

use tokio::sync::Mutex;

/// A passwd entry: what a login needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
}

/// Looks a user up through NSS (`getent`), so LDAP and SSSD users are found too.
pub async fn lookup(name: &str) -> Result<Option<OsUser>, String> {
    if !valid_name(name) {
        return Err(format!("{name:?} is not a valid user name"));
    }
    let out = tokio::process::Command::new("getent")
        .args(["passwd", name])
        .output()
        .await
        .map_err(|e| format!("running getent: {e}"))?;
    // getent exits 2 when the key is not found.
    if out.status.code() == Some(2) {
        return Ok(None);
    }
    if !out.status.success() {
        return Err(format!("getent passwd {name} failed: {}", out.status));
    }
    parse_passwd(&String::from_utf8_lossy(&out.stdout))
        .map(Some)
        .ok_or_else(|| format!("getent passwd {name}: unexpected output"))
}

/// The same rule as the server's (`drover_docs::user_name_ok`): POSIX portable names, nothing
/// a shell or a command line could read as more than a name.
pub fn valid_name(name: &str) -> bool {
    drover_docs::user_name_ok(name)
}

fn parse_passwd(line: &str) -> Option<OsUser> {
    let f: Vec<&str> = line.trim_end().split(':').collect();
    let [name, _, uid, gid, _, home, shell] = f.as_slice() else {
        return None;
    };
    Some(OsUser {
        name: name.to_string(),
        uid: uid.parse().ok()?,
        gid: gid.parse().ok()?,
        home: PathBuf::from(home),
        shell: if shell.is_empty() {
            "/bin/sh".into()
        } else {
            shell.to_string()
        },
    })
}

/// The agent's own user.
pub async fn current() -> Result<OsUser, String> {
    let uid = rustix::process::geteuid().as_raw();
    let out = tokio::process::Command::new("getent")
        .args(["passwd", &uid.to_string()])
        .output()
        .await
        .map_err(|e| format!("running getent: {e}"))?;
    parse_passwd(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| format!("no passwd entry for uid {uid}"))
}

/// Creates the default session user once (when the agent runs as root), with sudo rights, the
/// way SSM's agent creates `ssm-user`.
pub async fn ensure_default(name: &str, lock: &Mutex<()>) -> Result<OsUser, String> {
    let _once = lock.lock().await;
    if let Some(u) = lookup(name).await? {
        return Ok(u);
    }
    let out = tokio::process::Command::new("useradd")
        .args([
            "--create-home",
            "--shell",
            "/bin/bash",
            "--comment",
            "Drover sessions",
            name,
        ])
        .output()
        .await
        .map_err(|e| format!("running useradd: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "useradd {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let sudoers = PathBuf::from("/etc/sudoers.d");
    if sudoers.is_dir() {
        let path = sudoers.join(name.replace('.', "_"));
        let rule = format!("# Created by the Drover agent.\n{name} ALL=(ALL) NOPASSWD:ALL\n");
        write_mode(&path, rule.as_bytes(), 0o440)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    tracing::info!(user = name, "created the session user");
    lookup(name)
        .await?
        .ok_or_else(|| format!("{name} was created but cannot be found"))
}

fn write_mode(path: &std::path::Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)
}

/// The program and arguments that run `argv` as `user`: through `setpriv` when the user is not
/// the agent's own, or when `setpriv` is at hand (for `--pdeathsig`).
pub fn command_line(user: &OsUser, switch: bool, argv: Vec<String>) -> Result<Vec<String>, String> {
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(setpriv) = setpriv else {
        if switch {
            return Err("setpriv (util-linux) is needed to run a session as another user".into());
        }
        return Ok(argv);
    };
    let mut line = vec![setpriv.to_string()];
    if switch {
        line.push(format!("--reuid={}", user.uid));
        line.push(format!("--regid={}", user.gid));
        line.push("--init-groups".into());
    }
    line.push("--pdeathsig=KILL".into());
    line.push("--".into());
    line.extend(argv);
    Ok(line)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn passwd_lines_parse() {
        let u = parse_passwd("alice:x:1001:1002:Alice:/home/alice:/bin/zsh\n").unwrap();
        assert_eq!((u.uid, u.gid, u.shell.as_str()), (1001, 1002, "/bin/zsh"));
        assert_eq!(parse_passwd("bob:x:1:2::/:").unwrap().shell, "/bin/sh");
        assert!(parse_passwd("garbage").is_none());
    }

    #[test]
    fn names_that_could_be_more_than_a_name_are_refused() {
        for bad in ["", "-rf", "a b", "a;b", "$(id)", "a/b", &"x".repeat(33)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        for good in ["alice", "drover-user", "svc_app.1"] {
            assert!(valid_name(good), "{good:?}");
        }
    }

    #[tokio::test]
    async fn root_is_found_and_a_missing_user_is_none() {
        assert_eq!(lookup("root").await.unwrap().unwrap().uid, 0);
        assert!(lookup("no-such-user-drover").await.unwrap().is_none());
    }
}
