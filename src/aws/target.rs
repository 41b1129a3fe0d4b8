//! Where the X-Ray calls the daemon signs itself go (segment uploads and the sampling proxy):
//! the endpoint, the signing region and credentials, and the connector with the proxy and TLS
//! settings. One is built per configuration and shared by both users.

use std::time::SystemTime;

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_smithy_runtime_api::client::http::{HttpConnector, SharedHttpConnector};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;

use super::sign::{sign, SignError};

/// The X-Ray endpoint and the identity that signs requests to it.
#[derive(Debug)]
pub struct XrayTarget {
    endpoint: http::Uri,
    region: String,
    credentials: SharedCredentialsProvider,
    connector: SharedHttpConnector,
}

/// The endpoint is not a URL a request can be sent to.
#[derive(Debug, thiserror::Error)]
#[error("unable to parse xray endpoint: {endpoint}: {reason}")]
pub struct InvalidEndpoint {
    endpoint: String,
    reason: String,
}

/// Why a request was not signed (and so not sent).
#[derive(Debug, thiserror::Error)]
pub enum Unsigned {
    /// No credentials could be resolved (the message never contains secrets).
    #[error("credentials unavailable: {0}")]
    NoCredentials(String),
    /// The signer refused the request.
    #[error(transparent)]
    Sign(#[from] SignError),
}

impl XrayTarget {
    /// Requests to `endpoint` (`scheme://host[:port][/path]`) signed for `region` with
    /// `credentials`, sent through `connector`.
    pub fn new(
        endpoint: &str,
        region: &str,
        credentials: SharedCredentialsProvider,
        connector: SharedHttpConnector,
    ) -> Result<Self, InvalidEndpoint> {
        let invalid = |reason: String| InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason,
        };
        let uri: http::Uri = endpoint.parse().map_err(|e| invalid(format!("{e}")))?;
        if uri.scheme().is_none() || uri.authority().is_none() {
            return Err(invalid("expected scheme://host[:port]".into()));
        }
        Ok(XrayTarget {
            endpoint: uri,
            region: region.to_owned(),
            credentials,
            connector,
        })
    }

    /// The endpoint as configured or resolved.
    pub fn endpoint(&self) -> &http::Uri {
        &self.endpoint
    }

    /// Signs `request` (its `host` header naming this endpoint) with current credentials.
    pub async fn sign(&self, request: &mut http::Request<Bytes>) -> Result<(), Unsigned> {
        let credentials = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| Unsigned::NoCredentials(crate::upload::xray::aws_error_chain(&e)))?;
        sign(request, &credentials, &self.region, SystemTime::now())?;
        Ok(())
    }

    /// Sends a signed `request`; the response body is left to the caller to read. Callers
    /// bound the time.
    pub async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<HttpResponse, ConnectorError> {
        let request = aws_smithy_runtime_api::http::Request::try_from(request.map(SdkBody::from))
            .map_err(|e| ConnectorError::user(e.into()))?;
        self.connector.call(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;

    fn target(endpoint: &str) -> Result<XrayTarget, InvalidEndpoint> {
        XrayTarget::new(
            endpoint,
            "us-east-1",
            SharedCredentialsProvider::new(Credentials::new("AKID", "secret", None, None, "test")),
            SharedHttpConnector::new(crate::aws::proxy::connector(None).unwrap()),
        )
    }

    #[test]
    fn endpoints_need_a_scheme_and_a_host() {
        for good in [
            "https://xray.us-east-1.amazonaws.com",
            "http://127.0.0.1:8080/base",
        ] {
            assert_eq!(target(good).unwrap().endpoint(), good);
        }
        for bad in ["xray.us-east-1.amazonaws.com", "https://", "http://a b"] {
            let error = target(bad).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("unable to parse xray endpoint: {bad}: ")),
                "{error}"
            );
        }
    }
}
