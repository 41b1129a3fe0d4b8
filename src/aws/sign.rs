//! SigV4 signing of the requests the daemon sends X-Ray itself (segment uploads and proxied
//! sampling calls) for service `xray`, with the credentials, region and time passed in: by
//! aws-sigv4, or for requests of a plain shape with a signing key kept for the day.

use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign as sigv4_sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_types::date_time::{DateTime, Format};
use bytes::Bytes;
use http::HeaderValue;
use sha2::{Digest, Sha256};

const SERVICE: &str = "xray";

/// Headers aws-sigv4 leaves unsigned by default (proxies and transports may change them).
const UNSIGNED_HEADERS: [&str; 4] = [
    "authorization",
    "user-agent",
    "x-amzn-trace-id",
    "transfer-encoding",
];

/// Headers the signer sets (or aws-sigv4 may): a request already carrying one goes to
/// aws-sigv4. (`authorization` is among the unsigned headers; both signers replace it.)
const SIGNER_HEADERS: [&str; 3] = ["x-amz-date", "x-amz-security-token", "x-amz-content-sha256"];

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
        .name(SERVICE)
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
    // aws-sigv4 leaves them unmarked: marked, they stay out of any `Debug` of the request.
    for name in [http::header::AUTHORIZATION.as_str(), "x-amz-security-token"] {
        if let Some(value) = request.headers_mut().get_mut(name) {
            value.set_sensitive(true);
        }
    }
    Ok(())
}

/// Signs like [`sign`], keeping the signing key between calls.
///
/// A SigV4 signing key depends only on the secret, the day, the region and the service, yet
/// aws-sigv4 derives it (four HMACs) and canonicalises the request generically on every call:
/// in the daemon that was about 25 µs of each 50-segment upload, beside the body's 35 µs
/// SHA-256 (perf, issue 7). Requests of a plain shape, as the daemon's own are, are signed
/// here with the kept key, by the same rules and to the same signature; any other request,
/// and any that might need aws-sigv4's normalisation, is left to [`sign`].
#[derive(Default)]
pub struct Signer {
    key: Mutex<Option<DayKey>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer { .. }")
    }
}

/// A derived signing key and what it was derived from.
struct DayKey {
    /// The credentials (shared, not copied: the secret stays in their zeroised storage).
    credentials: Credentials,
    region: String,
    /// `YYYYMMDD`.
    day: String,
    key: [u8; 32],
}

impl Signer {
    /// Signs `request` (whose `host` header names the endpoint) in place, as [`sign`] does.
    pub fn sign(
        &self,
        request: &mut http::Request<Bytes>,
        credentials: &Credentials,
        region: &str,
        now: SystemTime,
    ) -> Result<(), SignError> {
        let Some(headers) = plain_headers(request) else {
            return sign(request, credentials, region, now);
        };
        let amz_date = amz_date(now)?;
        let day = &amz_date[..8];
        let key = self.key(credentials, region, day, now);
        let token = credentials.session_token();
        let mut signed: Vec<(&str, &str)> = headers;
        signed.push(("x-amz-date", &amz_date));
        if let Some(token) = token {
            signed.push(("x-amz-security-token", token));
        }
        signed.sort_unstable_by_key(|&(name, _)| name);
        let names = signed
            .iter()
            .map(|&(name, _)| name)
            .collect::<Vec<_>>()
            .join(";");
        let mut canonical = String::with_capacity(512);
        for part in [
            request.method().as_str(),
            "\n",
            request.uri().path(),
            "\n\n",
        ] {
            canonical.push_str(part);
        }
        for (name, value) in &signed {
            for part in [name, ":", value, "\n"] {
                canonical.push_str(part);
            }
        }
        for part in [
            "\n",
            &names,
            "\n",
            &hex::encode(Sha256::digest(request.body())),
        ] {
            canonical.push_str(part);
        }
        let scope = format!("{day}/{region}/{SERVICE}/aws4_request");
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={names}, Signature={}",
            credentials.access_key_id(),
            v4::calculate_signature(key, string_to_sign.as_bytes())
        );
        let error = |e: http::header::InvalidHeaderValue| SignError(e.to_string());
        let sensitive = |value: &str| {
            let mut value = HeaderValue::from_str(value).map_err(error)?;
            value.set_sensitive(true);
            Ok::<_, SignError>(value)
        };
        let token = token.map(sensitive).transpose()?;
        let headers = request.headers_mut();
        headers.insert(
            "x-amz-date",
            HeaderValue::from_str(&amz_date).map_err(error)?,
        );
        if let Some(token) = token {
            headers.insert("x-amz-security-token", token);
        }
        headers.insert(http::header::AUTHORIZATION, sensitive(&authorization)?);
        Ok(())
    }

    /// The signing key for `credentials`, `region` and `day` (the UTC day of `now`), derived
    /// again only when one of them has changed (credentials rotate; days pass).
    fn key(&self, credentials: &Credentials, region: &str, day: &str, now: SystemTime) -> [u8; 32] {
        let mut kept = self.key.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kept) = kept.as_ref().filter(|kept| {
            kept.day == day
                && kept.region == region
                && kept.credentials.access_key_id() == credentials.access_key_id()
                && kept.credentials.secret_access_key() == credentials.secret_access_key()
        }) {
            return kept.key;
        }
        let derived =
            v4::generate_signing_key(credentials.secret_access_key(), now, region, SERVICE);
        let key = derived
            .as_ref()
            .try_into()
            .expect("a SigV4 signing key is a SHA-256 HMAC");
        *kept = Some(DayKey {
            credentials: credentials.clone(),
            region: region.to_owned(),
            day: day.to_owned(),
            key,
        });
        key
    }
}

