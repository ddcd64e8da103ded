//! Users, groups, tokens, logins and policies.

use drover_api::*;
use std::time::Duration;

use reqwest::Method;

use crate::{escape, Client, ClientError};

impl Client {
    pub async fn login(&self, req: &LoginRequest) -> Result<LoginResponse, ClientError> {
        self.call(Method::POST, "/api/v1/auth/login", Some(req))
            .await
    }

    pub async fn logout(&self) -> Result<(), ClientError> {
        self.send::<()>(Method::POST, "/api/v1/auth/logout", None)
            .await
            .map(|_| ())
    }

    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.call::<(), _>(Method::GET, "/api/v1/auth/whoami", None)
            .await
    }

    pub async fn list_users(&self) -> Result<Vec<UserView>, ClientError> {
        self.call::<(), _>(Method::GET, "/api/v1/users", None).await
    }

    pub async fn get_user(&self, name: &str) -> Result<UserView, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/api/v1/users/{}", escape(name)),
            None,
        )
        .await
    }

    pub async fn create_user(&self, req: &CreateUserRequest) -> Result<UserView, ClientError> {
        self.call(Method::POST, "/api/v1/users", Some(req)).await
    }

    pub async fn update_user(
        &self,
        name: &str,
        req: &UpdateUserRequest,
    ) -> Result<UserView, ClientError> {
        self.call(
            Method::PATCH,
            &format!("/api/v1/users/{}", escape(name)),
            Some(req),
        )
        .await
    }

    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        self.send::<()>(
            Method::DELETE,
            &format!("/api/v1/users/{}", escape(name)),
            None,
        )
        .await
        .map(|_| ())
    }

    pub async fn list_groups(&self) -> Result<Vec<GroupView>, ClientError> {
        self.call::<(), _>(Method::GET, "/api/v1/groups", None)
            .await
    }

    pub async fn create_group(&self, req: &CreateGroupRequest) -> Result<GroupView, ClientError> {
        self.call(Method::POST, "/api/v1/groups", Some(req)).await
    }

    pub async fn delete_group(&self, name: &str) -> Result<(), ClientError> {
        self.send::<()>(
            Method::DELETE,
            &format!("/api/v1/groups/{}", escape(name)),
            None,
        )
        .await
        .map(|_| ())
    }

    pub async fn list_tokens(&self, user: &str) -> Result<Vec<TokenView>, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/api/v1/users/{}/tokens", escape(user)),
            None,
        )
        .await
    }

    pub async fn create_token(
        &self,
        user: &str,
        req: &CreateTokenRequest,
    ) -> Result<CreatedToken, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/users/{}/tokens", escape(user)),
            Some(req),
        )
        .await
    }

    pub async fn revoke_token(&self, user: &str, token: &str) -> Result<(), ClientError> {
        self.send::<()>(
            Method::POST,
            &format!(
                "/api/v1/users/{}/tokens/{}/revoke",
                escape(user),
                escape(token)
            ),
            None,
        )
        .await
        .map(|_| ())
    }

    pub async fn list_policies(&self) -> Result<Vec<PolicyView>, ClientError> {
        self.call::<(), _>(Method::GET, "/api/v1/policies", None)
            .await
    }

    pub async fn get_policy(&self, name: &str) -> Result<PolicyView, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/api/v1/policies/{}", escape(name)),
            None,
        )
        .await
    }

    pub async fn put_policy(&self, name: &str, text: &str) -> Result<PolicyView, ClientError> {
        let body = PolicyText {
            text: text.to_string(),
        };
        self.call(
            Method::PUT,
            &format!("/api/v1/policies/{}", escape(name)),
            Some(&body),
        )
        .await
    }

    pub async fn delete_policy(&self, name: &str) -> Result<(), ClientError> {
        self.send::<()>(
            Method::DELETE,
            &format!("/api/v1/policies/{}", escape(name)),
            None,
        )
        .await
        .map(|_| ())
    }

    pub async fn validate_policy(&self, text: &str) -> Result<ValidateResponse, ClientError> {
        let body = PolicyText {
            text: text.to_string(),
        };
        self.call(Method::POST, "/api/v1/policies/validate", Some(&body))
            .await
    }

    pub async fn check_policy(&self, req: &CheckRequest) -> Result<CheckResponse, ClientError> {
        self.call(Method::POST, "/api/v1/policies/check", Some(req))
            .await
    }
}

