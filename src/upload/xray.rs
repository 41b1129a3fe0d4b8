//! The X-Ray sink: `PutTraceSegments` requests built, signed and sent by the daemon itself
//! (body written straight from the segment bytes, the Go daemon's extra headers, no retries:
//! the upload loop retries with its own policy, keeping the segments inside the budget), and
//! an `aws-sdk-xray` client configured the same way for the daemon's other X-Ray calls.
//!
//! Uploads bypass the SDK's request pipeline because it cost about 3.5 µs of CPU per segment
//! at 50 segments a request, a quarter of the daemon's total (docs/performance.md). What the
//! SDK does for this one operation is done here: the endpoint's path, SigV4, clock-skew
//! correction (in [`XrayTarget`]), error codes from `x-amzn-errortype` or the body.

use std::sync::Arc;
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
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use http_body_util::BodyExt;

use super::body::put_trace_segments_body;
use super::retry::Failure;
use super::{SendFailure, Unprocessed};
use crate::aws::target::{skew_changed, InvalidEndpoint, XrayTarget};

/// The per-attempt deadline (the Go daemon's 2 s request timeout).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest response body read; X-Ray's answers are a few KB at most.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Uploads batches to X-Ray.
#[derive(Debug, Clone)]
pub struct XraySink {
    target: Arc<XrayTarget>,
    /// `{endpoint}/TraceSegments`.
    uri: http::Uri,
    user_agent: HeaderValue,
    client: aws_sdk_xray::Client,
}

impl XraySink {
    /// Uploads through `target`. The SDK client for other X-Ray calls goes to the same
    /// endpoint with `sdk_config`'s region and credentials, through `http_client` (the
    /// `NoVerifySSL` transport) when given.
    pub fn new(
        target: Arc<XrayTarget>,
        sdk_config: &aws_config::SdkConfig,
        http_client: Option<SharedHttpClient>,
    ) -> Result<Self, InvalidEndpoint> {
        let token = user_agent_token(
            crate::VERSION,
            std::env::var("AWS_EXECUTION_ENV").ok().as_deref(),
        );
        Ok(XraySink {
            uri: target.operation_uri("/TraceSegments")?,
            // Only an AWS_EXECUTION_ENV that is no header text can fail here.
            user_agent: HeaderValue::from_str(&token)
                .unwrap_or(HeaderValue::from_static("xray-agent/xray-daemon")),
            client: sdk_client(
                sdk_config,
                &target.endpoint().to_string(),
                http_client,
                &token,
            ),
            target,
        })
    }

    /// The X-Ray client (same credentials, region, endpoint and transport as uploads), for
    /// the other X-Ray calls the daemon makes, such as telemetry.
    pub fn client(&self) -> &aws_sdk_xray::Client {
        &self.client
    }

    /// Sends one batch; returns the segments X-Ray reported as unprocessed.
    pub async fn send(&self, documents: &[&[u8]]) -> Result<Vec<Unprocessed>, SendFailure> {
        let body = Bytes::from(put_trace_segments_body(documents.iter().copied()));
        let skew_before_ms = self.target.skew_ms();
        let result = self.attempt(body.clone()).await;
        // A refusal that taught a new clock skew was most likely for the signing time: sign
        // once more with X-Ray's time at once (the SDK corrects skew the same way).
        match &result {
            Err(SendFailure {
                failure: Failure::Http {
                    status: 400..=499, ..
                },
                ..
            }) if skew_changed(skew_before_ms, self.target.skew_ms()) => self.attempt(body).await,
            _ => result,
        }
    }

