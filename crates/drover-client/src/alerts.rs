//! Webhooks and change windows.

use drover_api::*;
use reqwest::Method;

use crate::{escape, Client, ClientError};

impl Client {
    pub async fn create_webhook(&self, req: &CreateWebhook) -> Result<WebhookCreated, ClientError> {
        self.call(Method::POST, "/api/v1/webhooks", Some(req)).await
    }

    pub async fn list_webhooks(&self) -> Result<Vec<WebhookView>, ClientError> {
        self.call::<(), _>(Method::GET, "/api/v1/webhooks", None)
            .await
    }

    pub async fn get_webhook(&self, id: &str, limit: usize) -> Result<WebhookDetail, ClientError> {
        let path = format!("/api/v1/webhooks/{}?limit={limit}", escape(id));
        self.call::<(), _>(Method::GET, &path, None).await
    }

    pub async fn test_webhook(&self, id: &str) -> Result<DeliveryView, ClientError> {
        let path = format!("/api/v1/webhooks/{}/test", escape(id));
        self.call::<(), _>(Method::POST, &path, None).await
    }

    pub async fn delete_webhook(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/webhooks/{}", escape(id));
        self.send::<()>(Method::DELETE, &path, None)
            .await
            .map(|_| ())
    }

    pub async fn create_change_window(
        &self,
        req: &CreateChangeWindow,
    ) -> Result<ChangeWindowView, ClientError> {
        self.call(Method::POST, "/api/v1/change-windows", Some(req))
            .await
    }

    pub async fn list_change_windows(&self) -> Result<Vec<ChangeWindowView>, ClientError> {
        self.call::<(), _>(Method::GET, "/api/v1/change-windows", None)
            .await
    }

    pub async fn delete_change_window(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/change-windows/{}", escape(id));
        self.send::<()>(Method::DELETE, &path, None)
            .await
            .map(|_| ())
    }
}
