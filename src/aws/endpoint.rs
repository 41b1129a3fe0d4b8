//! Which X-Ray endpoint the daemon talks to: `Endpoint` when set, otherwise what the SDK's own
//! endpoint rules give for the region, the standard FIPS and dual-stack settings
//! (`AWS_USE_FIPS_ENDPOINT`, `AWS_USE_DUALSTACK_ENDPOINT`, profile `use_fips_endpoint` and
//! `use_dualstack_endpoint`) and a configured endpoint URL (`AWS_ENDPOINT_URL_XRAY`,
//! `AWS_ENDPOINT_URL`, profile `endpoint_url`). Uploads, the sampling proxy and telemetry all
//! use this one resolution, so they reach the same host (the Go daemon's proxy ignores FIPS
//! and dual-stack).

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

/// The endpoint URL configured for X-Ray outside the daemon's own options, read as the SDK
/// client reads it: `AWS_ENDPOINT_URL_XRAY` or the profile's `services` section, else
/// `AWS_ENDPOINT_URL` or the profile's `endpoint_url` (none with
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`).
pub fn configured_url(sdk_config: &SdkConfig) -> Option<String> {
    let key = aws_types::service_config::ServiceConfigKey::builder()
        .service_id("XRay")
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .ok()?;
    sdk_config
        .service_config()
        .and_then(|config| config.load_config(key))
        .or_else(|| sdk_config.endpoint_url().map(str::to_owned))
}

/// The X-Ray endpoint for `region` with `variants` and a configured `url`, by the SDK's
/// endpoint rules (which refuse FIPS or dual-stack together with a URL).
pub async fn resolve(
    region: &str,
    variants: EndpointVariants,
    url: Option<&str>,
) -> Result<String, EndpointError> {
    let failed = |reason: String| EndpointError {
        region: region.to_owned(),
        variants,
        reason,
    };
    let params = Params::builder()
        .region(region)
        .use_fips(variants.fips)
        .use_dual_stack(variants.dual_stack)
        .set_endpoint(url.map(str::to_owned))
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
                resolve("us-east-1", variants, None).await.unwrap(),
                expected,
                "{variants:?}"
            );
        }
        assert_eq!(
            resolve("us-gov-west-1", FIPS, None).await.unwrap(),
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
                resolve(region, NONE, None).await.unwrap(),
                super::super::default_endpoint(region),
                "{region}"
            );
        }
    }

    #[tokio::test]
    async fn an_unusable_region_is_an_error_naming_the_variants() {
        let error = resolve("not a region!", FIPS, None)
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

    #[tokio::test]
    async fn a_configured_url_is_the_endpoint_unless_a_variant_is_asked_for() {
        let url = Some("http://127.0.0.1:4000");
        assert_eq!(
            resolve("us-east-1", NONE, url).await.unwrap(),
            "http://127.0.0.1:4000"
        );
        let error = resolve("us-east-1", FIPS, url)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("(FIPS)"), "{error}");
    }

    #[test]
    fn the_configured_url_falls_back_to_the_global_one() {
        let config = SdkConfig::builder()
            .endpoint_url("http://127.0.0.1:5000")
            .build();
        assert_eq!(
            configured_url(&config).as_deref(),
            Some("http://127.0.0.1:5000")
        );
        assert_eq!(configured_url(&SdkConfig::builder().build()), None);
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
