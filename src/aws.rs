//! AWS settings: which region the daemon uses (and where it came from), and the SDK
//! configuration (credentials chain) built for it.

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Where the region came from, for the startup log and `/debug/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionSource {
    /// `-n`, `Region` in cfg.yaml or `XRAY_REGION`.
    Configured,
    /// `AWS_REGION`.
    Environment,
    /// Local mode: `AWS_DEFAULT_REGION` or the shared config profile.
    SharedConfig,
}

impl RegionSource {
    /// A short description.
    pub fn as_str(self) -> &'static str {
        match self {
            RegionSource::Configured => "commandline/config file",
            RegionSource::Environment => "environment variables",
            RegionSource::SharedConfig => "local config",
        }
    }
}

/// No region could be found; the Go daemon's message.
#[derive(Debug, thiserror::Error)]
#[error("Cannot fetch region variable from config file, environment variables, ecs metadata, or ec2 metadata. Use local-mode to use the local config region.")]
pub struct NoRegion;

/// The first two steps of the Go daemon's order: an explicit region (flag, config) wins over
/// `AWS_REGION`.
pub fn choose_region(
    configured: Option<&str>,
    aws_region_env: Option<&str>,
) -> Option<(String, RegionSource)> {
    let non_empty = |s: &&str| !s.trim().is_empty();
    configured
        .filter(non_empty)
        .map(|r| (r.to_owned(), RegionSource::Configured))
        .or_else(|| {
            aws_region_env
                .filter(non_empty)
                .map(|r| (r.to_owned(), RegionSource::Environment))
        })
}

/// Resolves the region: configured, then `AWS_REGION`, then (local mode only) the SDK's
/// environment and profile chain without instance metadata.
pub async fn resolve_region(
    configured: Option<&str>,
    local_mode: bool,
) -> Result<(String, RegionSource), NoRegion> {
    if let Some(choice) = choose_region(configured, std::env::var("AWS_REGION").ok().as_deref()) {
        tracing::debug!("Fetch region {} from {}", choice.0, choice.1.as_str());
        return Ok(choice);
    }
    if local_mode {
        let chain = aws_config::meta::region::RegionProviderChain::first_try(
            aws_config::environment::EnvironmentVariableRegionProvider::new(),
        )
        .or_else(aws_config::profile::ProfileFileRegionProvider::new());
        if let Some(region) = chain.region().await {
            tracing::debug!("Fetched region {region} from config");
            return Ok((region.to_string(), RegionSource::SharedConfig));
        }
    }
    Err(NoRegion)
}

/// The SDK configuration for `region` with the default credentials chain (environment,
/// profiles, web identity, container and instance credentials).
pub async fn sdk_config(region: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .load()
        .await
}

/// The regional X-Ray endpoint, with the partition's DNS suffix (the Go daemon's table).
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
    fn configured_region_beats_the_environment() {
        assert_eq!(
            choose_region(Some("eu-west-1"), Some("us-east-1")),
            Some(("eu-west-1".into(), RegionSource::Configured))
        );
        assert_eq!(
            choose_region(None, Some("us-east-1")),
            Some(("us-east-1".into(), RegionSource::Environment))
        );
        assert_eq!(
            choose_region(Some(""), Some("us-east-1")),
            Some(("us-east-1".into(), RegionSource::Environment))
        );
        assert_eq!(choose_region(None, Some(" ")), None);
    }

    #[test]
    fn the_credential_chain_link_follows_the_chain_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
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
