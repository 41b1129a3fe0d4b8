//! The X-Ray transport for `NoVerifySSL`: HTTPS that does not verify the server's certificate
//! (the Go daemon's `InsecureSkipVerify`), through the same proxy settings as every other call.
//!
//! The SDK's connector has no hook for a custom certificate verifier, so this is a small
//! connector of our own: hyper-util's pooled client over hyper-rustls, with a rustls verifier
//! that accepts any certificate chain but still checks the handshake signatures with the
//! crypto provider (the session is bound to the key the server presented; only who holds that
//! key goes unchecked). Behind a proxy, HTTPS destinations go through a `CONNECT` tunnel and
//! plain HTTP ones are sent in absolute form, as the SDK's connector does; `NO_PROXY` and the
//! always-direct metadata hosts come from the same [`ProxySettings`].
//!
//! Only X-Ray calls use it (uploads, telemetry, the sampling proxy's upstream). STS and the
//! credential providers keep the verifying client, as in the Go daemon.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::retries::ErrorKind;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use http::uri::Scheme;
use http::{header, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector as TcpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tower_service::Service;

use super::proxy::{BadProxy, ProxySettings};

/// How long an idle pooled connection is kept (the Go daemon's `IdleConnTimeout`).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why the transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NoVerifyError {
    /// The proxy URL is unusable.
    #[error(transparent)]
    Proxy(#[from] BadProxy),
    /// rustls refused the TLS configuration.
    #[error("Unable to configure TLS for NoVerifySSL: {0}")]
    Tls(#[from] rustls::Error),
}

/// An SDK HTTP client that skips certificate verification, through `proxy` (or direct).
/// Connections are pooled and kept alive; one pool per distinct connect timeout the SDK asks
/// for, so every request of a client shares it.
pub fn http_client(proxy: Option<&ProxySettings>) -> Result<SharedHttpClient, NoVerifyError> {
    Ok(SharedHttpClient::new(NoVerifyClient {
        transport: Transport::new(proxy)?,
        connectors: Arc::default(),
    }))
}

/// A connector that skips certificate verification, for requests the daemon sends itself
/// (the sampling proxy's upstream calls); the caller bounds their time.
pub fn connector(proxy: Option<&ProxySettings>) -> Result<SharedHttpConnector, NoVerifyError> {
    Ok(SharedHttpConnector::new(
        Transport::new(proxy)?.connector(None),
    ))
}

/// What every connector of a client shares: the TLS configuration and the proxy rules.
#[derive(Clone)]
struct Transport {
    tls: Arc<rustls::ClientConfig>,
    proxy: Option<Arc<Matcher>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The matcher holds the proxy URL, which may carry credentials.
        f.debug_struct("Transport")
            .field("proxied", &self.proxy.is_some())
            .finish()
    }
}

impl Transport {
    fn new(proxy: Option<&ProxySettings>) -> Result<Transport, NoVerifyError> {
        Ok(Transport {
            tls: Arc::new(tls_config()?),
            proxy: proxy.map(proxy_matcher).transpose()?.map(Arc::new),
        })
    }

    fn connector(&self, connect_timeout: Option<Duration>) -> NoVerifyConnector {
        let mut tcp = TcpConnector::new();
        // The TLS layer above decides per scheme; the TCP connector must accept https URIs.
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let direct = HttpsConnector::from((tcp, Arc::clone(&self.tls)));
        let connect = Connect {
            direct,
            tls: Arc::clone(&self.tls),
            proxy: self.proxy.clone(),
            connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connect);
        NoVerifyConnector {
            client,
            proxy: self.proxy.clone(),
        }
    }
}

/// The proxy rules for `settings`, after the same URL check as the SDK's connector (a URL it
/// cannot use must fail here too, not silently mean "direct").
fn proxy_matcher(settings: &ProxySettings) -> Result<Matcher, BadProxy> {
    super::proxy::check_proxy_url(settings)?;
    Ok(Matcher::builder()
        .all(settings.url.clone())
        .no(settings.no_proxy.clone())
        .build())
}

/// rustls with the aws-lc provider (as the SDK's client) and a verifier that accepts any chain.
fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
            .with_no_client_auth(),
    )
}

