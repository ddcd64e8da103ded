//! The server's configuration: one struct, built once by the binary from flags, environment and
//! file. Tests set fields here; nothing reads the process environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// A certificate chain and key to serve instead of the one issued by the private CA.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Extra DNS names or IP addresses for the server certificate (besides localhost,
    /// the loopback addresses and this machine's hostname).
    pub public_names: Vec<String>,
    /// Lifetime of agent certificates; agents renew after two thirds of it.
    pub agent_cert_lifetime: Duration,
    /// How often each side of an agent connection sends a heartbeat.
    pub heartbeat: Duration,
    /// Bounds on unauthenticated connections and on connections per node.
    pub limits: crate::admission::Limits,
    /// How long shutdown waits for connections to close.
    pub shutdown_grace: Duration,
    /// Serve `/metrics` without a token (it holds only aggregate counters).
    pub metrics_public: bool,
    /// This machine's hostname, put in the server certificate.
    pub hostname: String,
    /// How much command history to keep.
    pub retention: crate::retention::RetentionPolicy,
    /// Networks (CIDR) or addresses that forwarded connections may not reach, beyond what
    /// agents always refuse (the cloud metadata addresses and the link-local ranges).
    pub forward_deny: Vec<String>,
    /// Federated login through an OpenID provider; None: local users only.
    pub oidc: Option<OidcConfig>,
}

/// The OpenID provider users log in through, and how its ID tokens become users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// `https://...` (or `http://` on loopback, for tests); discovery reads
    /// `ISSUER/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// None: a public client (PKCE alone).
    pub client_secret: Option<String>,
    /// The claim that names the user (`preferred_username`, `email`, `sub`).
    pub username_claim: String,
    /// The claim listing the user's groups; None: groups are managed in Drover.
    pub groups_claim: Option<String>,
    /// `(provider group, Drover group)`: the only groups a provider's claim can give. A group
    /// the provider names that is not here is ignored, so nobody becomes an admin by naming a
    /// group `admins` at the provider.
    pub group_map: Vec<(String, String)>,
    /// `(claim, attribute)`: each claim of the ID token that becomes a user attribute.
    pub attribute_claims: Vec<(String, String)>,
    /// Scopes asked for, beyond `openid`.
    pub scopes: Vec<String>,
    /// The server's address as browsers reach it (`https://drover.example.com:8443`): the
    /// console's callback is this plus `/api/v1/auth/oidc/callback`, registered at the
    /// provider. None: taken from the browser's `Host` header.
    pub console_url: Option<String>,
    /// Offer the device-code login (`drover login --oidc --device`). Off by default: anyone
    /// may begin one and send its link to a user, whose approval would log the sender in.
    pub device: bool,
}

impl ServerConfig {
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Self {
            data_dir,
            listen,
            tls_cert: None,
            tls_key: None,
            public_names: Vec::new(),
            agent_cert_lifetime: Duration::from_secs(30 * 86400),
            heartbeat: Duration::from_secs(30),
            limits: crate::admission::Limits::default(),
            shutdown_grace: Duration::from_secs(5),
            metrics_public: false,
            hostname: String::new(),
            retention: crate::retention::RetentionPolicy::default(),
            forward_deny: Vec::new(),
            oidc: None,
        }
    }
}