    async fn attempt(&self, body: Bytes) -> Result<Vec<Unprocessed>, SendFailure> {
        let mut request =
            put_trace_segments_request(&self.uri, self.target.host(), body, SystemTime::now())
                .map_err(|e| other(format!("building the request: {e}")))?;
        // Credentials are resolved outside the attempt deadline: a first STS or metadata call
        // may take longer, and has its own time limit in the credentials cache.
        self.target
            .sign(&mut request)
            .await
            .map_err(|e| other(e.to_string()))?;
        // After signing, as the SDK does: User-Agent is not a signed header.
        request
            .headers_mut()
            .insert(header::USER_AGENT, self.user_agent.clone());
        let exchange = async {
            let response = self.target.send(request).await.map_err(connector_failure)?;
            let (parts, body) = response
                .try_into_http1x()
                .map_err(|e| other(format!("reading the response: {e}")))?
                .into_parts();
            let body = http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| other(format!("reading the response: {e}")))?
                .to_bytes();
            read_put_trace_segments_response(parts.status, &parts.headers, &body)
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err(SendFailure {
                failure: Failure::Timeout,
                message: format!("no response within {ATTEMPT_TIMEOUT:?}"),
            }),
        }
    }
}

/// The SDK client for X-Ray calls other than uploads, to `endpoint` (already resolved), with
/// the daemon's User-Agent token and `X-Amzn-Xray-Timestamp` header, the attempt deadline,
/// and retries left to the caller.
fn sdk_client(
    sdk_config: &aws_config::SdkConfig,
    endpoint: &str,
    http_client: Option<SharedHttpClient>,
    user_agent_token: &str,
) -> aws_sdk_xray::Client {
    let mut config = aws_sdk_xray::config::Builder::from(sdk_config)
        .retry_config(RetryConfig::disabled())
        // The attempt timeout below bounds a stalled call already; the SDK's throughput
        // monitor would only wrap every request and response body in more bookkeeping.
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .interceptor(DaemonHeaders::new(user_agent_token))
        // The FIPS and dual-stack settings are part of the resolved endpoint already (and the
        // SDK's rules refuse them together with an endpoint URL).
        .endpoint_url(endpoint)
        .use_fips(false)
        .use_dual_stack(false);
    if let Some(http_client) = http_client {
        config = config.http_client(http_client);
    }
    aws_sdk_xray::Client::from_conf(config.build())
}

/// The unsigned `PutTraceSegments` request carrying `body`, sent at `now`.
fn put_trace_segments_request(
    uri: &http::Uri,
    host: &HeaderValue,
    body: Bytes,
    now: SystemTime,
) -> Result<http::Request<Bytes>, http::Error> {
    http::Request::builder()
        .method(http::Method::POST)
        .uri(uri.clone())
        .header(header::HOST, host.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .header("x-amzn-xray-timestamp", xray_timestamp(now))
        .body(body)
}

/// The outcome of a `PutTraceSegments` response: the unprocessed segments of a success, or
/// the failure with X-Ray's error code and message, found where the SDK looks for them.
fn read_put_trace_segments_response(
    status: http::StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<Unprocessed>, SendFailure> {
    if status.is_success() {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new());
        }
        return serde_json::from_slice::<PutTraceSegmentsOutput>(body)
            .map(|output| {
                output
                    .unprocessed
                    .unwrap_or_default()
                    .into_iter()
                    .map(|entry| Unprocessed {
                        id: entry.id,
                        error_code: entry.error_code,
                        message: entry.message,
                    })
                    .collect()
            })
            .map_err(|e| other(format!("unreadable PutTraceSegments response: {e}")));
    }
    let error = ErrorBody::read(body);
    let code = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .or(error.code.as_deref())
        .map(sanitize_error_code)
        .filter(|c| !c.is_empty());
    let described = match (&code, error.message) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.clone(),
        (None, Some(message)) => message,
        (None, None) => String::from_utf8_lossy(body).into_owned(),
    };
    Err(SendFailure {
        message: format!(
            "service error (HTTP {}): {}",
            status.as_u16(),
            printable(&described, MAX_MESSAGE_CHARS)
        ),
        failure: Failure::Http {
            status: status.as_u16(),
            code,
        },
    })
}

/// The most of X-Ray's error text a log line or `/debug/status` shows.
const MAX_MESSAGE_CHARS: usize = 256;

