//! Port sessions (`sessionType: Port`): where a port forwarding or SSH session leads, from the
//! document's `properties` (`portNumber`, and `host` for a remote host) and its parameters.
//! SSM's `localPortNumber` is the client's business and is not read here.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::parse::REFERENCE;
use crate::session::SessionDocument;

/// Where a port session's connections go, as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortTarget {
    /// A name or an address; `localhost` when the document names no host.
    pub host: String,
    pub port: u16,
}

/// The host when a document names none: a port on the node itself.
pub const LOCAL_HOST: &str = "localhost";

/// Property names a Port document may reference parameters from.
const TARGET_PROPERTIES: [&str; 2] = ["portNumber", "host"];

/// A host name (RFC 1123 labels, or an underscore as some internal names have) or an IPv4 or
/// IPv6 address, as a connection would be made to it.
pub fn host_ok(host: &str) -> bool {
    if host.is_empty() || host.len() > 253 || host.starts_with(['-', '.']) {
        return false;
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// The property's text with every `{{ name }}` replaced by the parameter's value.
fn property(doc: &SessionDocument, name: &str, values: &BTreeMap<String, Value>) -> Option<String> {
    let raw = match doc.properties.get(name)? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Some(String::new()),
    };
    Some(
        REFERENCE
            .replace_all(&raw, |c: &regex::Captures<'_>| {
                let key = c.get(1).map(|m| m.as_str()).unwrap_or_default();
                match values.get(key) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => String::new(),
                }
            })
            .into_owned(),
    )
}

impl SessionDocument {
    /// The parameters a Port document's target refers to, each of which must be declared.
    pub(crate) fn port_references(&self) -> Result<Vec<String>, String> {
        if self.properties.get("portNumber").is_none() {
            return Err("properties.portNumber: a Port document names the port it leads to".into());
        }
        let mut names = Vec::new();
        for p in TARGET_PROPERTIES {
            match self.properties.get(p) {
                None => {}
                Some(Value::String(s)) => names.extend(
                    REFERENCE
                        .captures_iter(s)
                        .filter_map(|c| c.get(1).map(|m| m.as_str().to_string())),
                ),
                Some(Value::Number(_)) if p == "portNumber" => {}
                Some(_) => return Err(format!("properties.{p}: expected a string")),
            }
        }
        Ok(names)
    }

    /// Where the session leads, with its (already validated) parameter values.
    pub fn port_target(&self, values: &BTreeMap<String, Value>) -> Result<PortTarget, String> {
        let port_text = property(self, "portNumber", values).unwrap_or_default();
        let port = port_text
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("portNumber {port_text:?} is not a port (1 to 65535)"))?;
        let host = property(self, "host", values).unwrap_or_else(|| LOCAL_HOST.to_string());
        let host = host.trim().trim_start_matches('[').trim_end_matches(']');
        if !host_ok(host) {
            return Err(format!("host {host:?} is not a host name or an IP address"));
        }
        Ok(PortTarget {
            host: host.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::parse_session;

    const REMOTE: &str = r#"
schemaVersion: "1.0"
sessionType: Port
parameters:
  host: {type: String, default: localhost}
  portNumber: {type: String, default: "80"}
  localPortNumber: {type: String, default: "0"}
properties:
  portNumber: "{{ portNumber }}"
  host: "{{ host }}"
  localPortNumber: "{{ localPortNumber }}"
  type: LocalPortForwarding
"#;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect()
    }

    #[test]
    fn the_target_comes_from_the_parameters() {
        let doc = parse_session(REMOTE).unwrap();
        let t = doc
            .port_target(&values(&[("host", "db.internal"), ("portNumber", "5432")]))
            .unwrap();
        assert_eq!(
            t,
            PortTarget {
                host: "db.internal".into(),
                port: 5432
            }
        );
        let t = doc
            .port_target(&values(&[("host", "[fd00::1]"), ("portNumber", "22")]))
            .unwrap();
        assert_eq!(t.host, "fd00::1");
    }

    #[test]
    fn bad_hosts_and_ports_are_named() {
        let doc = parse_session(REMOTE).unwrap();
        for (host, port, want) in [
            ("db", "0", "portNumber \"0\" is not a port (1 to 65535)"),
            (
                "db",
                "70000",
                "portNumber \"70000\" is not a port (1 to 65535)",
            ),
            (
                "a b",
                "22",
                "host \"a b\" is not a host name or an IP address",
            ),
            (
                "-x",
                "22",
                "host \"-x\" is not a host name or an IP address",
            ),
            (
                "h;rm",
                "22",
                "host \"h;rm\" is not a host name or an IP address",
            ),
        ] {
            let e = doc
                .port_target(&values(&[("host", host), ("portNumber", port)]))
                .unwrap_err();
            assert_eq!(e, want);
        }
    }

    #[test]
    fn a_port_document_without_its_port_or_with_an_undeclared_reference_is_refused() {
        let no_port = "schemaVersion: \"1.0\"\nsessionType: Port\nproperties: {host: db}\n";
        let e = parse_session(no_port).unwrap_err().to_string();
        assert!(e.contains("properties.portNumber"), "{e}");
        let undeclared =
            "schemaVersion: \"1.0\"\nsessionType: Port\nproperties: {portNumber: \"{{ p }}\"}\n";
        let e = parse_session(undeclared).unwrap_err().to_string();
        assert!(e.contains("{{ p }} is not a parameter"), "{e}");
    }

    #[test]
    fn no_host_means_the_node_itself() {
        let doc = parse_session(
            "schemaVersion: \"1.0\"\nsessionType: Port\nproperties: {portNumber: 5432}\n",
        )
        .unwrap();
        let t = doc.port_target(&BTreeMap::new()).unwrap();
        assert_eq!(
            t,
            PortTarget {
                host: LOCAL_HOST.into(),
                port: 5432
            }
        );
    }
}
