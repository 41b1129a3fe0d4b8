//! Which X-Ray endpoint the daemon talks to: `Endpoint` when set, otherwise the one the SDK's
//! own endpoint rules give for the region and the standard FIPS and dual-stack settings
//! (`AWS_USE_FIPS_ENDPOINT`, `AWS_USE_DUALSTACK_ENDPOINT`, profile `use_fips_endpoint` and
//! `use_dualstack_endpoint`). Uploads and telemetry resolve through the SDK client itself; the
//! sampling proxy, which signs and sends its requests itself, uses this resolution, so both
//! reach the same host (the Go daemon's proxy ignores FIPS and dual-stack).

use aws_config::SdkConfig;
use aws_sdk_xray::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};

/// The SDK's FIPS and dual-stack endpoint settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointVariants {
    /// Use a FIPS endpoint.
    pub fips: bool,
    /// Use a dual-stack (IPv4 and IPv6) endpoint.
    pub dual_stack: bool,
}

impl EndpointVariants {
    /// The settings the SDK resolved into `sdk_config` (environment, then profile).
    pub fn of(sdk_config: &SdkConfig) -> Self {
        EndpointVariants {
            fips: sdk_config.use_fips().unwrap_or(false),
            dual_stack: sdk_config.use_dual_stack().unwrap_or(false),
        }
    }

    /// Whether any variant is asked for.
    pub fn any(self) -> bool {
        self.fips || self.dual_stack
    }

    /// `FIPS`, `dual-stack`, `FIPS, dual-stack` or empty, for logs.
    pub fn describe(self) -> &'static str {
        match (self.fips, self.dual_stack) {
            (true, true) => "FIPS, dual-stack",
            (true, false) => "FIPS",
            (false, true) => "dual-stack",
            (false, false) => "",
        }
    }
}

/// Why no X-Ray endpoint could be resolved.
#[derive(Debug, thiserror::Error)]
#[error("Unable to resolve the X-Ray endpoint for region {region}{}: {reason}", variants_suffix(*.variants))]
pub struct EndpointError {
    region: String,
    variants: EndpointVariants,
    reason: String,
}

fn variants_suffix(variants: EndpointVariants) -> String {
    if variants.any() {
        format!(" ({})", variants.describe())
    } else {
        String::new()
    }
}

/// The X-Ray endpoint for `region` with `variants`, by the SDK's endpoint rules (the same
/// rules the upload client applies to every request).
pub async fn resolve(region: &str, variants: EndpointVariants) -> Result<String, EndpointError> {
    let failed = |reason: String| EndpointError {
        region: region.to_owned(),
        variants,
        reason,
    };
    let params = Params::builder()
        .region(region)
        .use_fips(variants.fips)
        .use_dual_stack(variants.dual_stack)
        .build()
        .map_err(|e| failed(e.to_string()))?;
    DefaultResolver::new()
        .resolve_endpoint(&params)
        .await
        .map(|endpoint| endpoint.url().to_owned())
        .map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: EndpointVariants = EndpointVariants {
        fips: false,
        dual_stack: false,
    };
    const FIPS: EndpointVariants = EndpointVariants {
        fips: true,
        dual_stack: false,
    };
    const DUAL_STACK: EndpointVariants = EndpointVariants {
        fips: false,
        dual_stack: true,
    };
    const BOTH: EndpointVariants = EndpointVariants {
        fips: true,
        dual_stack: true,
    };

    #[tokio::test]
    async fn fips_and_dual_stack_give_the_sdk_hosts() {
        let cases = [
            (NONE, "https://xray.us-east-1.amazonaws.com"),
            (FIPS, "https://xray-fips.us-east-1.amazonaws.com"),
            (DUAL_STACK, "https://xray.us-east-1.api.aws"),
            (BOTH, "https://xray-fips.us-east-1.api.aws"),
        ];
        for (variants, expected) in cases {
            assert_eq!(
                resolve("us-east-1", variants).await.unwrap(),
                expected,
                "{variants:?}"
            );
        }
        assert_eq!(
            resolve("us-gov-west-1", FIPS).await.unwrap(),
            "https://xray-fips.us-gov-west-1.amazonaws.com"
        );
    }

    #[tokio::test]
    async fn without_variants_the_sdk_agrees_with_the_go_daemon_table() {
        for region in [
            "us-west-1",
            "eu-central-1",
            "cn-north-1",
            "us-gov-west-1",
            "us-iso-east-1",
            "us-isob-east-1",
        ] {
            assert_eq!(
                resolve(region, NONE).await.unwrap(),
                super::super::default_endpoint(region),
                "{region}"
            );
        }
    }

    #[tokio::test]
    async fn an_unusable_region_is_an_error_naming_the_variants() {
        let error = resolve("not a region!", FIPS)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(
                "Unable to resolve the X-Ray endpoint for region not a region! (FIPS): "
            ),
            "{error}"
        );
    }

    #[test]
    fn the_variants_come_from_the_sdk_config() {
        let config = SdkConfig::builder().use_fips(true).build();
        assert_eq!(EndpointVariants::of(&config), FIPS);
        let config = SdkConfig::builder().use_dual_stack(true).build();
        assert_eq!(EndpointVariants::of(&config), DUAL_STACK);
        assert_eq!(EndpointVariants::of(&SdkConfig::builder().build()), NONE);
        assert_eq!(BOTH.describe(), "FIPS, dual-stack");
    }
}
