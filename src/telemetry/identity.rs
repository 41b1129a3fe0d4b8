//! Who the telemetry is about: `EC2InstanceId` and `Hostname` from `AWS_INSTANCE_ID` and
//! `AWS_HOSTNAME`, else from instance metadata (never in local mode), and `ResourceARN`.

use crate::aws::imds::Imds;
use crate::aws::Env;

/// Overrides the instance id (the Go daemon's name).
pub const INSTANCE_ID_VAR: &str = "AWS_INSTANCE_ID";

/// Overrides the hostname (the Go daemon's name).
pub const HOSTNAME_VAR: &str = "AWS_HOSTNAME";

const INSTANCE_ID_PATH: &str = "/latest/meta-data/instance-id";
const HOSTNAME_PATH: &str = "/latest/meta-data/hostname";

/// The request-level fields of every `PutTelemetryRecords` call; empty when unknown, as the
/// Go daemon sends them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetryIdentity {
    /// `EC2InstanceId`.
    pub ec2_instance_id: String,
    /// `Hostname`.
    pub hostname: String,
    /// `ResourceARN` (`-a`).
    pub resource_arn: String,
}

/// Which fields the environment settles, and whether instance metadata may fill the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    instance_id: Option<String>,
    hostname: Option<String>,
    query_imds: bool,
}

fn plan(local_mode: bool, env: Env<'_>) -> Plan {
    let set = |name: &str| env(name).filter(|value| !value.is_empty());
    let instance_id = set(INSTANCE_ID_VAR);
    let hostname = set(HOSTNAME_VAR);
    let query_imds = !local_mode && (instance_id.is_none() || hostname.is_none());
    Plan {
        instance_id,
        hostname,
        query_imds,
    }
}

/// Resolves the identity once, at start. `env` reads environment variables (tests pass
/// their own); instance metadata is reached as for the region lookup
/// (`AWS_EC2_METADATA_SERVICE_ENDPOINT`, `AWS_EC2_METADATA_DISABLED`, IMDSv1 fallback, 1 s
/// per request). Metadata failures are logged at debug: off EC2 they are expected, and the
/// Go daemon's `[Error] Get instance id metadata failed` there is a known nuisance.
pub async fn resolve_identity(
    local_mode: bool,
    resource_arn: Option<&str>,
    env: Env<'_>,
) -> TelemetryIdentity {
    let plan = plan(local_mode, env);
    if let Some(arn) = resource_arn.filter(|arn| !arn.is_empty()) {
        tracing::debug!("ARN of the AWS resource running the daemon: {arn}");
    }
    if let Some(id) = &plan.instance_id {
        tracing::debug!("Fetch instance id {id} from environment variables");
    }
    if let Some(hostname) = &plan.hostname {
        tracing::debug!("Fetch hostname {hostname} from environment variables");
    }
    let (mut instance_id, mut hostname) = (plan.instance_id, plan.hostname);
    if plan.query_imds {
        match Imds::from_env(env) {
            Some(imds) => {
                let (fetched_id, fetched_host) = tokio::join!(
                    fetch(
                        &imds,
                        instance_id.is_none(),
                        INSTANCE_ID_PATH,
                        "instance id"
                    ),
                    fetch(&imds, hostname.is_none(), HOSTNAME_PATH, "hostname"),
                );
                instance_id = instance_id.or(fetched_id);
                hostname = hostname.or(fetched_host);
            }
            None => tracing::debug!("Instance metadata is disabled (AWS_EC2_METADATA_DISABLED)"),
        }
    }
    match &hostname {
        Some(hostname) => tracing::debug!("Using {hostname} hostname for telemetry records"),
        None => tracing::debug!("No hostname set for telemetry records"),
    }
    match &instance_id {
        Some(id) => tracing::debug!("Using {id} Instance Id for telemetry records"),
        None => tracing::debug!("No Instance Id set for telemetry records"),
    }
    TelemetryIdentity {
        ec2_instance_id: instance_id.unwrap_or_default(),
        hostname: hostname.unwrap_or_default(),
        resource_arn: resource_arn.unwrap_or_default().to_owned(),
    }
}

async fn fetch(imds: &Imds, wanted: bool, path: &str, what: &str) -> Option<String> {
    if !wanted {
        return None;
    }
    match imds.get(path).await {
        Ok(value) => Some(value).filter(|v| !v.is_empty()),
        Err(error) => {
            tracing::debug!("Get {what} metadata failed: {error}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    use crate::aws::test_env as env;

    #[test]
    fn environment_overrides_skip_instance_metadata() {
        let both = env(&[(INSTANCE_ID_VAR, "i-0abc"), (HOSTNAME_VAR, "host-a")]);
        assert_eq!(
            plan(false, &both),
            Plan {
                instance_id: Some("i-0abc".into()),
                hostname: Some("host-a".into()),
                query_imds: false,
            }
        );
        let only_host = env(&[(HOSTNAME_VAR, "host-a"), (INSTANCE_ID_VAR, "")]);
        let p = plan(false, &only_host);
        assert_eq!((p.instance_id, p.query_imds), (None, true));
    }

    #[test]
    fn local_mode_never_queries_instance_metadata() {
        assert!(!plan(true, &env(&[])).query_imds);
        assert!(plan(false, &env(&[])).query_imds);
    }

    #[tokio::test]
    async fn local_mode_identity_comes_from_the_environment_and_flags_only() {
        // Unroutable: a metadata query would wait for its timeout, past the 500 ms here.
        let identity = tokio::time::timeout(
            Duration::from_millis(500),
            resolve_identity(
                true,
                Some("arn:aws:ec2:us-east-1:123456789012:instance/i-0abc"),
                &env(&[
                    (HOSTNAME_VAR, "host-a"),
                    ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://192.0.2.1:1"),
                ]),
            ),
        )
        .await
        .expect("local mode does not query instance metadata");
        assert_eq!(
            identity,
            TelemetryIdentity {
                ec2_instance_id: String::new(),
                hostname: "host-a".into(),
                resource_arn: "arn:aws:ec2:us-east-1:123456789012:instance/i-0abc".into(),
            }
        );
    }
}
