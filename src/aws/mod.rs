//! AWS settings: the region, the outbound HTTP client (proxy, and the `NoVerifySSL` transport
//! for X-Ray), the credentials (default chain, optionally an assumed role), the X-Ray endpoint,
//! the SDK configuration built from them, and the target of the X-Ray calls the daemon signs
//! itself (uploads, the sampling proxy).

pub mod credentials;
pub mod endpoint;
pub mod imds;
pub mod no_verify;
pub mod proxy;
pub mod region;
pub mod sign;
pub mod target;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_runtime_api::client::http::{SharedHttpClient, SharedHttpConnector};

pub use region::{resolve_region, NoRegion, RegionSource};

/// An AWS error with its whole source chain, as one line ("service error: ...: ..."), each
/// cause once.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
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

/// Reads an environment variable. Passed in rather than read globally, so tests (which share
/// one process environment) control what each daemon sees.
pub type Env<'a> = &'a (dyn Fn(&str) -> Option<String> + Sync);

/// An environment made of `pairs`, for tests.
#[cfg(test)]
pub(crate) fn test_env(
    pairs: &'static [(&'static str, &'static str)],
) -> impl Fn(&str) -> Option<String> + Sync {
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// The process environment, for production callers.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// What the SDK configuration is built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSettings {
    /// The resolved region.
    pub region: String,
    /// `-p`/`ProxyAddress`.
    pub proxy_address: Option<String>,
    /// `-r`/`RoleARN`: assume this role for every call.
    pub role_arn: Option<String>,
    /// `--role-external-id`.
    pub role_external_id: Option<String>,
    /// `--role-session-name` (default `xray-daemon`).
    pub role_session_name: String,
    /// `NoVerifySSL`: X-Ray calls (uploads, telemetry, the sampling proxy) skip certificate
    /// verification. STS and credential providers always verify, as in the Go daemon.
    pub no_verify_ssl: bool,
}

/// The AWS side of the daemon: the SDK configuration and the transport for X-Ray calls.
#[derive(Debug)]
pub struct AwsSetup {
    /// For the SDK clients (region, credentials, the verifying HTTP client).
    pub sdk_config: SdkConfig,
    /// The HTTP client X-Ray clients must use instead of `sdk_config`'s (with `NoVerifySSL`),
    /// or `None` when they use `sdk_config`'s.
    pub xray_http_client: Option<SharedHttpClient>,
    /// For the requests the daemon signs itself (uploads, the sampling proxy): the same proxy
    /// settings, and TLS verification as for the other X-Ray calls.
    pub connector: SharedHttpConnector,
}

