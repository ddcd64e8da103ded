//! The addresses nothing Drover connects on an operator's behalf may reach: an agent's port
//! forwarding to a remote host, and the server's webhooks. The server and its agents share the
//! list so that both refuse alike.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Always denied, whatever the configuration says: the cloud instance metadata services (AWS,
/// GCP and Azure at 169.254.169.254, AWS's IPv6 fd00:ec2::254, Alibaba's 100.100.100.200)
/// hand out the machine's cloud credentials, and the link-local ranges hold them and their kin.
pub const DEFAULT_DENY: &[&str] = &[
    // "This network": 0.0.0.0 and :: connect to the machine's own loopback, past a list that
    // denies 127.0.0.0/8.
    "0.0.0.0/8",
    "::/128",
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
];

/// The deny list: the built-in entries and `extra` (networks in CIDR form, or addresses).
/// Err names the first entry that is neither.
pub fn deny_list(extra: &[String]) -> Result<Vec<IpNet>, String> {
    DEFAULT_DENY
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .map(|e| {
            e.parse::<IpNet>()
                .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| e.to_string())
        })
        .collect()
}

/// The IPv4 address an IPv6 address carries to an IPv4 host: mapped (`::ffff:a.b.c.d`),
/// compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4 (`2002:AABB:CCDD::`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    // The low 32 bits.
    let tail = || Ipv4Addr::from(u128::from(ip) as u32);
    match s {
        [0, 0, 0, 0, 0, 0xffff, ..] => Some(tail()),
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(tail()),
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(tail()),
        [0x2002, a, b, ..] => Some(Ipv4Addr::from((u32::from(a) << 16) | u32::from(b))),
        _ => None,
    }
}

/// The entry that denies `ip`, and the form of `ip` it matched: an IPv6 address that carries
/// an IPv4 one is checked as both.
pub fn denied(ip: IpAddr, deny: &[IpNet]) -> Option<(IpAddr, IpNet)> {
    let mut forms = vec![ip];
    if let IpAddr::V6(v6) = ip {
        forms.extend(embedded_v4(v6).map(IpAddr::V4));
    }
    forms
        .into_iter()
        .find_map(|f| deny.iter().find(|n| n.contains(&f)).map(|n| (f, *n)))
}
