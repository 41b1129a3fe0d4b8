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
pub fn choose_region(configured: Option<&str>, aws_region_env: Option<&str>) -> Option<(String, RegionSource)> {
    let non_empty = |s: &&str| !s.trim().is_empty();
    configured
        .filter(non_empty)
        .map(|r| (r.to_owned(), RegionSource::Configured))
        .or_else(|| aws_region_env.filter(non_empty).map(|r| (r.to_owned(), RegionSource::Environment)))
}

/// Resolves the region: configured, then `AWS_REGION`, then (local mode only) the SDK's
/// environment and profile chain without instance metadata.
pub async fn resolve_region(configured: Option<&str>, local_mode: bool) -> Result<(String, RegionSource), NoRegion> {
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
}
