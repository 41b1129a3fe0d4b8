//! SigV4 signing of the requests the daemon sends X-Ray itself (segment uploads and proxied
//! sampling calls) for service `xray`: pure, with the credentials, region and time passed in.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign as sigv4_sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("unable to sign request: {0}")]
pub struct SignError(String);

/// Signs `request` (whose `host` header names the endpoint) in place: adds `authorization`,
/// `x-amz-date` and, for temporary credentials, `x-amz-security-token`.
pub fn sign(
    request: &mut http::Request<Bytes>,
    credentials: &Credentials,
    region: &str,
    now: SystemTime,
) -> Result<(), SignError> {
    let error = |e: &dyn std::fmt::Display| SignError(e.to_string());
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("xray")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| error(&e))?
        .into();
    let headers: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
        .collect();
    let uri = request.uri().to_string();
    let signable = SignableRequest::new(
        request.method().as_str(),
        uri,
        headers.into_iter(),
        SignableBody::Bytes(request.body()),
    )
    .map_err(|e| error(&e))?;
    let (instructions, _signature) = sigv4_sign(signable, &params)
        .map_err(|e| error(&e))?
        .into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn request(body: &'static str) -> http::Request<Bytes> {
        http::Request::builder()
            .method("POST")
            .uri("https://xray.us-east-1.amazonaws.com/GetSamplingRules")
            .header("host", "xray.us-east-1.amazonaws.com")
            .header("content-type", "application/json")
            .body(Bytes::from_static(body.as_bytes()))
            .unwrap()
    }

    fn authorization(body: &'static str, token: Option<&str>) -> (String, http::HeaderMap) {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            token.map(str::to_owned),
            None,
            "test",
        );
        let mut request = request(body);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        sign(&mut request, &credentials, "us-east-1", at).unwrap();
        let headers = request.headers().clone();
        (
            headers["authorization"].to_str().unwrap().to_owned(),
            headers,
        )
    }

    #[test]
    fn signing_is_deterministic_scoped_to_xray_and_covers_the_body() {
        let (first, headers) = authorization("{}", None);
        assert!(
            first.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/xray/aws4_request, SignedHeaders="),
            "{first}"
        );
        assert!(
            first.contains("host") && first.contains("x-amz-date"),
            "{first}"
        );
        assert_eq!(headers["x-amz-date"], "20231114T221320Z");
        assert_eq!(
            authorization("{}", None).0,
            first,
            "same inputs, same signature"
        );
        assert_ne!(
            authorization("{\"a\":1}", None).0,
            first,
            "the body is signed"
        );
        assert!(!first.contains("secret"));
    }

    #[test]
    fn temporary_credentials_carry_their_session_token() {
        let (_, headers) = authorization("{}", Some("session-token"));
        assert_eq!(headers["x-amz-security-token"], "session-token");
    }
}