/// `text` on one line: trimmed, control characters escaped (a response cannot forge log
/// lines), cut after `max_chars` characters.
fn printable(text: &str, max_chars: usize) -> String {
    let text = text.trim();
    let mut shown = String::new();
    for c in text.chars().take(max_chars) {
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    if text.chars().nth(max_chars).is_some() {
        shown.push_str("...");
    }
    shown
}

/// `ThrottledException` from `aws.xray#ThrottledException` or
/// `ThrottledException:http://internal.amazon.com/...`.
fn sanitize_error_code(raw: &str) -> String {
    let code = raw.split(':').next().unwrap_or(raw);
    code.rsplit('#').next().unwrap_or(code).trim().to_owned()
}

#[derive(serde::Deserialize)]
struct PutTraceSegmentsOutput {
    #[serde(rename = "UnprocessedTraceSegments")]
    unprocessed: Option<Vec<UnprocessedEntry>>,
}

#[derive(serde::Deserialize)]
struct UnprocessedEntry {
    #[serde(rename = "Id")]
    id: Option<String>,
    #[serde(rename = "ErrorCode")]
    error_code: Option<String>,
    #[serde(rename = "Message")]
    message: Option<String>,
}

/// What an error body says, read field by field so that one odd field loses nothing else.
#[derive(Default)]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
}

impl ErrorBody {
    fn read(body: &[u8]) -> Self {
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(body) else {
            return ErrorBody::default();
        };
        let first = |names: &[&str]| {
            names
                .iter()
                .find_map(|name| fields.get(*name)?.as_str().map(str::to_owned))
        };
        ErrorBody {
            code: first(&["code", "Code", "__type"]),
            message: first(&["message", "Message", "errorMessage"]),
        }
    }
}

fn other(message: String) -> SendFailure {
    SendFailure {
        failure: Failure::Other,
        message,
    }
}

