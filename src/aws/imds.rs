//! A minimal EC2 instance metadata (IMDS) client: IMDSv2 tokens with an IMDSv1 fallback and
//! short timeouts, never sent through a proxy.
//!
//! The SDK's own client is IMDSv2-only. The fallback matters in containers: with the default
//! hop limit of 1 the token response never reaches a pod, while plain GETs still work
//! (aws-xray-daemon#203).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Where IMDS answers unless `AWS_EC2_METADATA_SERVICE_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";

/// How long each metadata request may take: off EC2 nothing answers, and startup must not
/// wait long for that.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a metadata lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// No answer in time.
    #[error("request to {0} timed out")]
    Timeout(String),
    /// The connection failed.
    #[error("request to {url} failed: {reason}")]
    Transport {
        /// The URL asked.
        url: String,
        /// Why.
        reason: String,
    },
    /// IMDS answered with an error status.
    #[error("{url} answered {status}")]
    Status {
        /// The URL asked.
        url: String,
        /// The status.
        status: StatusCode,
    },
}

/// An IMDS client for one endpoint.
#[derive(Debug, Clone)]
pub struct Imds {
    endpoint: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Imds {
    /// The client the environment asks for, or `None` when `AWS_EC2_METADATA_DISABLED` is
    /// true.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Option<Imds> {
        if env("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        let endpoint = env("AWS_EC2_METADATA_SERVICE_ENDPOINT").filter(|e| !e.is_empty());
        Some(Imds::new(endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT)))
    }

    /// A client for `endpoint` (`http://host[:port]`).
    pub fn new(endpoint: &str) -> Imds {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(REQUEST_TIMEOUT));
        Imds {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// GETs a metadata path such as `/latest/meta-data/placement/region`.
    pub async fn get(&self, path: &str) -> Result<String, ImdsError> {
        let token = match self.request(Method::PUT, "/latest/api/token", None).await {
            Ok(token) => Some(token),
            Err(error) if falls_back_to_v1(&error) => None,
            Err(error) => return Err(error),
        };
        self.request(Method::GET, path, token.as_deref()).await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> Result<String, ImdsError> {
        let url = format!("{}{path}", self.endpoint);
        let mut request = Request::builder().method(method.clone()).uri(&url);
        if method == Method::PUT {
            request = request.header("x-aws-ec2-metadata-token-ttl-seconds", "21600");
        }
        if let Some(token) = token {
            request = request.header("x-aws-ec2-metadata-token", token);
        }
        let transport = |reason: String| ImdsError::Transport {
            url: url.clone(),
            reason,
        };
        let request = request
            .body(Empty::new())
            .map_err(|e| transport(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| transport(super::error_chain(&e)))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| transport(e.to_string()))?;
            Ok::<_, ImdsError>((status, body.to_bytes()))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ImdsError::Timeout(url.clone()))??;
        if !status.is_success() {
            return Err(ImdsError::Status { url, status });
        }
        Ok(String::from_utf8_lossy(&body).trim().to_owned())
    }
}

/// Whether a failed token request means "use IMDSv1": the token API is missing or refused
/// (403/404/405), or its answer never arrived (hop limit).
fn falls_back_to_v1(error: &ImdsError) -> bool {
    match error {
        ImdsError::Timeout(_) => true,
        ImdsError::Status { status, .. } => matches!(status.as_u16(), 403..=405),
        ImdsError::Transport { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_can_disable_or_move_imds() {
        let env = crate::aws::test_env;
        assert!(Imds::from_env(&env(&[("AWS_EC2_METADATA_DISABLED", "TRUE")])).is_none());
        let moved = Imds::from_env(&env(&[(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            "http://127.0.0.1:9/",
        )]))
        .unwrap();
        assert_eq!(moved.endpoint, "http://127.0.0.1:9");
        assert_eq!(
            Imds::from_env(&env(&[])).unwrap().endpoint,
            DEFAULT_ENDPOINT
        );
    }

    #[test]
    fn which_token_failures_fall_back_to_imdsv1() {
        let status = |code: u16| ImdsError::Status {
            url: String::new(),
            status: StatusCode::from_u16(code).unwrap(),
        };
        assert!(falls_back_to_v1(&ImdsError::Timeout(String::new())));
        assert!(
            falls_back_to_v1(&status(403))
                && falls_back_to_v1(&status(404))
                && falls_back_to_v1(&status(405))
        );
        assert!(!falls_back_to_v1(&status(500)));
        assert!(!falls_back_to_v1(&ImdsError::Transport {
            url: String::new(),
            reason: "refused".into()
        }));
    }
}