/// Why the AWS side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// The outbound proxy cannot be used.
    #[error(transparent)]
    Proxy(#[from] proxy::BadProxy),
    /// The `NoVerifySSL` transport could not be built.
    #[error(transparent)]
    NoVerify(#[from] no_verify::NoVerifyError),
}

/// The SDK configuration for `settings`: the default credentials chain (environment,
/// profiles, SSO, web identity, container and instance credentials) through the daemon's HTTP
/// client, and with a role, credentials from `AssumeRole` on the regional STS endpoint.
pub async fn setup(settings: &AwsSettings, env: Env<'_>) -> Result<AwsSetup, AwsError> {
    let proxy = proxy::proxy_settings(settings.proxy_address.as_deref(), env);
    if let Some(proxy) = &proxy {
        tracing::debug!(
            "Using proxy address: {}",
            crate::config::redact_url(&proxy.url)
        );
    }
    let (xray_http_client, connector) = if settings.no_verify_ssl {
        tracing::warn!(
            "NoVerifySSL is set: TLS certificates of the X-Ray endpoint are not verified \
             (uploads, telemetry and the sampling proxy; STS and credential calls still verify)"
        );
        (
            Some(no_verify::http_client(proxy.as_ref())?),
            no_verify::connector(proxy.as_ref())?,
        )
    } else {
        (
            None,
            SharedHttpConnector::new(proxy::connector(proxy.as_ref())?),
        )
    };
    let base = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .http_client(proxy::http_client(proxy.as_ref())?)
        .load()
        .await;
    let provider = match &settings.role_arn {
        None => base.credentials_provider(),
        Some(role_arn) => {
            let mut role = aws_config::sts::AssumeRoleProvider::builder(role_arn)
                .session_name(&settings.role_session_name)
                .configure(&base);
            if let Some(external_id) = &settings.role_external_id {
                role = role.external_id(external_id);
            }
            tracing::info!(
                "Assuming role {role_arn} (session {})",
                settings.role_session_name
            );
            Some(SharedCredentialsProvider::new(role.build().await))
        }
    };
    // One cache in front of the chain (or the role) for every user of credentials: the SDK
    // clients, the sampling proxy and the status probe share each resolution, so a role is
    // assumed once per refresh rather than once per user.
    let sdk_config = match provider {
        Some(provider) => base
            .to_builder()
            .credentials_provider(SharedCredentialsProvider::new(
                credentials::CredentialsCache::new(provider),
            ))
            .build(),
        None => base,
    };
    Ok(AwsSetup {
        sdk_config,
        xray_http_client,
        connector,
    })
}

impl AwsSetup {
    /// The target of the X-Ray calls the daemon signs itself (uploads, the sampling proxy):
    /// `endpoint`, this configuration's region and cached credentials, and the X-Ray
    /// connector.
    pub fn xray_target(
        &self,
        endpoint: &str,
    ) -> Result<target::XrayTarget, target::InvalidEndpoint> {
        let region = self.sdk_config.region().map_or("", |r| r.as_ref());
        // Without a provider every signed call fails, with the reason, like an SDK client's.
        let credentials = self
            .sdk_config
            .credentials_provider()
            .unwrap_or_else(|| SharedCredentialsProvider::new(credentials::NoProvider));
        target::XrayTarget::new(endpoint, region, credentials, self.connector.clone())
    }
}

/// The regional X-Ray endpoint, with the partition's DNS suffix (the Go daemon's table; the
/// daemon resolves through the SDK's rules, [`endpoint::resolve`], which agree with it).
pub fn default_endpoint(region: &str) -> String {
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else if region.starts_with("us-isob-") {
        "sc2s.sgov.gov"
    } else if region.starts_with("us-iso-") {
        "c2s.ic.gov"
    } else {
        "amazonaws.com"
    };
    format!("https://xray.{region}.{suffix}")
}

/// Which link of the default credentials chain applies, judged from the environment in
/// the chain's order (never the credentials themselves).
pub fn credential_chain_link(var: impl Fn(&str) -> Option<String>) -> String {
    let set = |name: &str| var(name).is_some_and(|v| !v.is_empty());
    if set("AWS_ACCESS_KEY_ID") {
        "environment variables".into()
    } else if let Some(profile) = var("AWS_PROFILE").filter(|p| !p.is_empty()) {
        format!("shared config profile {profile}")
    } else if set("AWS_WEB_IDENTITY_TOKEN_FILE") && set("AWS_ROLE_ARN") {
        "web identity token (IRSA)".into()
    } else if set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        || set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    {
        "container credentials (ECS or EKS Pod Identity)".into()
    } else {
        "shared config default profile or instance metadata".into()
    }
}

/// Where credentials come from, and whether they can be resolved right now.
pub async fn credential_source(sdk_config: &SdkConfig) -> String {
    use aws_credential_types::provider::ProvideCredentials;
    let link = credential_chain_link(|name| std::env::var(name).ok());
    let Some(provider) = sdk_config.credentials_provider() else {
        return format!("{link}: no provider configured");
    };
    match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        provider.provide_credentials(),
    )
    .await
    {
        Ok(Ok(credentials)) => match credentials.expiry() {
            Some(expiry) => format!(
                "{link}: resolved, expires {}",
                humantime::format_rfc3339_seconds(expiry)
            ),
            None => format!("{link}: resolved"),
        },
        Ok(Err(error)) => format!("{link}: unavailable: {error}"),
        Err(_) => format!("{link}: unavailable: timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_chain_link_follows_the_chain_order() {
        let env = test_env;
        assert_eq!(
            credential_chain_link(env(&[("AWS_ACCESS_KEY_ID", "x")])),
            "environment variables"
        );
        assert_eq!(
            credential_chain_link(env(&[
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
                ("AWS_ROLE_ARN", "arn")
            ])),
            "web identity token (IRSA)"
        );
        assert_eq!(
            credential_chain_link(env(&[(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://169.254.170.23/v1"
            )])),
            "container credentials (ECS or EKS Pod Identity)"
        );
        assert_eq!(
            credential_chain_link(env(&[("AWS_PROFILE", "dev")])),
            "shared config profile dev"
        );
    }

    #[test]
    fn default_endpoints_follow_the_partition() {
        assert_eq!(
            default_endpoint("us-west-1"),
            "https://xray.us-west-1.amazonaws.com"
        );
        assert_eq!(
            default_endpoint("cn-north-1"),
            "https://xray.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            default_endpoint("us-gov-west-1"),
            "https://xray.us-gov-west-1.amazonaws.com"
        );
        assert_eq!(
            default_endpoint("us-iso-east-1"),
            "https://xray.us-iso-east-1.c2s.ic.gov"
        );
        assert_eq!(
            default_endpoint("us-isob-east-1"),
            "https://xray.us-isob-east-1.sc2s.sgov.gov"
        );
    }
}