impl Client {
    pub async fn oidc_start(
        &self,
        req: &OidcStartRequest,
    ) -> Result<OidcStartResponse, ClientError> {
        self.call(Method::POST, "/api/v1/auth/oidc/start", Some(req))
            .await
    }

    pub async fn oidc_finish(&self, req: &OidcFinishRequest) -> Result<LoginResponse, ClientError> {
        self.call(Method::POST, "/api/v1/auth/oidc/finish", Some(req))
            .await
    }

    pub async fn oidc_device_start(&self) -> Result<OidcDeviceLogin, ClientError> {
        self.call::<(), _>(Method::POST, "/api/v1/auth/oidc/device", None)
            .await
    }

    /// Waits (the server holds the request) until the user approves the device login at the
    /// provider, refuses it, or it expires.
    pub async fn oidc_device_finish(
        &self,
        login: &OidcDeviceLogin,
    ) -> Result<LoginResponse, ClientError> {
        let wait = Duration::from_secs(login.expires_in_secs.min(900) + 30);
        let bytes = self
            .send_with_timeout(
                Method::POST,
                "/api/v1/auth/oidc/device/finish",
                Some(login),
                wait,
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

/// Which audit entries to list (`drover audit list`).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// RFC 3339 times.
    pub since: Option<String>,
    pub until: Option<String>,
    pub user: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub after: Option<i64>,
    pub limit: usize,
}

impl Client {
    pub async fn list_audit(&self, f: &AuditFilter) -> Result<AuditList, ClientError> {
        let mut q = crate::form_query();
        for (k, v) in [
            ("since", &f.since),
            ("until", &f.until),
            ("user", &f.user),
            ("action", &f.action),
            ("resource", &f.resource),
        ] {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
        if let Some(a) = f.after {
            q.append_pair("after", &a.to_string());
        }
        q.append_pair("limit", &f.limit.max(1).to_string());
        self.call::<(), _>(Method::GET, &format!("/api/v1/audit?{}", q.finish()), None)
            .await
    }

    /// Checks the whole chain (the server reads all of it: allow time on a big log).
    pub async fn verify_audit(&self) -> Result<AuditVerify, ClientError> {
        let bytes = self
            .send_with_timeout::<()>(
                Method::GET,
                "/api/v1/audit/verify",
                None,
                Duration::from_secs(3600),
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

impl Client {
    pub async fn request_access(
        &self,
        req: &CreateAccessRequest,
    ) -> Result<AccessRequestView, ClientError> {
        self.call(Method::POST, "/api/v1/access-requests", Some(req))
            .await
    }

    pub async fn list_access_requests(
        &self,
        status: Option<&str>,
    ) -> Result<Vec<AccessRequestView>, ClientError> {
        let path = match status {
            Some(s) => format!("/api/v1/access-requests?status={}", escape(s)),
            None => "/api/v1/access-requests".into(),
        };
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn get_access_request(&self, id: &str) -> Result<AccessRequestView, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/api/v1/access-requests/{}", escape(id)),
            None,
        )
        .await
    }

    /// `verb`: approve, deny or revoke.
    pub async fn decide_access(
        &self,
        id: &str,
        verb: &str,
        comment: &str,
    ) -> Result<AccessRequestView, ClientError> {
        let body = AccessVerdict {
            comment: comment.to_string(),
        };
        self.call(
            Method::POST,
            &format!("/api/v1/access-requests/{}/{}", escape(id), escape(verb)),
            Some(&body),
        )
        .await
    }
}
