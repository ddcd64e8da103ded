//! What the node says about itself: hostname, OS, kernel, platform, architecture, addresses,
//! boot time and the agent's version.

use drover_proto::Inventory;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Reads the inventory of this machine. Never fails: what cannot be read is left empty.
pub fn collect() -> Inventory {
    let uname = rustix::system::uname();
    let platform = match std::env::consts::OS {
        "macos" => "macos",
        other => other,
    }
    .to_string();
    let (os_name, os_version) = os_release();
    Inventory {
        hostname: uname.nodename().to_string_lossy().into_owned(),
        platform,
        os_name,
        os_version,
        kernel: uname.release().to_string_lossy().into_owned(),
        arch: std::env::consts::ARCH.to_string(),
        agent_version: AGENT_VERSION.to_string(),
        ip_addresses: ip_addresses(),
        boot_time: boot_time(),
    }
}

/// Name and version of the distribution, from os-release(5) on Linux.
fn os_release() -> (String, String) {
    if cfg!(target_os = "macos") {
        return ("macOS".into(), String::new());
    }
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    parse_os_release(&text)
}

fn parse_os_release(text: &str) -> (String, String) {
    let mut name = String::new();
    let mut version = String::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().trim_matches('"').to_string();
            match k.trim() {
                "NAME" => name = v,
                "VERSION_ID" => version = v,
                _ => {}
            }
        }
    }
    (name, version)
}

fn ip_addresses() -> Vec<String> {
    let mut ips: Vec<String> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback())
        .map(|i| i.ip().to_string())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Boot time in Unix seconds, from the `btime` line of /proc/stat on Linux.
fn boot_time() -> i64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_is_parsed() {
        let (n, v) = parse_os_release("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n");
        assert_eq!((n.as_str(), v.as_str()), ("Debian GNU/Linux", "12"));
    }

    #[test]
    fn this_machine_has_an_inventory() {
        let inv = collect();
        assert!(!inv.hostname.is_empty());
        assert!(!inv.kernel.is_empty());
        assert_eq!(inv.agent_version, AGENT_VERSION);
    }
}
