//! A node's inventory as the agent reports it (Hello and Inventory messages), checked at the
//! boundary like registration input: a compromised node must not put megabytes, or escape
//! sequences for operators' terminals, into the store.

use drover_proto::Inventory;
use drover_store::NodeInventory;

/// Longest text field, in bytes.
const MAX_FIELD: usize = 256;
/// Most IP addresses kept for one node (a busy container host has many; the rest are dropped
/// rather than the node refused).
const MAX_ADDRESSES: usize = 256;

/// The inventory to store, or what is wrong with it.
pub(crate) fn validated(inv: &Inventory) -> Result<NodeInventory, String> {
    let text = |name: &str, v: &str| -> Result<String, String> {
        // Characters, as at registration (and as the OpenAPI document counts them).
        let chars = v.chars().count();
        if chars > MAX_FIELD {
            return Err(format!(
                "inventory {name} is {chars} characters; the limit is {MAX_FIELD}"
            ));
        }
        if v.chars().any(char::is_control) {
            return Err(format!("inventory {name} holds control characters"));
        }
        Ok(v.to_string())
    };
    let addresses = inv
        .ip_addresses
        .get(..MAX_ADDRESSES)
        .unwrap_or(&inv.ip_addresses);
    if let Some(bad) = addresses
        .iter()
        .find(|a| a.parse::<std::net::IpAddr>().is_err())
    {
        let shown: String = bad.chars().take(64).collect();
        return Err(format!(
            "inventory IP address {shown:?} is not an IP address"
        ));
    }
    if inv.boot_time < 0 {
        return Err("inventory boot time is negative".into());
    }
    Ok(NodeInventory {
        hostname: text("hostname", &inv.hostname)?,
        platform: text("platform", &inv.platform)?,
        os_name: text("os_name", &inv.os_name)?,
        os_version: text("os_version", &inv.os_version)?,
        kernel: text("kernel", &inv.kernel)?,
        arch: text("arch", &inv.arch)?,
        agent_version: text("agent_version", &inv.agent_version)?,
        ip_addresses: addresses.to_vec(),
        boot_time: inv.boot_time,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn good() -> Inventory {
        Inventory {
            hostname: "web-1".into(),
            platform: "linux".into(),
            os_name: "Debian GNU/Linux 12".into(),
            ip_addresses: vec!["10.0.0.5".into(), "fe80::1".into()],
            boot_time: 1_700_000_000,
            ..Inventory::default()
        }
    }

    #[test]
    fn oversize_fields_escapes_and_bad_addresses_are_refused_naming_the_field() {
        assert_eq!(validated(&good()).unwrap().hostname, "web-1");
        let mut inv = good();
        inv.hostname = "x".repeat(10_000);
        assert!(validated(&inv)
            .unwrap_err()
            .contains("hostname is 10000 characters"));
        let mut inv = good();
        inv.os_name = "Debian\u{1b}[31m red".into();
        assert!(validated(&inv)
            .unwrap_err()
            .contains("os_name holds control"));
        let mut inv = good();
        inv.ip_addresses = vec!["$(reboot)".into()];
        assert!(validated(&inv).unwrap_err().contains("not an IP address"));
        let mut inv = good();
        inv.ip_addresses = vec!["10.0.0.1".into(); 300];
        assert_eq!(validated(&inv).unwrap().ip_addresses.len(), 256);
    }
}
