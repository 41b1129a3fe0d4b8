//! Which region the daemon uses, in the Go daemon's order: `-n`/config/`XRAY_REGION`, then
//! `AWS_REGION`, then (unless in local mode) the ECS container metadata file and EC2 instance
//! metadata; in local mode the SDK's `AWS_DEFAULT_REGION` and profile instead.

use super::imds::Imds;
use super::Env;

/// Where the region came from, for the log and `/debug/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionSource {
    /// `-n`, `Region` in cfg.yaml or `XRAY_REGION`.
    Configured,
    /// `AWS_REGION`.
    Environment,
    /// The ECS container metadata file.
    EcsMetadata,
    /// EC2 instance metadata.
    InstanceMetadata,
    /// Local mode: `AWS_DEFAULT_REGION` or the shared config profile.
    SharedConfig,
}

impl RegionSource {
    /// A short description, as the Go daemon's debug lines say it.
    pub fn as_str(self) -> &'static str {
        match self {
            RegionSource::Configured => "commandline/config file",
            RegionSource::Environment => "environment variables",
            RegionSource::EcsMetadata => "ECS metadata file",
            RegionSource::InstanceMetadata => "ec2 metadata",
            RegionSource::SharedConfig => "local config",
        }
    }
}

/// No region could be found; the Go daemon's message.
#[derive(Debug, thiserror::Error)]
#[error("Cannot fetch region variable from config file, environment variables, ecs metadata, or ec2 metadata. Use local-mode to use the local config region.")]
pub struct NoRegion;

/// The first two steps: an explicit region (flag, config) wins over `AWS_REGION`.
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

/// The region in an ECS container metadata file: the fourth field of its `TaskARN`
/// (`arn:aws:ecs:<region>:...`). A file without one is an error, not a crash (the Go daemon
/// panics there).
pub fn region_from_ecs_metadata(contents: &str) -> Result<String, String> {
    let metadata: serde_json::Value = serde_json::from_str(contents)
        .map_err(|e| format!("Unable to read ECS metadata file contents: {e}"))?;
    let arn = metadata
        .get("TaskARN")
        .and_then(|v| v.as_str())
        .ok_or("Unable to read ECS metadata file contents: no TaskARN")?;
    arn.split(':')
        .nth(3)
        .filter(|region| !region.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            format!("Unable to read ECS metadata file contents: no region in TaskARN {arn}")
        })
}

/// Resolves the region; logs where it came from (debug) and each failed lookup (error).
pub async fn resolve_region(
    configured: Option<&str>,
    local_mode: bool,
    env: Env<'_>,
) -> Result<(String, RegionSource), NoRegion> {
    let found = if let Some(choice) = choose_region(configured, env("AWS_REGION").as_deref()) {
        Some(choice)
    } else if local_mode {
        shared_config_region()
            .await
            .map(|r| (r, RegionSource::SharedConfig))
    } else {
        match ecs_region(env) {
            Some(region) => Some((region, RegionSource::EcsMetadata)),
            None => instance_metadata_region(env)
                .await
                .map(|r| (r, RegionSource::InstanceMetadata)),
        }
    };
    let (region, source) = found.ok_or(NoRegion)?;
    tracing::debug!("Fetch region {region} from {}", source.as_str());
    Ok((region, source))
}

fn ecs_region(env: Env<'_>) -> Option<String> {
    let enabled =
        env("ECS_ENABLE_CONTAINER_METADATA").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !enabled {
        return None;
    }
    let path = env("ECS_CONTAINER_METADATA_FILE").unwrap_or_default();
    let contents = std::fs::read_to_string(&path)
        .map_err(|e| tracing::error!("Unable to open ECS metadata file: {e}"))
        .ok()?;
    region_from_ecs_metadata(&contents)
        .map_err(|message| tracing::error!("{message}"))
        .ok()
}

async fn instance_metadata_region(env: Env<'_>) -> Option<String> {
    let imds = Imds::from_env(env)?;
    imds.get("/latest/meta-data/placement/region")
        .await
        .map_err(|e| tracing::error!("Unable to fetch region from EC2 metadata: {e}"))
        .ok()
        .filter(|region| !region.is_empty())
}

async fn shared_config_region() -> Option<String> {
    let chain = aws_config::meta::region::RegionProviderChain::first_try(
        aws_config::environment::EnvironmentVariableRegionProvider::new(),
    )
    .or_else(aws_config::profile::ProfileFileRegionProvider::new());
    chain.region().await.map(|region| region.to_string())
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
    fn ecs_metadata_gives_the_region_of_the_task_arn_or_a_message() {
        let file =
            r#"{"Cluster":"c","TaskARN":"arn:aws:ecs:eu-central-1:123456789012:task/c/abc"}"#;
        assert_eq!(region_from_ecs_metadata(file).unwrap(), "eu-central-1");
        assert!(region_from_ecs_metadata(r#"{"Cluster":"c"}"#)
            .unwrap_err()
            .contains("no TaskARN"));
        assert!(region_from_ecs_metadata(r#"{"TaskARN":42}"#)
            .unwrap_err()
            .contains("no TaskARN"));
        assert!(region_from_ecs_metadata(r#"{"TaskARN":"bogus"}"#)
            .unwrap_err()
            .contains("no region"));
        assert!(region_from_ecs_metadata("{")
            .unwrap_err()
            .starts_with("Unable to read ECS metadata file contents"));
    }
}
