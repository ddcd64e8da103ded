//! Parameter Store.

use drover_api::*;
use reqwest::Method;

use crate::{escape, Client, ClientError};

/// Which version to read.
#[derive(Debug, Clone, Default)]
pub struct ParamSelector {
    pub version: Option<i64>,
    pub label: Option<String>,
}

impl Client {
    pub async fn put_parameter(
        &self,
        req: &PutParameterRequest,
    ) -> Result<PutParameterResponse, ClientError> {
        self.call(Method::POST, "/api/v1/parameters", Some(req))
            .await
    }

    pub async fn get_parameter(
        &self,
        name: &str,
        which: &ParamSelector,
        decrypt: bool,
    ) -> Result<ParameterView, ClientError> {
        let mut path = format!("/api/v1/parameters?name={}&decrypt={decrypt}", escape(name));
        if let Some(v) = which.version {
            path.push_str(&format!("&version={v}"));
        }
        if let Some(l) = &which.label {
            path.push_str(&format!("&label={}", escape(l)));
        }
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn parameters_by_path(
        &self,
        path: &str,
        recursive: bool,
        decrypt: bool,
    ) -> Result<Vec<ParameterView>, ClientError> {
        let path = format!(
            "/api/v1/parameters/by-path?path={}&recursive={recursive}&decrypt={decrypt}",
            escape(path)
        );
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn parameter_history(
        &self,
        name: &str,
        decrypt: bool,
    ) -> Result<Vec<ParameterView>, ClientError> {
        let path = format!(
            "/api/v1/parameters/history?name={}&decrypt={decrypt}",
            escape(name)
        );
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn delete_parameter(&self, name: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/parameters?name={}", escape(name));
        self.send::<()>(Method::DELETE, &path, None)
            .await
            .map(|_| ())
    }

    pub async fn label_parameter(&self, req: &LabelParameterRequest) -> Result<(), ClientError> {
        self.send(Method::POST, "/api/v1/parameters/labels", Some(req))
            .await
            .map(|_| ())
    }
}