/// The request's headers to sign, when its shape needs none of aws-sigv4's normalisation:
/// `/` or a path of unreserved characters without empty or dot segments, no query, a `host`
/// header, each header once with a value `to_str` accepts (visible ASCII and tabs) that has
/// no leading, trailing or doubled spaces, and none of the headers the signer sets.
fn plain_headers(request: &http::Request<Bytes>) -> Option<Vec<(&str, &str)>> {
    let uri = request.uri();
    let path = uri.path();
    let plain_path = path == "/"
        || (path.starts_with('/')
            && path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b))
            && path[1..]
                .split('/')
                .all(|segment| !matches!(segment, "" | "." | "..")));
    if !plain_path || uri.query().is_some() {
        return None;
    }
    let headers = request.headers();
    if !headers.contains_key(http::header::HOST) || headers.keys_len() != headers.len() {
        return None;
    }
    headers
        .iter()
        .filter(|(name, _)| !UNSIGNED_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| {
            let value = value.to_str().ok()?;
            let plain = !SIGNER_HEADERS.contains(&name.as_str())
                && !value.starts_with(' ')
                && !value.ends_with(' ')
                && !value.contains("  ");
            plain.then_some((name.as_str(), value))
        })
        .collect()
}

/// `now` as SigV4's `X-Amz-Date`: `YYYYMMDDTHHMMSSZ`, in UTC.
fn amz_date(now: SystemTime) -> Result<String, SignError> {
    let whole_secs = DateTime::from_secs(DateTime::from(now).secs());
    let rfc3339 = whole_secs
        .fmt(Format::DateTime)
        .map_err(|e| SignError(format!("signing time {whole_secs}: {e}")))?;
    Ok(rfc3339.replace(['-', ':'], ""))
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

    /// The headers of `request` signed for `region` once by aws-sigv4 and once by `signer`.
    fn both_in(
        region: &str,
        request: &http::Request<Bytes>,
        signer: &Signer,
        credentials: &Credentials,
        at: SystemTime,
    ) -> (http::HeaderMap, http::HeaderMap) {
        let mut by_sigv4 = request.clone();
        sign(&mut by_sigv4, credentials, region, at).unwrap();
        let mut by_signer = request.clone();
        signer
            .sign(&mut by_signer, credentials, region, at)
            .unwrap();
        (by_sigv4.headers().clone(), by_signer.headers().clone())
    }

    fn both(
        request: &http::Request<Bytes>,
        signer: &Signer,
        credentials: &Credentials,
        at: SystemTime,
    ) -> (http::HeaderMap, http::HeaderMap) {
        both_in("us-east-1", request, signer, credentials, at)
    }

    fn upload(path: &str) -> http::Request<Bytes> {
        http::Request::builder()
            .method("POST")
            .uri(format!("https://xray.us-east-1.amazonaws.com{path}"))
            .header("host", "xray.us-east-1.amazonaws.com")
            .header("content-type", "application/json")
            .header("content-length", "56")
            .header("x-amzn-xray-timestamp", "1700000000.123456789")
            .body(Bytes::from_static(
                br#"{"TraceSegmentDocuments":["{\"id\":\"1\",\"name\":\"a\"}"]}"#,
            ))
            .unwrap()
    }

    #[test]
    fn a_kept_key_signs_plain_requests_as_aws_sigv4_does() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let signer = Signer::default();
        let proxied = http::Request::builder()
            .method("POST")
            .uri("http://127.0.0.1:2000/SamplingTargets")
            .header("host", "127.0.0.1:2000")
            .header("content-type", "application/json")
            .header("x-amz-user-agent", "aws-sdk-js/3.0 ua/2.1 os/linux")
            .header("user-agent", "not signed")
            .header(
                "x-amzn-trace-id",
                "Root=1-5759e988-bd862e3fe1be46a994272793",
            )
            .body(Bytes::from_static(br#"{"SamplingStatisticsDocuments":[]}"#))
            .unwrap();
        let cases = [
            (upload("/TraceSegments"), None),
            (upload("/TraceSegments"), Some("session-token")),
            (upload("/xray/v1/TraceSegments"), None),
            (upload("/"), None),
            (proxied, Some("another-token")),
        ];
        for (request, token) in cases {
            assert!(plain_headers(&request).is_some(), "{request:?}");
            let credentials =
                Credentials::new("AKIDEXAMPLE", "secret", token.map(str::to_owned), None, "t");
            let (expected, ours) = both(&request, &signer, &credentials, at);
            for name in ["authorization", "x-amz-date", "x-amz-security-token"] {
                assert_eq!(expected.get(name), ours.get(name), "{name} of {request:?}");
            }
            assert!(ours["authorization"].is_sensitive());
            assert_eq!(
                ours.get("x-amz-security-token")
                    .map(HeaderValue::is_sensitive),
                token.map(|_| true)
            );
        }
    }

    #[test]
    fn the_kept_key_follows_rotated_credentials_and_the_day() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let signer = Signer::default();
        let request = upload("/TraceSegments");
        let mut signatures = Vec::new();
        let next_day = at + Duration::from_secs(86_400);
        for (secret, region, when) in [
            ("first-secret", "us-east-1", at),
            ("second-secret", "us-east-1", at),
            ("second-secret", "eu-west-1", at),
            ("second-secret", "eu-west-1", next_day),
            (
                "second-secret",
                "eu-west-1",
                next_day + Duration::from_secs(60),
            ),
        ] {
            let credentials = Credentials::new("AKIDEXAMPLE", secret, None, None, "t");
            let (expected, ours) = both_in(region, &request, &signer, &credentials, when);
            assert_eq!(
                expected["authorization"], ours["authorization"],
                "{secret} {region}"
            );
            signatures.push(ours["authorization"].clone());
        }
        signatures.dedup();
        assert_eq!(signatures.len(), 5);
    }

    #[test]
    fn the_key_is_derived_once_and_then_kept() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let signer = Signer::default();
        let request = upload("/TraceSegments");
        let credentials = Credentials::new("AKIDEXAMPLE", "secret", None, None, "t");
        let (expected, first) = both(&request, &signer, &credentials, at);
        assert_eq!(expected["authorization"], first["authorization"]);
        // Spoil the kept key: a signer that derived it again would not notice.
        signer.key.lock().unwrap().as_mut().unwrap().key = [0; 32];
        let (expected, second) = both(&request, &signer, &credentials, at);
        assert_ne!(expected["authorization"], second["authorization"]);
    }

    #[test]
    fn requests_that_need_normalising_are_left_to_aws_sigv4() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let with_header = |name: &str, value: &str| {
            let mut request = upload("/TraceSegments");
            request.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
            request
        };
        let cases = [
            upload("/GetSamplingRules?x=1"),
            upload("/a%20b/TraceSegments"),
            upload("/xray//TraceSegments"),
            upload("//xray/TraceSegments"),
            upload("/xray/"),
            upload("/xray/./TraceSegments"),
            upload("/xray/../TraceSegments"),
            with_header("x-custom", "two  spaces"),
            with_header("x-custom", " leading"),
            with_header("x-custom", "trailing "),
            // A second value under one name: aws-sigv4 joins them with a comma.
            with_header("content-type", "application/x-amz-json-1.1"),
            with_header("x-amz-date", "20000101T000000Z"),
            with_header("x-amz-security-token", "the client's"),
            with_header("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
        ];
        let signer = Signer::default();
        let credentials = Credentials::new("AKIDEXAMPLE", "secret", None, None, "t");
        for request in cases {
            assert!(plain_headers(&request).is_none(), "{request:?}");
            let (_, ours) = both(&request, &signer, &credentials, at);
            assert!(ours["authorization"].is_sensitive(), "{request:?}");
        }
        let mut unnamed = upload("/TraceSegments");
        unnamed.headers_mut().remove("host");
        assert!(plain_headers(&unnamed).is_none());
    }

    #[test]
    fn the_signing_time_is_written_in_utc_without_separators() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_289_109_999);
        assert_eq!(amz_date(at).unwrap(), "20261121T192509Z");
        let before_1970 = SystemTime::UNIX_EPOCH - Duration::from_secs(400 * 86_400);
        assert_eq!(amz_date(before_1970).unwrap(), "19681127T000000Z");
    }

    #[test]
    fn the_unsigned_headers_are_aws_sigv4s() {
        let theirs = SigningSettings::default().excluded_headers.unwrap();
        assert_eq!(theirs, UNSIGNED_HEADERS.map(std::borrow::Cow::Borrowed));
    }
}