/// Accepts whatever certificate chain and name the server presents, but still requires the
/// handshake to be signed by the presented certificate's key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The SDK clients' connector caches: one connector (and pool) per connect timeout.
#[derive(Debug)]
struct NoVerifyClient {
    transport: Transport,
    connectors: Arc<Mutex<HashMap<Option<Duration>, SharedHttpConnector>>>,
}

impl HttpClient for NoVerifyClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let timeout = settings.connect_timeout();
        self.connectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(timeout)
            .or_insert_with(|| SharedHttpConnector::new(self.transport.connector(timeout)))
            .clone()
    }
}

/// One pooled hyper client, as an SDK connector.
#[derive(Clone)]
struct NoVerifyConnector {
    client: Client<Connect, SdkBody>,
    proxy: Option<Arc<Matcher>>,
}

impl std::fmt::Debug for NoVerifyConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoVerifyConnector")
            .field("proxied", &self.proxy.is_some())
            .finish()
    }
}

impl HttpConnector for NoVerifyConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let mut request = match request.try_into_http1x() {
            Ok(request) => request,
            Err(error) => {
                return HttpConnectorFuture::ready(Err(ConnectorError::user(error.into())))
            }
        };
        // Plain HTTP through a proxy goes to the proxy in absolute form, so its credentials
        // travel as a header (HTTPS ones are sent in the CONNECT request instead).
        if request.uri().scheme() == Some(&Scheme::HTTP) {
            let auth = self
                .proxy
                .as_ref()
                .and_then(|proxy| proxy.intercept(request.uri()))
                .and_then(|intercept| intercept.basic_auth().cloned());
            if let Some(auth) = auth {
                request
                    .headers_mut()
                    .entry(header::PROXY_AUTHORIZATION)
                    .or_insert(auth);
            }
        }
        let response = self.client.request(request);
        HttpConnectorFuture::new(async move {
            match response.await {
                Ok(response) => HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                    .map_err(|error| ConnectorError::other(error.into(), None)),
                Err(error) => Err(connector_error(error)),
            }
        })
    }
}

/// Classifies a failed request the way the SDK's connector does, so the upload loop's retry
/// decision and the `connection`/`timeout` outcomes are the same on either transport.
fn connector_error(error: hyper_util::client::legacy::Error) -> ConnectorError {
    let connect = error.is_connect();
    let error: BoxError = error.into();
    let chain = || error_chain(error.as_ref());
    let timed_out = chain().any(|e| {
        e.is::<ConnectTimedOut>()
            || e.downcast_ref::<hyper::Error>()
                .is_some_and(|h| h.is_timeout())
    });
    if timed_out {
        return ConnectorError::timeout(error);
    }
    let incomplete = chain().any(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
    });
    if incomplete {
        return ConnectorError::other(error, Some(ErrorKind::TransientError));
    }
    let broken = chain().any(|e| {
        e.is::<std::io::Error>()
            || e.downcast_ref::<hyper::Error>()
                .is_some_and(|h| h.is_closed() || h.is_canceled())
    });
    if connect || broken {
        ConnectorError::io(error)
    } else {
        ConnectorError::other(error, None)
    }
}

/// `error` and its causes, including each `io::Error`'s payload (whose own `source` skips it).
fn error_chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&error| {
        match error.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => error.source(),
        }
    })
}

/// The connection (TCP, proxy tunnel, TLS handshake) took longer than the SDK's connect timeout.
#[derive(Debug, thiserror::Error)]
#[error("connection not established within {0:?}")]
struct ConnectTimedOut(Duration);

/// Opens connections: direct, tunnelled through the proxy (HTTPS), or to the proxy (HTTP).
#[derive(Clone)]
struct Connect {
    direct: HttpsConnector<TcpConnector>,
    tls: Arc<rustls::ClientConfig>,
    proxy: Option<Arc<Matcher>>,
    connect_timeout: Option<Duration>,
}

type Connecting = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

