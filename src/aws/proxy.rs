//! The outbound HTTP client for every AWS call (X-Ray, STS, the credentials chain): through
//! `-p`/`ProxyAddress`, else `HTTPS_PROXY`/`https_proxy`, honouring `NO_PROXY` (which the Go
//! daemon ignores, aws-xray-daemon#12). Instance and container metadata addresses never go
//! through the proxy: in 3.6.0 the Go daemon sent IMDS to the proxy (aws-xray-daemon#255).

use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use aws_smithy_http_client::{Builder, Connector};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

use super::Env;

/// Link-local metadata endpoints (EC2 IMDS over IPv4 and IPv6, ECS and EKS Pod Identity
/// credentials), always reached directly.
const METADATA_HOSTS: &str =
    "169.254.169.254,169.254.170.2,169.254.170.23,fd00:ec2::254,fd00:ec2::23";

/// Which proxy outbound calls use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// The proxy URL (`http://host:port`, possibly with credentials).
    pub url: String,
    /// Comma-separated hosts, domains and CIDRs to reach directly.
    pub no_proxy: String,
}

/// The proxy for `configured` (`-p`) or the environment, or `None` for direct connections.
pub fn proxy_settings(configured: Option<&str>, env: Env<'_>) -> Option<ProxySettings> {
    let first = |names: &[&str]| {
        names
            .iter()
            .find_map(|name| env(name).filter(|v| !v.trim().is_empty()))
    };
    let url = configured
        .filter(|url| !url.trim().is_empty())
        .map(str::to_owned)
        .or_else(|| first(&["HTTPS_PROXY", "https_proxy"]))?;
    let no_proxy = match first(&["NO_PROXY", "no_proxy"]) {
        Some(list) => format!("{list},{METADATA_HOSTS}"),
        None => METADATA_HOSTS.to_owned(),
    };
    Some(ProxySettings { url, no_proxy })
}

/// Why the proxy cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("Bad proxy URL: {0}")]
pub struct BadProxy(String);

fn proxy_config(proxy: Option<&ProxySettings>) -> Result<ProxyConfig, BadProxy> {
    Ok(match proxy {
        Some(settings) => ProxyConfig::all(settings.url.as_str())
            .map_err(|e| BadProxy(format!("{}: {e}", crate::config::redact_url(&settings.url))))?
            .no_proxy(&settings.no_proxy),
        None => ProxyConfig::disabled(),
    })
}

/// Whether the SDK's connector accepts `settings`' URL (the `NoVerifySSL` transport applies
/// the same check, so both refuse the same URLs).
pub fn check_proxy_url(settings: &ProxySettings) -> Result<(), BadProxy> {
    proxy_config(Some(settings)).map(drop)
}

/// An HTTPS client (rustls) through `proxy`, or direct without one, for the SDK clients.
/// Connections are pooled and kept alive per client.
pub fn http_client(proxy: Option<&ProxySettings>) -> Result<SharedHttpClient, BadProxy> {
    let proxy_config = proxy_config(proxy)?;
    Ok(
        Builder::new().build_with_connector_fn(move |settings, components| {
            let mut connector = Connector::builder().proxy_config(proxy_config.clone());
            connector.set_connector_settings(settings.cloned());
            if let Some(components) = components {
                connector.set_sleep_impl(components.sleep_impl());
            }
            connector
                .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                .build()
        }),
    )
}

/// A connector with the same proxy and TLS settings, for requests the daemon signs and sends
/// itself (uploads, the sampling proxy's upstream calls); the caller bounds their time.
pub fn connector(proxy: Option<&ProxySettings>) -> Result<Connector, BadProxy> {
    Ok(Connector::builder()
        .proxy_config(proxy_config(proxy)?)
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::aws::test_env as env;

    #[test]
    fn the_flag_wins_then_https_proxy_in_either_case() {
        let from_env = env(&[
            ("HTTPS_PROXY", "http://env:3128"),
            ("https_proxy", "http://lower:3128"),
        ]);
        assert_eq!(
            proxy_settings(Some("http://flag:8080"), &from_env)
                .unwrap()
                .url,
            "http://flag:8080"
        );
        assert_eq!(
            proxy_settings(None, &from_env).unwrap().url,
            "http://env:3128"
        );
        assert_eq!(
            proxy_settings(None, &env(&[("https_proxy", "http://lower:3128")]))
                .unwrap()
                .url,
            "http://lower:3128"
        );
        assert_eq!(
            proxy_settings(None, &env(&[("HTTP_PROXY", "http://plain:3128")])),
            None,
            "X-Ray is HTTPS"
        );
        assert_eq!(proxy_settings(Some(""), &env(&[])), None);
    }

    #[test]
    fn no_proxy_is_honoured_and_metadata_is_always_direct() {
        let settings = proxy_settings(
            Some("http://p:1"),
            &env(&[("NO_PROXY", "localhost,.internal")]),
        )
        .unwrap();
        assert_eq!(
            settings.no_proxy,
            format!("localhost,.internal,{METADATA_HOSTS}")
        );
        let settings =
            proxy_settings(Some("http://p:1"), &env(&[("no_proxy", "10.0.0.0/8")])).unwrap();
        assert!(settings.no_proxy.starts_with("10.0.0.0/8,169.254.169.254"));
        assert_eq!(
            proxy_settings(Some("http://p:1"), &env(&[]))
                .unwrap()
                .no_proxy,
            METADATA_HOSTS
        );
    }

    #[test]
    fn a_bad_proxy_url_is_a_clear_error_without_credentials() {
        let settings = ProxySettings {
            url: "http://user:secret@bad host:1".into(),
            no_proxy: String::new(),
        };
        let error = http_client(Some(&settings)).unwrap_err().to_string();
        assert!(error.starts_with("Bad proxy URL: "), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }
}
