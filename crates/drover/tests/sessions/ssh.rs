//! SSH through the tunnel: stock `ssh`, `scp` and `rsync` with `drover ssh-proxy` as their
//! ProxyCommand, and `drover ssh` with a certificate from the server's SSH CA, against a real
//! OpenSSH server this test runs (Debian's openssh-server, in inetd mode: each connection
//! accepted on a loopback port 0 listener is handed to `sshd -i`, which sees the real socket).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use drover_testkit::{wait_until, Env, DEADLINE};

use super::{env, node};

/// A private sshd: its port, and its configuration directory.
struct Sshd {
    port: u16,
    dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Each `sshd -i` ends with its connection; the listener ends here.
        self.task.abort();
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sshd_path() -> PathBuf {
    ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("sshd"))
}

/// Starts sshd with its own host key; `extra` is added to its configuration.
async fn sshd(env: &Env, extra: &str) -> anyhow::Result<Sshd> {
    let dir = env.path("sshd");
    std::fs::create_dir_all(dir.join("conf.d"))?;
    // sshd insists on its privilege separation directory.
    std::fs::create_dir_all("/run/sshd")?;
    let host_key = dir.join("host_key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host_key))?;
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Include {conf}/*.conf\nHostKey {key}\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM yes\nStrictModes no\nPidFile none\n\
             Subsystem sftp internal-sftp\n{extra}",
            conf = dir.join("conf.d").display(),
            key = host_key.display(),
        ),
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let log = dir.join("sshd.log");
    let task = tokio::spawn(async move {
        let mut children = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            let Ok(socket) = socket.into_std() else {
                continue;
            };
            let _ = socket.set_nonblocking(false);
            let fd = OwnedFd::from(socket);
            let (Ok(input), Ok(log)) = (
                fd.try_clone(),
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log),
            ) else {
                continue;
            };
            let child = tokio::process::Command::new(sshd_path())
                .args(["-i", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::from(input))
                .stdout(Stdio::from(fd))
                .stderr(Stdio::from(log))
                .kill_on_drop(true)
                .spawn();
            if let Ok(c) = child {
                children.push(c);
            }
        }
    });
    Ok(Sshd { port, dir, task })
}

/// ssh's options for a private sshd reached through `drover ssh-proxy`.
/// No user configuration, no host key to remember, never a prompt.
const PRIVATE_SSHD: [&str; 8] = [
    "-F",
    "/dev/null",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
];

fn ssh_options(env: &Env, sshd: &Sshd, key: &Path) -> Vec<String> {
    let mine = [
        "-o".to_string(),
        "LogLevel=ERROR".into(),
        "-o".into(),
        format!("ProxyCommand={} ssh-proxy %h %p", env.bin.display()),
        "-i".into(),
        key.display().to_string(),
        "-o".into(),
        format!("Port={}", sshd.port),
    ];
    PRIVATE_SSHD
        .iter()
        .map(|s| s.to_string())
        .chain(mine)
        .collect()
}

/// A command that finds the CLI's configuration, as `drover ssh-proxy` must.
fn with_config(env: &Env, program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("DROVER_CONFIG", env.path("cli.toml"))
        .current_dir(env.path(""));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_scp_and_rsync_reach_the_node_through_ssh_proxy() -> anyhow::Result<()> {
    let env = env();
    let (server, _id, _agent) = node(&env, &[], &[]).await?;
    let key = env.path("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key))?;
    let authorized = env.path("authorized_keys");
    std::fs::copy(env.path("id_ed25519.pub"), &authorized)?;
    let sshd = sshd(
        &env,
        &format!("AuthorizedKeysFile {}\n", authorized.display()),
    )
    .await?;
    let opts = ssh_options(&env, &sshd, &key);

    let out = run(with_config(&env, "ssh")
        .args(&opts)
        .args(["root@n1", "echo SSH-OK-$((40+2))"]))?;
    assert_eq!(out.trim(), "SSH-OK-42");

    // scp there and back, byte for byte.
    let blob: Vec<u8> = (0..4 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let src = env.path("blob");
    std::fs::write(&src, &blob)?;
    let there = env.path("blob.there");
    let back = env.path("blob.back");
    let scp_opts: Vec<String> = opts.iter().map(|o| o.to_string()).collect();
    run(with_config(&env, "scp")
        .args(&scp_opts)
        .arg(&src)
        .arg(format!("root@n1:{}", there.display())))?;
    run(with_config(&env, "scp")
        .args(&scp_opts)
        .arg(format!("root@n1:{}", there.display()))
        .arg(&back))?;
    assert!(std::fs::read(&back)? == blob, "scp changed the file");

    // rsync a tree over ssh.
    let tree = env.path("tree");
    std::fs::create_dir_all(tree.join("sub"))?;
    std::fs::write(tree.join("a.txt"), "alpha\n")?;
    std::fs::write(tree.join("sub/b.bin"), &blob[..100_000])?;
    let copy = env.path("tree.copy");
    let rsh = std::iter::once("ssh".to_string())
        .chain(opts.iter().map(|o| format!("'{o}'")))
        .collect::<Vec<_>>()
        .join(" ");
    run(with_config(&env, "rsync")
        .args(["-a", "-e", &rsh])
        .arg(format!("{}/", tree.display()))
        .arg(format!("root@n1:{}/", copy.display())))?;
    assert_eq!(std::fs::read_to_string(copy.join("a.txt"))?, "alpha\n");
    assert!(std::fs::read(copy.join("sub/b.bin"))? == blob[..100_000]);

    // Each ssh, scp and rsync was an SSH session, ended when ssh was done, with its bytes.
    let client = server.client()?;
    let sessions = wait_until("every SSH session to end", DEADLINE, || async {
        let list = client.list_sessions(None, false, None, 100).await?.sessions;
        let ssh: Vec<_> = list
            .into_iter()
            .filter(|s| s.document == "StartSSHSession")
            .collect();
        Ok((ssh.len() == 4 && ssh.iter().all(|s| s.ended_at.is_some())).then_some(ssh))
    })
    .await?;
    for s in &sessions {
        assert_eq!(
            (s.status.as_str(), s.connections),
            ("Terminated", 1),
            "{s:?}"
        );
        assert_eq!(s.target, format!("localhost:{}", sshd.port));
        assert!(
            s.end_to_end,
            "ssh-proxy seals its sessions by default: {s:?}"
        );
    }
    // The scp to the node carried the file up; the one back carried it down.
    assert!(sessions.iter().any(|s| s.bytes_in > blob.len() as i64));
    assert!(sessions.iter().any(|s| s.bytes_out > blob.len() as i64));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drover_ssh_logs_in_with_a_short_lived_certificate_and_no_key_on_the_node(
) -> anyhow::Result<()> {
    let env = env();
    let (_server, _id, _agent) = node(&env, &[], &[]).await?;
    // No authorized keys at all: only a certificate from a trusted authority logs in.
    let sshd = sshd(&env, "AuthorizedKeysFile none\n").await?;
    let port = sshd.port.to_string();
    let mut ssh_args = PRIVATE_SSHD.to_vec();
    ssh_args.extend(["-p", &port]);

    // Before sshd trusts the server's authority, the certificate is refused.
    let mut args = vec!["ssh", "n1"];
    args.extend(ssh_args);
    args.push("id -un");
    let before = env.cli(&args)?;
    assert_eq!(before.status.code(), Some(255), "{before:?}");

    let conf = sshd.dir.join("conf.d");
    let out = env.cli_ok(&[
        "agent",
        "configure-sshd",
        "--state-dir",
        &env.state_dir("n1").display().to_string(),
        "--ca-file",
        &sshd.dir.join("drover_user_ca.pub").display().to_string(),
        "--config-dir",
        &conf.display().to_string(),
        "--sshd-config",
        &sshd.dir.join("sshd_config").display().to_string(),
        "--no-reload",
    ])?;
    assert!(out.contains("wrote the Drover SSH user CA"), "{out}");
    assert!(!out.contains("warning"), "{out}");
    let trusted = std::fs::read_to_string(conf.join("drover.conf"))?;
    assert!(trusted.contains("TrustedUserCAKeys"), "{trusted}");
    assert!(
        trusted.contains("Match User drover-user\n    AuthorizedKeysFile none"),
        "{trusted}"
    );

    // Logged in as the sessions' user (run-as off: drover-user), by certificate alone.
    let out = env.cli_ok(&args)?;
    assert_eq!(out.trim(), "drover-user");
    // No key was written on the node.
    let home = run(Command::new("getent").args(["passwd", "drover-user"]))?;
    let home = home.split(':').nth(5).unwrap_or("/nonexistent").to_string();
    assert!(!Path::new(&home).join(".ssh/authorized_keys").exists());
    Ok(())
}
