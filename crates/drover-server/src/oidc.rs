//! Federated login with OpenID Connect: the authorization code flow with PKCE, the server
//! being the relying party (it holds the client secret and checks the ID token).
//!
//! Stateless on purpose, so that any server of a cluster can finish a login another began: the
//! CLI makes the state, the nonce and the PKCE verifier, keeps them, and sends the challenge to
//! `start` and the verifier and nonce with the code to `finish`. The state is checked by the CLI
//! on its loopback redirect; the code is worthless without the verifier, and the ID token is
//! accepted only with the nonce it was asked with.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient,
    CoreClientAuthMethod, CoreDeviceAuthorizationResponse, CoreGrantType, CoreIdToken,
    CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm,
    CoreResponseMode, CoreResponseType, CoreSubjectIdentifierType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    DeviceAuthorizationUrl, IssuerUrl, Nonce, PkceCodeVerifier, ProviderMetadata, RedirectUrl,
    Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// Discovery's standard fields, plus RFC 8628's device endpoint when the provider has one.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DeviceEndpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}
impl AdditionalProviderMetadata for DeviceEndpoint {}
type Metadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

/// The longest a device login is waited for, whatever the provider allows.
const DEVICE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(900);

use crate::api::ApiError;
use crate::config::OidcConfig;

/// Who the identity provider says logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `ISSUER SUB`: who the user is at the provider, which never changes (a name may).
    pub subject: String,
    pub username: String,
    pub attributes: BTreeMap<String, String>,
    /// None when no groups claim is configured (groups stay as Drover has them).
    pub groups: Option<Vec<String>>,
}

pub struct Oidc {
    config: OidcConfig,
    http: reqwest::Client,
    /// Discovered at first use, and again after a failure.
    metadata: Mutex<Option<Arc<Metadata>>>,
}

fn upstream(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "OpenID provider: {what}");
    ApiError::Unauthorized
}

/// A redirect back to the CLI: plain HTTP to a loopback address (RFC 8252, 7.3).
pub fn check_redirect(uri: &str) -> Result<RedirectUrl, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "invalid redirect_uri {uri:?}: http://127.0.0.1:PORT/PATH or http://[::1]:PORT/PATH"
        ))
    };
    let rest = uri.strip_prefix("http://").ok_or_else(bad)?;
    let host_ok = rest.starts_with("127.0.0.1:") || rest.starts_with("[::1]:");
    if !host_ok || uri.len() > 200 || uri.contains(['#', '@']) {
        return Err(bad());
    }
    RedirectUrl::new(uri.to_string()).map_err(|_| bad())
}

