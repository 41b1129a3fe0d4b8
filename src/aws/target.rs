//! Where the X-Ray calls the daemon signs itself go (segment uploads and the sampling proxy):
//! the endpoint, the signing region and credentials, the connector with the proxy and TLS
//! settings, and the clock skew learnt from X-Ray's answers. One is built per configuration
//! and shared by both users.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_smithy_runtime_api::client::http::{HttpConnector, SharedHttpConnector};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::date_time::{DateTime, Format};
use bytes::Bytes;
use http::HeaderValue;

use super::sign::{SignError, Signer};

/// Skew below this is the `Date` header's one-second resolution and network time, not a
/// wrong clock: signatures keep the local time.
const SKEW_IGNORED_BELOW: Duration = Duration::from_secs(60);

/// The X-Ray endpoint and the identity that signs requests to it.
#[derive(Debug)]
pub struct XrayTarget {
    endpoint: http::Uri,
    /// `host[:port]`, the port only when it is not the scheme's default.
    host: HeaderValue,
    region: String,
    credentials: SharedCredentialsProvider,
    connector: SharedHttpConnector,
    signer: Signer,
    /// X-Ray's clock minus ours, in milliseconds, from the last answer's `Date` (0 when under
    /// [`SKEW_IGNORED_BELOW`]).
    skew_ms: AtomicI64,
}

/// The endpoint is not a URL a request can be sent to.
#[derive(Debug, thiserror::Error)]
#[error("unable to parse xray endpoint: {endpoint}: {reason}")]
pub struct InvalidEndpoint {
    /// The endpoint, credentials in it masked.
    endpoint: String,
    reason: String,
}

/// Why a request was not signed (and so not sent).
#[derive(Debug, thiserror::Error)]
pub enum Unsigned {
    /// No credentials could be resolved (the message never contains secrets).
    #[error("{0}")]
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
        let invalid = |reason: &dyn std::fmt::Display| InvalidEndpoint {
            endpoint: crate::config::redact_url(endpoint),
            reason: reason.to_string(),
        };
        let uri: http::Uri = endpoint.parse().map_err(|e| invalid(&e))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(invalid(&"expected scheme://host[:port]"));
        };
        if authority.as_str().contains('@') {
            return Err(invalid(
                &"credentials in the endpoint URL are not supported",
            ));
        }
        let default_port = if *scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        let host = match authority.port_u16() {
            Some(port) if port != default_port => format!("{}:{port}", authority.host()),
            _ => authority.host().to_owned(),
        };
        Ok(XrayTarget {
            host: HeaderValue::from_str(&host).map_err(|e| invalid(&e))?,
            endpoint: uri,
            region: region.to_owned(),
            credentials,
            connector,
            signer: Signer::default(),
            skew_ms: AtomicI64::new(0),
        })
    }

    /// The endpoint as configured or resolved.
    pub fn endpoint(&self) -> &http::Uri {
        &self.endpoint
    }

    /// The `Host` header of every request.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// `path_and_query` on the endpoint's scheme and host, without the endpoint's own path
    /// (the sampling proxy's rule, as in the Go daemon).
    pub fn uri_on_host(&self, path_and_query: &str) -> Result<http::Uri, http::Error> {
        http::Uri::builder()
            .scheme(self.endpoint.scheme_str().unwrap_or("https"))
            .authority(self.endpoint.authority().map_or("", |a| a.as_str()))
            .path_and_query(path_and_query)
            .build()
    }

    /// An operation's `path` after the endpoint's own path, as the SDK joins them.
    pub fn operation_uri(&self, path: &str) -> Result<http::Uri, InvalidEndpoint> {
        let base = self.endpoint.path().trim_end_matches('/');
        self.uri_on_host(&format!("{base}{path}"))
            .map_err(|e| InvalidEndpoint {
                endpoint: crate::config::redact_url(&self.endpoint.to_string()),
                reason: e.to_string(),
            })
    }

    /// Signs `request` (its `host` header naming this endpoint) with current credentials, at
    /// X-Ray's time when the local clock is known to be off.
    pub async fn sign(&self, request: &mut http::Request<Bytes>) -> Result<(), Unsigned> {
        let credentials = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|e| Unsigned::NoCredentials(super::error_chain(&e)))?;
        let at = corrected(SystemTime::now(), self.skew_ms.load(Ordering::Relaxed));
        self.signer.sign(request, &credentials, &self.region, at)?;
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
        let response = self.connector.call(request).await?;
        if let Some(skew_ms) = response
            .headers()
            .get("date")
            .and_then(|date| skew_from_date(date, SystemTime::now()))
        {
            let before_ms = self.skew_ms.swap(skew_ms, Ordering::Relaxed);
            if skew_changed(before_ms, skew_ms) {
                tracing::warn!(
                    "X-Ray's clock is {} s {} this host's; signing with X-Ray's time",
                    skew_ms.unsigned_abs() / 1000,
                    if skew_ms >= 0 { "ahead of" } else { "behind" }
                );
            }
        }
        Ok(response)
    }

    /// X-Ray's clock minus ours, in milliseconds, as last learnt (0: no correction).
    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::Relaxed)
    }
}

