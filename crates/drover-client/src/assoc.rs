//! State Manager: associations and compliance.

use drover_api::*;
use reqwest::Method;

use crate::{escape, Client, ClientError};

impl Client {
    pub async fn create_association(
        &self,
        req: &AssociationRequest,
    ) -> Result<AssociationView, ClientError> {
        self.call(Method::POST, "/api/v1/associations", Some(req))
            .await
    }

    pub async fn update_association(
        &self,
        id: &str,
        req: &AssociationRequest,
    ) -> Result<AssociationView, ClientError> {
        let path = format!("/api/v1/associations/{}", escape(id));
        self.call(Method::PATCH, &path, Some(req)).await
    }

    pub async fn list_associations(&self) -> Result<AssociationList, ClientError> {
        self.call::<(), _>(Method::GET, "/api/v1/associations", None)
            .await
    }

    pub async fn get_association(&self, id: &str) -> Result<AssociationView, ClientError> {
        let path = format!("/api/v1/associations/{}", escape(id));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn delete_association(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/associations/{}", escape(id));
        self.send::<()>(Method::DELETE, &path, None)
            .await
            .map(|_| ())
    }

    pub async fn run_association(&self, id: &str) -> Result<ExecutionView, ClientError> {
        let path = format!("/api/v1/associations/{}/run", escape(id));
        self.call::<(), _>(Method::POST, &path, None).await
    }

    pub async fn association_executions(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<ExecutionList, ClientError> {
        let path = format!(
            "/api/v1/associations/{}/executions?limit={limit}",
            escape(id)
        );
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn compliance(
        &self,
        association: Option<&str>,
        node: Option<&str>,
    ) -> Result<ComplianceList, ClientError> {
        let mut q = Vec::new();
        if let Some(a) = association {
            q.push(format!("association={}", escape(a)));
        }
        if let Some(n) = node {
            q.push(format!("node={}", escape(n)));
        }
        let path = format!("/api/v1/compliance?{}", q.join("&"));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn compliance_summary(&self) -> Result<ComplianceSummary, ClientError> {
        self.call::<(), _>(Method::GET, "/api/v1/compliance/summary", None)
            .await
    }
}
