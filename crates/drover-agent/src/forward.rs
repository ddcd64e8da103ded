//! Forwarded connections on the node: the server asks for a TCP connection to a host and port
//! (a port on this node, or a host the node reaches), the agent checks it against the deny list,
//! connects, and splices the stream to the socket until both sides are done.
//!
//! The deny list is checked on the addresses the name resolves to, once: the connection goes
//! to exactly the addresses that were checked, so a name that resolves differently a moment
//! later (DNS rebinding) never reaches a denied address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use drover_proto::{ForwardConnect, Message};
use drover_tunnel::{into_raw, splice, Framed, Stream};
use futures::SinkExt;
use ipnet::IpNet;
use tokio::net::TcpStream;

/// How long resolving and connecting may take, together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection was not made; the message reaches the user.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{host} resolves to {addr}, which is in the deny list ({net})")]
    Denied {
        host: String,
        addr: IpAddr,
        net: IpNet,
    },
    #[error("the deny list entry {0:?} is not a network (CIDR) or an address")]
    BadDenyEntry(String),
    #[error("{host} does not resolve: {detail}")]
    Resolve { host: String, detail: String },
    #[error("connecting to {host} port {port} failed: {detail}")]
    Connect {
        host: String,
        port: u16,
        detail: String,
    },
}

impl ForwardError {
    fn code(&self) -> &'static str {
        match self {
            ForwardError::Denied { .. } => "forward_denied",
            _ => "forward_failed",
        }
    }
}

/// The deny list: the built-in entries and the server's.
pub fn deny_list(extra: &[String]) -> Result<Vec<IpNet>, ForwardError> {
    drover_proto::deny_list(extra).map_err(ForwardError::BadDenyEntry)
}

/// Refuses the whole name if any address it resolves to is denied: which of its addresses a
/// connection would use is not the user's choice to make. An IPv6 address that carries an IPv4
/// one is checked as both.
pub fn check(host: &str, addrs: &[SocketAddr], deny: &[IpNet]) -> Result<(), ForwardError> {
    for a in addrs {
        if let Some((addr, net)) = drover_proto::denied(a.ip(), deny) {
            return Err(ForwardError::Denied {
                host: host.to_string(),
                addr,
                net,
            });
        }
    }
    Ok(())
}

async fn connect(req: &ForwardConnect) -> Result<TcpStream, ForwardError> {
    let deny = deny_list(&req.deny)?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((req.host.as_str(), req.port))
        .await
        .map_err(|e| ForwardError::Resolve {
            host: req.host.clone(),
            detail: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(ForwardError::Resolve {
            host: req.host.clone(),
            detail: "no address".into(),
        });
    }
    check(&req.host, &addrs, &deny)?;
    let mut last = String::new();
    for a in &addrs {
        match TcpStream::connect(a).await {
            Ok(s) => {
                // Keystrokes of an SSH session go out at once.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = format!("{a}: {e}"),
        }
    }
    Err(ForwardError::Connect {
        host: req.host.clone(),
        port: req.port,
        detail: last,
    })
}

/// Serves one forwarded connection's stream until both sides are done.
pub async fn serve(
    mut framed: Framed<Stream>,
    req: ForwardConnect,
    e2e: Option<&drover_tunnel::e2e::E2eKey>,
) {
    let e2e = match (req.e2e, e2e) {
        (false, _) => None,
        (true, Some(k)) => Some(k),
        (true, None) => {
            let _ = framed
                .send(Message::Error {
                    code: "forward_failed".into(),
                    message: "this agent has no end-to-end key".into(),
                })
                .await;
            return;
        }
    };
    let socket = match tokio::time::timeout(CONNECT_TIMEOUT, connect(&req)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(session = %req.session_id, error = %e, "a forwarded connection was not made");
            let _ = framed
                .send(Message::Error {
                    code: e.code().into(),
                    message: e.to_string(),
                })
                .await;
            return;
        }
        Err(_) => {
            let _ = framed
                .send(Message::Error {
                    code: "forward_failed".into(),
                    message: format!(
                        "connecting to {} port {} took more than {} s",
                        req.host,
                        req.port,
                        CONNECT_TIMEOUT.as_secs()
                    ),
                })
                .await;
            return;
        }
    };
    if framed.send(Message::ForwardConnected).await.is_err() {
        return;
    }
    let mut stream = into_raw(framed);
    let mut socket = socket;
    let result = match e2e {
        None => splice(&mut stream, &mut socket).await,
        Some(key) => match drover_tunnel::e2e::respond(
            &mut stream,
            key,
            &drover_proto::target_label(&req.host, req.port),
        )
        .await
        {
            Ok(t) => drover_tunnel::e2e::sealed_splice(&mut socket, &mut stream, &t).await,
            Err(e) => Err(std::io::Error::other(e.to_string())),
        },
    };
    if let Err(e) = result {
        tracing::debug!(session = %req.session_id, error = %e, "a forwarded connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn metadata_addresses_are_denied_in_every_spelling() {
        let deny = deny_list(&[]).unwrap();
        for a in [
            "169.254.169.254:80",
            "[::ffff:169.254.169.254]:80",
            "[fd00:ec2::254]:80",
            "[fe80::1]:22",
            "100.100.100.200:80",
            "[::a9fe:a9fe]:80",
            "[64:ff9b::a9fe:a9fe]:80",
            "[2002:a9fe:a9fe::1]:80",
            "0.0.0.0:22",
            "[::]:22",
        ] {
            assert!(
                matches!(
                    check("h", &addrs(&[a]), &deny),
                    Err(ForwardError::Denied { .. })
                ),
                "{a} passed"
            );
        }
        assert!(check("h", &addrs(&["127.0.0.1:22", "[::1]:22"]), &deny).is_ok());
    }

    #[test]
    fn a_name_with_one_denied_address_among_others_is_denied() {
        let deny = deny_list(&[]).unwrap();
        let e = check(
            "rebind.example",
            &addrs(&["10.0.0.5:80", "169.254.169.254:80"]),
            &deny,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "rebind.example resolves to 169.254.169.254, which is in the deny list (169.254.0.0/16)"
        );
    }

    #[test]
    fn the_servers_entries_add_to_the_list_and_bad_ones_are_named() {
        let deny = deny_list(&["10.1.0.0/16".into(), "192.0.2.7".into()]).unwrap();
        assert!(check("h", &addrs(&["10.1.2.3:5432"]), &deny).is_err());
        assert!(check("h", &addrs(&["192.0.2.7:1"]), &deny).is_err());
        assert!(check("h", &addrs(&["10.2.0.1:5432"]), &deny).is_ok());
        // NAT64 to a denied network is denied (the node's NAT64 gateway would reach it).
        assert!(check("h", &addrs(&["[64:ff9b::a01:203]:5432"]), &deny).is_err());
        let e = deny_list(&["10.0.0.0/99".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the deny list entry \"10.0.0.0/99\" is not a network (CIDR) or an address"
        );
    }

    #[tokio::test]
    async fn a_name_resolving_to_a_denied_address_is_refused_before_connecting() {
        // "localhost" resolves on every machine; deny what it resolves to.
        let req = ForwardConnect {
            session_id: "s-1".into(),
            host: "localhost".into(),
            port: 9,
            deny: vec!["127.0.0.0/8".into(), "::1/128".into()],
            e2e: false,
        };
        assert!(matches!(
            connect(&req).await,
            Err(ForwardError::Denied { .. })
        ));
    }
}
