//! The X-Ray sink: `PutTraceSegments` through `aws-sdk-xray`, with the Go daemon's extra
//! headers, a body written straight from the segment bytes, and SDK retries off (the upload
//! loop retries with its own policy, keeping the segments inside the budget).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_xray::config::retry::RetryConfig;
use aws_sdk_xray::config::timeout::TimeoutConfig;
use aws_sdk_xray::config::StalledStreamProtectionConfig;
use aws_sdk_xray::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use bytes::Bytes;

use super::body::put_trace_segments_body;
use super::retry::Failure;
use super::{SendFailure, Unprocessed};

/// The per-attempt deadline (the Go daemon's 2 s request timeout).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Uploads batches to X-Ray.
#[derive(Debug, Clone)]
pub struct XraySink {
    client: aws_sdk_xray::Client,
}

impl XraySink {
    /// A sink using `sdk_config` (region, credentials, HTTP client), with `endpoint`
    /// overriding the regional endpoint when set.
    pub fn new(sdk_config: &aws_config::SdkConfig, endpoint: Option<&str>) -> Self {
        XraySink::with_http_client(sdk_config, endpoint, None)
    }

    /// Like [`XraySink::new`], with `http_client` (when given) in place of `sdk_config`'s:
    /// the `NoVerifySSL` transport, which only X-Ray calls use.
    pub fn with_http_client(
        sdk_config: &aws_config::SdkConfig,
        endpoint: Option<&str>,
        http_client: Option<SharedHttpClient>,
    ) -> Self {
        let mut config = aws_sdk_xray::config::Builder::from(sdk_config)
            .retry_config(RetryConfig::disabled())
            // The attempt timeout below bounds a stalled upload already; the SDK's throughput
            // monitor would only wrap every request and response body in more bookkeeping.
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            .interceptor(DaemonHeaders::new(&user_agent_token(
                crate::VERSION,
                std::env::var("AWS_EXECUTION_ENV").ok().as_deref(),
            )));
        if let Some(endpoint) = endpoint {
            // The SDK's rules refuse FIPS or dual-stack together with a custom endpoint (every
            // request would fail); `Endpoint` names the host, so the variants do not apply.
            config = config
                .endpoint_url(endpoint)
                .use_fips(false)
                .use_dual_stack(false);
        }
        if let Some(http_client) = http_client {
            config = config.http_client(http_client);
        }
        XraySink {
            client: aws_sdk_xray::Client::from_conf(config.build()),
        }
    }

    /// The X-Ray client (same credentials, region, endpoint and transport as uploads), for
    /// the other X-Ray calls the daemon makes, such as telemetry.
    pub fn client(&self) -> &aws_sdk_xray::Client {
        &self.client
    }

    /// Sends one batch; returns the segments X-Ray reported as unprocessed.
    pub async fn send(&self, documents: &[&[u8]]) -> Result<Vec<Unprocessed>, SendFailure> {
        let body = Bytes::from(put_trace_segments_body(documents.iter().copied()));
        let result = self
            .client
            .put_trace_segments()
            .customize()
            // The SDK serialises an empty document list; the prebuilt body replaces it before
            // signing, so the documents are escaped once, straight from the received bytes.
            .mutate_request(move |request| {
                request
                    .headers_mut()
                    .insert("content-length", body.len().to_string());
                *request.body_mut() = SdkBody::from(body.clone());
            })
            .send()
            .await;
        match result {
            Ok(output) => Ok(output
                .unprocessed_trace_segments
                .unwrap_or_default()
                .into_iter()
                .map(|entry| Unprocessed {
                    id: entry.id,
                    error_code: entry.error_code,
                    message: entry.message,
                })
                .collect()),
            Err(error) => Err(failure_of(&error)),
        }
    }
}

/// Classifies an SDK failure (of any X-Ray operation) for the retry decision and metrics.
pub fn failure_of<E>(error: &SdkError<E, HttpResponse>) -> SendFailure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let failure = match error {
        SdkError::ServiceError(service) => Failure::Http {
            status: service.raw().status().as_u16(),
            code: service.err().code().map(str::to_owned),
        },
        SdkError::TimeoutError(_) => Failure::Timeout,
        SdkError::DispatchFailure(dispatch) if dispatch.is_timeout() => Failure::Timeout,
        SdkError::DispatchFailure(dispatch) if dispatch.is_io() => {
            super::retry::connection_failure(error)
        }
        // Not a network failure: typically credentials that could not be loaded.
        SdkError::DispatchFailure(_) => Failure::Other,
        _ => Failure::Other,
    };
    SendFailure {
        failure,
        message: aws_error_chain(error),
    }
}

/// An SDK error with its whole source chain, as one line ("service error: ...: ...").
pub fn aws_error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `xray-agent/xray-daemon/<version> exec-env/<env> OS/<os>-<arch>`, with Go's names for
/// the OS and architecture so X-Ray sees the same token from either daemon.
pub fn user_agent_token(version: &str, execution_env: Option<&str>) -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    format!(
        "xray-agent/xray-daemon/{version} exec-env/{} OS/{}-{arch}",
        execution_env.filter(|e| !e.is_empty()).unwrap_or("UNKNOWN"),
        std::env::consts::OS,
    )
}

/// Unix time with exactly nine decimals, as in `X-Amzn-Xray-Timestamp`.
pub fn xray_timestamp(now: SystemTime) -> String {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!(
        "{}.{:09}",
        since_epoch.as_secs(),
        since_epoch.subsec_nanos()
    )
}

/// Adds the Go daemon's `X-Amzn-Xray-Timestamp` header and User-Agent token.
#[derive(Debug)]
struct DaemonHeaders {
    user_agent_token: String,
}

impl DaemonHeaders {
    fn new(user_agent_token: &str) -> Self {
        DaemonHeaders {
            user_agent_token: user_agent_token.to_owned(),
        }
    }
}

impl Intercept for DaemonHeaders {
    fn name(&self) -> &'static str {
        "XrayDaemonHeaders"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        context
            .request_mut()
            .headers_mut()
            .insert("x-amzn-xray-timestamp", xray_timestamp(SystemTime::now()));
        Ok(())
    }

    // After signing: User-Agent is not a signed header, and the SDK has set its own by now.
    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let headers = context.request_mut().headers_mut();
        let user_agent = match headers.get("user-agent") {
            Some(sdk) => format!("{sdk} {}", self.user_agent_token),
            None => self.user_agent_token.clone(),
        };
        headers.insert("user-agent", user_agent);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agent_token_has_the_go_daemon_shape() {
        let token = user_agent_token("1.2.3", None);
        assert!(
            token.starts_with("xray-agent/xray-daemon/1.2.3 exec-env/UNKNOWN OS/linux-"),
            "{token}"
        );
        assert!(user_agent_token("1", Some("AWS_ECS_FARGATE")).contains("exec-env/AWS_ECS_FARGATE"));
    }

    #[test]
    fn timestamp_has_nine_decimals() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(xray_timestamp(t), "1700000000.123456789");
        assert_eq!(
            xray_timestamp(UNIX_EPOCH + Duration::from_secs(5)),
            "5.000000000"
        );
    }
}