impl Service<Uri> for Connect {
    type Response = Stream;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Every connection gets fresh clones of the inner connectors, which are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        let intercept = self
            .proxy
            .as_ref()
            .and_then(|proxy| proxy.intercept(&destination));
        let connecting: Connecting = match intercept {
            None => {
                let mut direct = self.direct.clone();
                Box::pin(async move { Ok(Stream::new(direct.call(destination).await?, false)) })
            }
            Some(intercept) if destination.scheme() == Some(&Scheme::HTTPS) => {
                let mut tunnel = Tunnel::new(intercept.uri().clone(), self.direct.clone());
                if let Some(auth) = intercept.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let mut https = HttpsConnector::from((tunnel, Arc::clone(&self.tls)));
                Box::pin(async move { Ok(Stream::new(https.call(destination).await?, false)) })
            }
            Some(intercept) => {
                let mut direct = self.direct.clone();
                let proxy = intercept.uri().clone();
                Box::pin(async move { Ok(Stream::new(direct.call(proxy).await?, true)) })
            }
        };
        match self.connect_timeout {
            None => connecting,
            Some(limit) => Box::pin(async move {
                tokio::time::timeout(limit, connecting)
                    .await
                    .map_err(|_| BoxError::from(ConnectTimedOut(limit)))?
            }),
        }
    }
}

/// What the pooled client needs of a connection.
trait Io: Read + Write + Connection + Send + Unpin + 'static {}

impl<T: Read + Write + Connection + Send + Unpin + 'static> Io for T {}

/// An established connection; `to_proxy` marks one to a forward proxy, so the client sends
/// absolute-form request targets on it.
struct Stream {
    io: Box<dyn Io>,
    to_proxy: bool,
}

impl Stream {
    fn new(io: impl Io, to_proxy: bool) -> Stream {
        Stream {
            io: Box::new(io),
            to_proxy,
        }
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        let connected = self.io.connected();
        if self.to_proxy {
            connected.proxy(true)
        } else {
            connected
        }
    }
}

impl Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str, no_proxy: &str) -> ProxySettings {
        ProxySettings {
            url: url.into(),
            no_proxy: no_proxy.into(),
        }
    }

    #[test]
    fn the_proxy_rules_match_the_sdk_connector() {
        let proxy = super::super::proxy::proxy_settings(Some("http://proxy:3128"), &|name| {
            (name == "NO_PROXY").then(|| "internal.example".to_owned())
        })
        .unwrap();
        let matcher = proxy_matcher(&proxy).unwrap();
        let intercepted = |uri: &str| {
            matcher
                .intercept(&uri.parse().unwrap())
                .map(|i| i.uri().to_string())
        };
        assert_eq!(
            intercepted("https://xray.us-east-1.amazonaws.com/TraceSegments").as_deref(),
            Some("http://proxy:3128/")
        );
        assert_eq!(intercepted("http://xray.internal.example/"), None);
        assert_eq!(intercepted("http://169.254.169.254/latest"), None);
        assert_eq!(intercepted("http://169.254.170.23/v1/credentials"), None);
    }

    #[test]
    fn an_unusable_proxy_url_is_refused_not_ignored() {
        let error = http_client(Some(&settings("http://user:secret@bad host:1", "")))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("Bad proxy URL: "), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn the_verifier_accepts_any_chain_but_offers_only_real_signature_schemes() {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = AcceptAnyCertificate {
            provider: Arc::clone(&provider),
        };
        let garbage = CertificateDer::from(vec![1, 2, 3]);
        assert!(verifier
            .verify_server_cert(
                &garbage,
                &[],
                &ServerName::try_from("xray.us-east-1.amazonaws.com").unwrap(),
                &[],
                UnixTime::now(),
            )
            .is_ok());
        let schemes = verifier.supported_verify_schemes();
        assert!(schemes.contains(&SignatureScheme::ECDSA_NISTP256_SHA256));
        assert!(schemes.contains(&SignatureScheme::RSA_PSS_SHA256));
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_io_failure_and_a_slow_one_a_timeout() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let connector = Transport::new(None).unwrap().connector(None);
        let request = |uri: String| {
            HttpRequest::try_from(
                http::Request::builder()
                    .uri(uri)
                    .body(SdkBody::empty())
                    .unwrap(),
            )
            .unwrap()
        };
        let error = connector
            .call(request(format!("https://{closed}/")))
            .await
            .unwrap_err();
        assert!(error.is_io(), "{error:?}");

        // A listener that accepts but never completes a TLS handshake.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        let connector = Transport::new(None)
            .unwrap()
            .connector(Some(Duration::from_millis(200)));
        let error = connector
            .call(request(format!("https://{addr}/")))
            .await
            .unwrap_err();
        assert!(error.is_timeout(), "{error:?}");
    }
}
