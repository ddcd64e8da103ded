//! Dialling the server from the node: TCP (directly or through an HTTP CONNECT proxy), then TLS
//! with the agent's ALPN. The same code serves the real agent and the agent simulator.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Where to dial: parsed from `https://host[:port]`, or a proxy's `http://[user:pass@]host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// A proxy's credentials from its URL, sent as Basic proxy authorization.
    pub credentials: Option<Credentials>,
}

/// A user name and password; the password never appears in `Debug` output or in errors.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// The `Proxy-Authorization` header's value.
    fn basic(&self) -> String {
        use base64::Engine;
        let pair = format!("{}:{}", self.user, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

impl Endpoint {
    /// Parses `https://host[:port][/]` (port 443 by default) or `http://` for a proxy.
    pub fn parse(url: &str, default_port: u16) -> Result<Self, DialError> {
        let bad = |why: &str| DialError::BadUrl {
            url: redact(url),
            why: why.to_string(),
        };
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| bad("it must start with https://"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (userinfo, authority) = match authority.rsplit_once('@') {
            Some((u, a)) => (Some(u), a),
            None => (None, authority),
        };
        let decode = |v: &str| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| bad("the user name or password is not UTF-8 once decoded"))
        };
        let credentials = match userinfo {
            Some(u) => {
                let (user, password) = u.split_once(':').unwrap_or((u, ""));
                Some(Credentials {
                    user: decode(user)?,
                    password: decode(password)?,
                })
            }
            None => None,
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
            None => default_port,
        };
        Ok(Self {
            host,
            port,
            credentials,
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `url` with the password of its user information, if any, replaced: for messages and logs.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    // The last '@' anywhere: a password with an unescaped '/' or '@' is masked whole too.
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split([':', '/']).next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("invalid URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
    #[error("could not connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("proxy {proxy} refused CONNECT to {target}: {status}")]
    ProxyRefused {
        proxy: String,
        target: String,
        status: String,
    },
    #[error("TLS handshake with {addr} failed")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid server name {0:?}")]
    ServerName(String),
    #[error("timed out after {0:?} connecting to {1}")]
    Timeout(Duration, String),
}

/// Reads the HTTPS proxy for `target` from the usual environment variables (`HTTPS_PROXY`,
/// `https_proxy`, `NO_PROXY`), through `get` so that callers decide where the values come from.
pub fn proxy_from_env(
    target: &Endpoint,
    get: impl Fn(&str) -> Option<String>,
) -> Result<Option<Endpoint>, DialError> {
    let Some(proxy) = get("HTTPS_PROXY")
        .or_else(|| get("https_proxy"))
        .filter(|p| !p.is_empty())
    else {
        return Ok(None);
    };
    let no_proxy = get("NO_PROXY")
        .or_else(|| get("no_proxy"))
        .unwrap_or_default();
    let bypass = no_proxy.split(',').map(str::trim).any(|rule| {
        !rule.is_empty()
            && (rule == "*"
                || target.host == rule.trim_start_matches('.')
                || target
                    .host
                    .ends_with(&format!(".{}", rule.trim_start_matches('.'))))
    });
    if bypass {
        return Ok(None);
    }
    let proxy = if proxy.contains("://") {
        proxy
    } else {
        format!("http://{proxy}")
    };
    Endpoint::parse(&proxy, 3128).map(Some)
}

/// Dials `target` (through `proxy` if given) and completes TLS offering `alpn`.
pub async fn dial(
    target: &Endpoint,
    proxy: Option<&Endpoint>,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, DialError> {
    tokio::time::timeout(timeout, dial_inner(target, proxy, tls))
        .await
        .map_err(|_| DialError::Timeout(timeout, target.authority()))?
}

async fn dial_inner(
    target: &Endpoint,
    proxy: Option<&Endpoint>,
    tls: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, DialError> {
    let tcp = match proxy {
        None => connect(target).await?,
        Some(proxy) => {
            let mut tcp = connect(proxy).await?;
            http_connect(&mut tcp, proxy, target).await?;
            tcp
        }
    };
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(target.host.clone())
        .map_err(|_| DialError::ServerName(target.host.clone()))?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|source| DialError::Tls {
            addr: target.authority(),
            source,
        })
}

async fn connect(ep: &Endpoint) -> Result<TcpStream, DialError> {
    TcpStream::connect((ep.host.as_str(), ep.port))
        .await
        .map_err(|source| DialError::Connect {
            addr: ep.authority(),
            source,
        })
}

/// Asks an HTTP proxy for a tunnel to `target` and reads its answer up to the blank line.
async fn http_connect(
    tcp: &mut TcpStream,
    proxy: &Endpoint,
    target: &Endpoint,
) -> Result<(), DialError> {
    let io_err = |source| DialError::Connect {
        addr: proxy.authority(),
        source,
    };
    let auth = target.authority();
    let proxy_auth = match &proxy.credentials {
        Some(c) => format!("Proxy-Authorization: {}\r\n", c.basic()),
        None => String::new(),
    };
    let request = format!("CONNECT {auth} HTTP/1.1\r\nHost: {auth}\r\n{proxy_auth}\r\n");
    tcp.write_all(request.as_bytes()).await.map_err(io_err)?;
    // Read byte by byte: the proxy's answer must not be over-read, since the TLS handshake
    // that follows belongs to the server.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= 8192 {
            return Err(DialError::ProxyRefused {
                proxy: proxy.authority(),
                target: auth,
                status: "response header too long".into(),
            });
        }
        let b = tcp.read_u8().await.map_err(io_err)?;
        head.push(b);
    }
    let status_line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        return Err(DialError::ProxyRefused {
            proxy: proxy.authority(),
            target: auth,
            status: status_line,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("https://example.com", 443).unwrap(),
            Endpoint {
                credentials: None,
                host: "example.com".into(),
                port: 443
            }
        );
        assert_eq!(
            Endpoint::parse("https://[::1]:8443/", 443).unwrap(),
            Endpoint {
                credentials: None,
                host: "::1".into(),
                port: 8443
            }
        );
        assert!(Endpoint::parse("ftp://x", 443).is_err());
        assert!(Endpoint::parse("https://x:port", 443).is_err());
        assert!(Endpoint::parse("https://", 443).is_err());
    }

    #[test]
    fn proxy_credentials_are_decoded_and_never_shown() {
        let p = Endpoint::parse("http://svc%2Dagent:p%40ss%3Aword@proxy.corp:3128", 80).unwrap();
        let c = p.credentials.clone().unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_str()),
            ("svc-agent", "p@ss:word")
        );
        assert_eq!(c.basic(), "Basic c3ZjLWFnZW50OnBAc3M6d29yZA==");
        assert!(!format!("{p:?}").contains("p@ss"), "{p:?}");
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
        let bad = Endpoint::parse("http://u:secret@proxy:notaport", 80).unwrap_err();
        assert!(!bad.to_string().contains("secret"), "{bad}");
        assert!(bad.to_string().contains("u:***@proxy"), "{bad}");
        // A '/' the operator forgot to escape must not cut the password out of the mask.
        let bad = Endpoint::parse("http://u:pa/ss@proxy:3128", 80).unwrap_err();
        assert!(!bad.to_string().contains("ss@"), "{bad}");
    }

    #[test]
    fn no_proxy_is_honoured() {
        let target = Endpoint::parse("https://drover.corp.example:8443", 443).unwrap();
        let env = |no: &'static str| {
            move |k: &str| match k {
                "HTTPS_PROXY" => Some("proxy:3128".to_string()),
                "NO_PROXY" => Some(no.to_string()),
                _ => None,
            }
        };
        assert_eq!(
            proxy_from_env(&target, env("")).unwrap(),
            Some(Endpoint {
                credentials: None,
                host: "proxy".into(),
                port: 3128
            })
        );
        assert_eq!(proxy_from_env(&target, env(".corp.example")).unwrap(), None);
        assert_eq!(proxy_from_env(&target, env("*")).unwrap(), None);
    }
}