/// A client for the server's own requests out (the OpenID provider, webhooks): the system's
/// trusted CAs, and no redirects (a redirect would let a receiver steer the server to any
/// address).
pub fn outbound_client(
    timeout: std::time::Duration,
) -> Result<reqwest::ClientBuilder, crate::ServerError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let tls = rustls::ClientConfig::builder_with_provider(drover_pki::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| crate::ServerError::Config(format!("TLS for outbound requests: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout))
}

/// The host of an issuer URL (`https://login.example.com/realms/x` → `login.example.com`).
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host.strip_prefix('[') {
        Some(v6) => format!("[{}]", v6.split(']').next().unwrap_or_default()),
        None => host.split(':').next().unwrap_or_default().to_string(),
    }
}

impl Oidc {
    /// What a login page calls the provider: its host name.
    pub fn issuer_host(&self) -> String {
        host_of(&self.config.issuer)
    }

    pub fn new(config: OidcConfig) -> Result<Self, crate::ServerError> {
        let http = outbound_client(std::time::Duration::from_secs(10))?
            .build()
            .map_err(|e| crate::ServerError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            config,
            http,
            metadata: Mutex::new(None),
        })
    }

    async fn metadata(&self) -> Result<Arc<Metadata>, ApiError> {
        let mut cached = self.metadata.lock().await;
        if let Some(m) = cached.as_ref() {
            return Ok(m.clone());
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| ApiError::Internal(format!("OpenID issuer: {e}")))?;
        let m = Metadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, issuer = %self.config.issuer, "OpenID discovery failed");
                ApiError::Conflict(format!(
                    "the identity provider {} cannot be reached; try again later",
                    self.config.issuer
                ))
            })?;
        let m = Arc::new(m);
        *cached = Some(m.clone());
        Ok(m)
    }

    async fn client(
        &self,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        ApiError,
    > {
        let m = self.metadata().await?;
        Ok(CoreClient::from_provider_metadata(
            (*m).clone(),
            ClientId::new(self.config.client_id.clone()),
            self.config.client_secret.clone().map(ClientSecret::new),
        ))
    }

    /// The provider's authorization URL for a login that the CLI began.
    pub async fn authorization_url(
        &self,
        redirect: RedirectUrl,
        state: String,
        nonce: String,
        challenge: String,
    ) -> Result<String, ApiError> {
        let client = self.client().await?;
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .set_redirect_uri(Cow::Owned(redirect))
            .add_extra_param("code_challenge", challenge)
            .add_extra_param("code_challenge_method", "S256");
        for s in &self.config.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, _, _) = req.url();
        Ok(url.to_string())
    }

    /// Exchanges the code, checks the ID token (signature by the provider's keys, issuer,
    /// audience, expiry, nonce) and reads the user from its claims.
    pub async fn finish(
        &self,
        code: String,
        verifier: String,
        nonce: String,
        redirect: RedirectUrl,
    ) -> Result<Identity, ApiError> {
        let client = self.client().await?;
        let token = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| upstream("no token endpoint", e))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier))
            .set_redirect_uri(Cow::Owned(redirect))
            .request_async(&self.http)
            .await
            .map_err(|e| upstream("the code exchange failed", e))?;
        let id_token = token
            .id_token()
            .ok_or_else(|| upstream("no ID token", "the token response has none"))?;
        id_token
            .claims(&client.id_token_verifier(), &Nonce::new(nonce))
            .map_err(|e| upstream("the ID token is not valid", e))?;
        self.verified(id_token)
    }

    /// Asks the provider for a device login (RFC 8628): a code the user enters at a URL on
    /// any device with a browser. The response goes to the CLI, which shows it and hands it
    /// back to [`Oidc::device_finish`] (the server keeps nothing).
    pub async fn device_start(&self) -> Result<CoreDeviceAuthorizationResponse, ApiError> {
        if !self.config.device {
            return Err(ApiError::NotFound(
                "this server does not offer the device login (drover server --oidc-device)".into(),
            ));
        }
        let m = self.metadata().await?;
        let endpoint = m
            .additional_metadata()
            .device_authorization_endpoint
            .clone()
            .ok_or_else(|| {
                ApiError::Conflict(format!(
                    "the identity provider {} offers no device login; use drover login --oidc \
                     on a machine with a browser",
                    self.config.issuer
                ))
            })?;
        let client = self.client().await?.set_device_authorization_url(endpoint);
        let mut req = client.exchange_device_code();
        for s in &self.config.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        req.request_async(&self.http)
            .await
            .map_err(|e| upstream("the device authorization failed", e))
    }

    /// Waits, polling the provider at the pace it asks for, until the user has approved the
    /// device login (or refused it, or it expired), then reads the user from the ID token.
    /// The caller's request stays open meanwhile; if it goes away, polling stops with it.
    pub async fn device_finish(
        &self,
        details: &CoreDeviceAuthorizationResponse,
    ) -> Result<Identity, ApiError> {
        if !self.config.device {
            return Err(ApiError::NotFound(
                "this server does not offer the device login (drover server --oidc-device)".into(),
            ));
        }
        let client = self.client().await?;
        let wait = details.expires_in().min(DEVICE_WAIT_MAX);
        let token = client
            .exchange_device_access_token(details)
            .map_err(|e| upstream("no token endpoint", e))?
            .request_async(&self.http, tokio::time::sleep, Some(wait))
            .await
            .map_err(|e| upstream("the device login did not complete", e))?;
        let id_token = token
            .id_token()
            .ok_or_else(|| upstream("no ID token", "the token response has none"))?;
        // No nonce in this flow: the token came straight from the provider's token endpoint,
        // over TLS, in answer to the client's own authenticated request.
        id_token
            .claims(&client.id_token_verifier(), |_: Option<&Nonce>| Ok(()))
            .map_err(|e| upstream("the ID token is not valid", e))?;
        self.verified(id_token)
    }

    /// The user an already verified ID token names.
    fn verified(&self, id_token: &CoreIdToken) -> Result<Identity, ApiError> {
        // Its payload holds the claims Drover maps, standard or not.
        let payload = id_token
            .to_string()
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
            .ok_or_else(|| upstream("the ID token's claims", "unreadable"))?;
        self.identity(&payload)
    }

    fn identity(&self, claims: &serde_json::Value) -> Result<Identity, ApiError> {
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        let sub = claims
            .get("sub")
            .and_then(text)
            .ok_or_else(|| upstream("the ID token has no sub", ""))?;
        // An address the provider has not verified is anyone's to claim.
        let by_email = self.config.username_claim == "email";
        if by_email && claims.get("email_verified") != Some(&serde_json::Value::Bool(true)) {
            return Err(upstream("the e-mail address is not verified", &sub));
        }
        let username = claims
            .get(&self.config.username_claim)
            .and_then(text)
            .ok_or_else(|| {
                upstream(
                    "the ID token lacks the user name claim",
                    &self.config.username_claim,
                )
            })?;
        let attributes = self
            .config
            .attribute_claims
            .iter()
            .filter_map(|(claim, attr)| Some((attr.clone(), claims.get(claim).and_then(text)?)))
            .collect();
        let groups = self.config.groups_claim.as_ref().map(|c| {
            let named: Vec<String> = claims
                .get(c)
                .and_then(|g| g.as_array())
                .map(|g| g.iter().filter_map(text).collect())
                .unwrap_or_default();
            let mut mapped: Vec<String> = self
                .config
                .group_map
                .iter()
                .filter(|(theirs, _)| named.contains(theirs))
                .map(|(_, ours)| ours.clone())
                .collect();
            mapped.sort();
            mapped.dedup();
            mapped
        });
        Ok(Identity {
            subject: format!("{} {sub}", self.config.issuer),
            username,
            attributes,
            groups,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_providers_name_is_its_host() {
        assert_eq!(
            host_of("https://login.example.com/realms/x"),
            "login.example.com"
        );
        assert_eq!(host_of("http://127.0.0.1:4000"), "127.0.0.1");
        assert_eq!(host_of("https://u@[::1]:8443/"), "[::1]");
    }
}