/// Classifies a transport failure of an upload.
fn connector_failure(error: ConnectorError) -> SendFailure {
    let failure = if error.is_timeout() {
        Failure::Timeout
    } else if error.is_io() {
        super::retry::connection_failure(&error)
    } else {
        Failure::Other
    };
    SendFailure {
        failure,
        message: crate::aws::error_chain(&error),
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
        message: crate::aws::error_chain(error),
    }
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
    fn the_request_has_the_rest_json_shape_and_the_daemon_headers() {
        let uri: http::Uri = "http://127.0.0.1:4000/TraceSegments".parse().unwrap();
        let host = HeaderValue::from_static("127.0.0.1:4000");
        let body = Bytes::from_static(br#"{"TraceSegmentDocuments":["{}"]}"#);
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let request = put_trace_segments_request(&uri, &host, body.clone(), at).unwrap();
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(request.uri(), "http://127.0.0.1:4000/TraceSegments");
        let headers = request.headers();
        assert_eq!(headers["host"], "127.0.0.1:4000");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["content-length"], body.len().to_string().as_str());
        assert_eq!(headers["x-amzn-xray-timestamp"], "1700000000.000000005");
        assert_eq!(request.body(), &body);
    }

    fn read(
        status: u16,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Vec<Unprocessed>, SendFailure> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        read_put_trace_segments_response(
            http::StatusCode::from_u16(status).unwrap(),
            &map,
            body.as_bytes(),
        )
    }

    #[test]
    fn a_success_returns_the_unprocessed_segments() {
        let unprocessed = read(
            200,
            &[],
            r#"{"UnprocessedTraceSegments":[{"Id":"a1","ErrorCode":"ThrottledException","Message":"slow down"},{"ErrorCode":"InvalidSegment"}]}"#,
        )
        .unwrap();
        assert_eq!(
            unprocessed,
            [
                Unprocessed {
                    id: Some("a1".into()),
                    error_code: Some("ThrottledException".into()),
                    message: Some("slow down".into()),
                },
                Unprocessed {
                    id: None,
                    error_code: Some("InvalidSegment".into()),
                    message: None,
                },
            ]
        );
        assert_eq!(
            read(200, &[], r#"{"UnprocessedTraceSegments":[]}"#).unwrap(),
            []
        );
        assert_eq!(read(200, &[], "{}").unwrap(), []);
        assert_eq!(read(200, &[], "").unwrap(), []);
        let garbled = read(200, &[], "<html>").unwrap_err();
        assert_eq!(garbled.failure, Failure::Other);
        assert!(
            garbled.message.contains("unreadable"),
            "{}",
            garbled.message
        );
    }

    #[test]
    fn errors_carry_the_aws_code_from_the_header_or_the_body() {
        let throttled = read(
            400,
            &[(
                "x-amzn-errortype",
                "ThrottledException:http://internal.amazon.com/coral/",
            )],
            r#"{"message":"Rate exceeded"}"#,
        )
        .unwrap_err();
        assert_eq!(
            throttled.failure,
            Failure::Http {
                status: 400,
                code: Some("ThrottledException".into())
            }
        );
        assert_eq!(
            throttled.message,
            "service error (HTTP 400): ThrottledException: Rate exceeded"
        );
        assert_eq!(
            throttled.failure.outcome(),
            crate::metrics::UploadOutcome::Throttled
        );

        let typed = read(
            400,
            &[],
            r#"{"__type":"com.amazonaws.xray#InvalidRequestException","Message":"bad"}"#,
        )
        .unwrap_err();
        assert_eq!(
            typed.failure,
            Failure::Http {
                status: 400,
                code: Some("InvalidRequestException".into())
            }
        );
        assert!(
            typed.message.ends_with("InvalidRequestException: bad"),
            "{}",
            typed.message
        );

        let coded = read(403, &[], r#"{"code":"AccessDeniedException"}"#).unwrap_err();
        assert_eq!(
            coded.failure,
            Failure::Http {
                status: 403,
                code: Some("AccessDeniedException".into())
            }
        );

        let bare = read(503, &[], "Service Unavailable\n").unwrap_err();
        assert_eq!(
            bare.failure,
            Failure::Http {
                status: 503,
                code: None
            }
        );
        assert_eq!(
            bare.message,
            "service error (HTTP 503): Service Unavailable"
        );
    }

    #[test]
    fn odd_error_bodies_lose_only_the_odd_field_and_stay_on_one_short_line() {
        let numeric_code = read(400, &[], r#"{"code":123,"message":"bad input"}"#).unwrap_err();
        assert_eq!(
            numeric_code.failure,
            Failure::Http {
                status: 400,
                code: None
            }
        );
        assert_eq!(numeric_code.message, "service error (HTTP 400): bad input");

        // The body's `code` wins over `__type`, as in the SDK; `errorMessage` is read too.
        let both = read(
            400,
            &[],
            r#"{"code":"InvalidRequestException","__type":"Other","errorMessage":"why"}"#,
        )
        .unwrap_err();
        assert_eq!(
            both.message,
            "service error (HTTP 400): InvalidRequestException: why"
        );

        let forged = read(502, &[], "bad gateway\n2016-11-24T06:07:06Z [Info] forged").unwrap_err();
        assert!(!forged.message.contains('\n'), "{}", forged.message);
        assert!(
            forged.message.contains("bad gateway\\n2016"),
            "{}",
            forged.message
        );

        let long = read(500, &[], &"x".repeat(10_000)).unwrap_err();
        assert!(long.message.len() < 300, "{}", long.message.len());
        assert!(long.message.ends_with("x..."));

        assert_eq!(
            read(200, &[], r#"{"UnprocessedTraceSegments":null}"#).unwrap(),
            []
        );
    }

    #[test]
    fn transport_failures_are_told_apart() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            connector_failure(ConnectorError::io(refused.into())).failure,
            Failure::ConnectionRefused
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            connector_failure(ConnectorError::io(reset.into())).failure,
            Failure::Connection
        );
        let timeout = connector_failure(ConnectorError::timeout("read timed out".into()));
        assert_eq!(timeout.failure, Failure::Timeout);
        assert!(
            timeout.message.contains("read timed out"),
            "{}",
            timeout.message
        );
        assert_eq!(
            connector_failure(ConnectorError::user("bad request".into())).failure,
            Failure::Other
        );
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
