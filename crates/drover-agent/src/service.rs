//! `drover agent install-service`: the systemd unit that keeps the agent running.

use std::path::Path;

/// The unit text for an agent binary at `exe` with its state in `state_dir`.
pub fn systemd_unit(exe: &Path, state_dir: &Path) -> String {
    format!(
        "[Unit]
Description=Drover agent
Documentation=https://github.com/drover/drover
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart={exe} agent run --state-dir {state}
Restart=always
RestartSec=5
# The agent runs commands as root on operators' behalf; it needs no inbound port.
KillMode=process
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
",
        exe = exe.display(),
        state = state_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_runs_the_agent_with_its_state_dir() {
        let unit = systemd_unit(
            Path::new("/usr/local/bin/drover"),
            Path::new("/var/lib/drover-agent"),
        );
        assert!(unit.contains(
            "ExecStart=/usr/local/bin/drover agent run --state-dir /var/lib/drover-agent"
        ));
        assert!(unit.contains("Restart=always"));
    }
}