/// X-Ray's clock minus ours in milliseconds, from a response's `Date` received at `now`; 0
/// when under [`SKEW_IGNORED_BELOW`], `None` when the date cannot be read.
fn skew_from_date(date: &str, now: SystemTime) -> Option<i64> {
    let server = SystemTime::try_from(DateTime::from_str(date, Format::HttpDate).ok()?).ok()?;
    let skew_ms = match server.duration_since(now) {
        Ok(ahead) => i64::try_from(ahead.as_millis()).ok()?,
        Err(behind) => -i64::try_from(behind.duration().as_millis()).ok()?,
    };
    let ignored = i64::try_from(SKEW_IGNORED_BELOW.as_millis()).unwrap_or(i64::MAX);
    Some(if skew_ms.abs() < ignored { 0 } else { skew_ms })
}

/// Whether a new skew measurement differs enough from the last to matter: then requests
/// signed with the old one may have been refused, and the change is logged.
pub fn skew_changed(before_ms: i64, after_ms: i64) -> bool {
    before_ms.abs_diff(after_ms) >= SKEW_IGNORED_BELOW.as_millis() as u64
}

/// `now` moved by `skew_ms`.
fn corrected(now: SystemTime, skew_ms: i64) -> SystemTime {
    let by = Duration::from_millis(skew_ms.unsigned_abs());
    if skew_ms >= 0 {
        now + by
    } else {
        now.checked_sub(by).unwrap_or(now)
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
    fn the_host_header_keeps_only_a_port_that_is_not_the_default() {
        for (endpoint, host) in [
            (
                "https://xray.us-east-1.amazonaws.com",
                "xray.us-east-1.amazonaws.com",
            ),
            (
                "https://xray.us-east-1.amazonaws.com:443/",
                "xray.us-east-1.amazonaws.com",
            ),
            ("http://127.0.0.1:80", "127.0.0.1"),
            ("http://127.0.0.1:8080/base", "127.0.0.1:8080"),
            ("https://[::1]:4443", "[::1]:4443"),
        ] {
            assert_eq!(target(endpoint).unwrap().host(), host, "{endpoint}");
        }
    }

    #[test]
    fn operations_follow_the_endpoint_path_and_proxied_calls_do_not() {
        let at_root = target("https://xray.us-east-1.amazonaws.com").unwrap();
        assert_eq!(
            at_root.operation_uri("/TraceSegments").unwrap(),
            "https://xray.us-east-1.amazonaws.com/TraceSegments"
        );
        let below = target("http://gateway:8080/xray/").unwrap();
        assert_eq!(
            below.operation_uri("/TraceSegments").unwrap(),
            "http://gateway:8080/xray/TraceSegments"
        );
        assert_eq!(
            below.uri_on_host("/GetSamplingRules?x=1").unwrap(),
            "http://gateway:8080/GetSamplingRules?x=1"
        );
    }

    #[test]
    fn unusable_endpoints_are_refused_without_showing_credentials() {
        for bad in ["xray.us-east-1.amazonaws.com", "https://", "http://a b"] {
            let error = target(bad).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("unable to parse xray endpoint: {bad}: ")),
                "{error}"
            );
        }
        let error = target("https://user:hunter2@xray.example")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "unable to parse xray endpoint: https://***@xray.example: \
             credentials in the endpoint URL are not supported"
        );
    }

    #[tokio::test]
    async fn without_credentials_nothing_is_signed_and_the_reason_is_given() {
        let target = XrayTarget::new(
            "https://xray.us-east-1.amazonaws.com",
            "us-east-1",
            SharedCredentialsProvider::new(crate::aws::credentials::NoProvider),
            SharedHttpConnector::new(crate::aws::proxy::connector(None).unwrap()),
        )
        .unwrap();
        let mut request = http::Request::new(Bytes::new());
        let error = target.sign(&mut request).await.unwrap_err();
        assert!(matches!(error, Unsigned::NoCredentials(_)));
        assert!(
            error
                .to_string()
                .contains("no credentials provider is configured"),
            "{error}"
        );
        assert!(!request.headers().contains_key("authorization"));
    }

    #[test]
    fn clock_skew_is_learnt_from_date_and_applied_when_over_a_minute() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        // 2023-11-14T22:13:20Z is `now`.
        assert_eq!(
            skew_from_date("Tue, 14 Nov 2023 22:13:20 GMT", now),
            Some(0)
        );
        assert_eq!(
            skew_from_date("Tue, 14 Nov 2023 22:13:50 GMT", now),
            Some(0)
        );
        assert_eq!(
            skew_from_date("Tue, 14 Nov 2023 22:23:20 GMT", now),
            Some(600_000)
        );
        assert_eq!(
            skew_from_date("Tue, 14 Nov 2023 21:13:20 GMT", now),
            Some(-3_600_000)
        );
        assert_eq!(skew_from_date("yesterday", now), None);
        assert_eq!(corrected(now, 600_000), now + Duration::from_secs(600));
        assert_eq!(corrected(now, -3_600_000), now - Duration::from_secs(3600));
        assert_eq!(corrected(now, 0), now);
        assert!(skew_changed(0, 600_000));
        assert!(skew_changed(600_000, 0));
        assert!(!skew_changed(600_000, 599_000));
    }
}
