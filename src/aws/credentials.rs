//! Credentials for calls the daemon signs itself (uploads, the sampling proxy): resolved through the
//! same provider as the SDK clients (the default chain or an assumed role), cached, and
//! refreshed ahead of expiry. Providers themselves do not cache; the SDK clients have their own
//! identity cache, which is not reachable from outside a client.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use tokio::sync::Mutex;

/// How long before expiry cached credentials are replaced (the SDK's default buffer).
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// How long one resolution may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A cached credentials provider.
#[derive(Debug)]
pub struct CredentialsCache {
    provider: SharedCredentialsProvider,
    cached: Mutex<Option<Credentials>>,
}

/// Why no credentials are available. The message comes from the provider chain and never
/// contains secrets.
#[derive(Debug, thiserror::Error)]
#[error("credentials unavailable: {0}")]
pub struct NoCredentials(String);

impl CredentialsCache {
    /// A cache in front of `provider`.
    pub fn new(provider: SharedCredentialsProvider) -> Self {
        CredentialsCache {
            provider,
            cached: Mutex::new(None),
        }
    }

    /// Current credentials, resolving them if none are cached or they expire soon. Concurrent
    /// callers share one resolution.
    pub async fn get(&self) -> Result<Credentials, NoCredentials> {
        let mut cached = self.cached.lock().await;
        if let Some(credentials) = cached
            .as_ref()
            .filter(|c| still_fresh(c.expiry(), SystemTime::now()))
        {
            return Ok(credentials.clone());
        }
        let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, self.provider.provide_credentials())
            .await
            .map_err(|_| NoCredentials("timed out resolving credentials".into()))?
            .map_err(|e| NoCredentials(crate::aws::error_chain(&e)))?;
        *cached = Some(resolved.clone());
        Ok(resolved)
    }
}

impl ProvideCredentials for CredentialsCache {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(async move {
            self.get().await.map_err(|e| {
                aws_credential_types::provider::error::CredentialsError::provider_error(e)
            })
        })
    }
}

/// The provider when the SDK configuration has none: every resolution fails, saying so.
#[derive(Debug)]
pub struct NoProvider;

impl ProvideCredentials for NoProvider {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            aws_credential_types::provider::error::CredentialsError::not_loaded(
                "no credentials provider is configured",
            ),
        ))
    }
}

/// Whether credentials expiring at `expiry` can still be used at `now`.
pub fn still_fresh(expiry: Option<SystemTime>, now: SystemTime) -> bool {
    expiry.is_none_or(|expiry| now + REFRESH_BEFORE_EXPIRY < expiry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[derive(Debug)]
    struct Counting {
        calls: Arc<AtomicUsize>,
        lifetime: Option<Duration>,
    }

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            let expiry = self.lifetime.map(|l| SystemTime::now() + l);
            aws_credential_types::provider::future::ProvideCredentials::ready(Ok(Credentials::new(
                format!("AKID{call}"),
                "secret",
                None,
                expiry,
                "test",
            )))
        }
    }

    fn cache(lifetime: Option<Duration>) -> (CredentialsCache, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let provider = Counting {
            calls: Arc::clone(&calls),
            lifetime,
        };
        (
            CredentialsCache::new(SharedCredentialsProvider::new(provider)),
            calls,
        )
    }

    #[tokio::test]
    async fn fresh_credentials_are_reused_and_expiring_ones_refreshed() {
        let (long_lived, calls) = cache(Some(Duration::from_secs(3600)));
        long_lived.get().await.unwrap();
        assert_eq!(long_lived.get().await.unwrap().access_key_id(), "AKID0");
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let (short_lived, calls) = cache(Some(Duration::from_secs(60)));
        short_lived.get().await.unwrap();
        assert_eq!(short_lived.get().await.unwrap().access_key_id(), "AKID1");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "within the refresh window: resolved again"
        );
    }

    #[test]
    fn freshness_uses_the_refresh_buffer() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(still_fresh(None, now));
        assert!(still_fresh(Some(now + Duration::from_secs(301)), now));
        assert!(!still_fresh(Some(now + Duration::from_secs(299)), now));
    }
}
