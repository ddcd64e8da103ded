//! Errors of starting and running the server.

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not {what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] drover_store::StoreError),
    #[error(transparent)]
    Pki(#[from] drover_pki::PkiError),
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl ServerError {
    pub(crate) fn io(
        what: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.display().to_string();
        move |source| ServerError::Io { what, path, source }
    }
}
