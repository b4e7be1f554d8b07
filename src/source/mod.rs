//! The upstream client: one per configured source.
//!
//! reqwest with rustls; `User-Agent: nprov-sync/<version>`; gzip accepted; connect and total
//! timeouts. Politeness is the default: a GCRA limiter (governor) with burst 1 spaces *every*
//! request, retries included, so a server counting arrivals never sees more than
//! `rate_limit_per_second` in any one-second interval. What to do with a status is decided in
//! [`policy`]; this module only applies it. Credentials are [`secrecy`] types: they reach reqwest
//! and nothing else (no `Debug`, no log line, no error text carries them).
//!
//! HTTP-level failures are retried here. A body that breaks while it streams in is the sync
//! engine's to retry, because only a whole attempt (request, parse, apply) can be repeated.

pub mod policy;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use secrecy::{ExposeSecret, SecretBox, SecretString};

pub use policy::{RetryReason, Verdict};

use crate::metrics::SourceMetrics;
use crate::window::Window;

/// The path the client appends to a source's base URL.
pub const ENDPOINT_PATH: &str = "/api/skolplattform/nationellaprov";

/// Who we are, on every request.
pub const USER_AGENT: &str = concat!("nprov-sync/", env!("CARGO_PKG_VERSION"));

/// How a source authenticates. Any combination is allowed; mutual TLS is the platform's
/// documented method.
#[derive(Default)]
pub struct Auth {
    /// Client certificate chain and private key, PEM, for mutual TLS.
    pub identity_pem: Option<SecretBox<Vec<u8>>>,
    /// Extra trusted roots (PEM), for platforms behind a private CA.
    pub extra_roots_pem: Vec<Vec<u8>>,
    pub basic: Option<(String, SecretString)>,
    pub bearer: Option<SecretString>,
}

/// A source's HTTP settings.
pub struct SourceSettings {
    pub name: String,
    /// The platform's base URL; [`ENDPOINT_PATH`] is appended.
    pub base_url: String,
    pub rate_limit_per_second: NonZeroU32,
    pub connect_timeout: Duration,
    /// For a whole request, body included: a window whose response takes longer is split.
    pub request_timeout: Duration,
    /// Attempts per window request (the first one included).
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub auth: Auth,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {source_name}: {message}")]
    Config {
        source_name: String,
        message: String,
    },
    #[error("window {window}: HTTP {status}: {hint}")]
    Refused {
        window: String,
        status: u16,
        hint: &'static str,
    },
    #[error("window {window}: the server says the response is too large (HTTP 413)")]
    TooLarge { window: String },
    #[error("window {window}: HTTP {status} after {attempts} attempts")]
    GaveUp {
        window: String,
        status: u16,
        attempts: u32,
    },
    #[error("window {window}: {kind} after {attempts} attempts: {message}")]
    Transport {
        window: String,
        kind: &'static str,
        attempts: u32,
        /// reqwest's message and its causes (a refused handshake says why only there); it names
        /// the URL, which carries no credentials (they are refused in URLs and sent in headers
        /// or the TLS handshake).
        message: String,
        timed_out: bool,
    },
}

impl SourceError {
    /// Whether a smaller window might succeed (413, or a response that timed out).
    pub fn wants_split(&self) -> bool {
        matches!(
            self,
            SourceError::TooLarge { .. }
                | SourceError::Transport {
                    timed_out: true,
                    ..
                }
        )
    }

    /// The HTTP status, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            SourceError::Refused { status, .. } | SourceError::GaveUp { status, .. } => {
                Some(*status)
            }
            SourceError::TooLarge { .. } => Some(413),
            _ => None,
        }
    }
}

/// A 2xx response whose body is yet to be read.
pub struct Fetched {
    pub response: reqwest::Response,
    pub status: u16,
    /// Attempts it took, the successful one included.
    pub attempts: u32,
}

pub struct Client {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    limiter: Arc<DefaultDirectRateLimiter>,
    settings: SourceSettings,
    /// Where attempts and retries are counted; detached (never exported) unless the daemon
    /// hands in its own with [`Client::with_metrics`].
    metrics: SourceMetrics,
}

impl Client {
    /// Builds the client.
    ///
    /// # Errors
    /// A bad URL (or one with credentials in it), or unreadable certificates.
    pub fn new(settings: SourceSettings) -> Result<Client, SourceError> {
        let config = |message: String| SourceError::Config {
            source_name: settings.name.clone(),
            message,
        };
        let mut endpoint = reqwest::Url::parse(&settings.base_url)
            .map_err(|e| config(format!("url {:?}: {e}", settings.base_url)))?;
        if !endpoint.username().is_empty() || endpoint.password().is_some() {
            return Err(config(
                "url must not contain credentials: configure basic_user and password_file".into(),
            ));
        }
        let path = format!("{}{ENDPOINT_PATH}", endpoint.path().trim_end_matches('/'));
        endpoint.set_path(&path);
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(USER_AGENT)
            .gzip(true)
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout);
        for pem in &settings.auth.extra_roots_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| config(format!("extra CA certificates: {e}")))?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        if let Some(identity) = &settings.auth.identity_pem {
            let id = reqwest::Identity::from_pem(identity.expose_secret()).map_err(|e| {
                config(format!(
                    "client certificate and key (PEM, key in PKCS#8, RSA or SEC1 form): {e}"
                ))
            })?;
            builder = builder.identity(id);
        }
        let http = builder
            .build()
            .map_err(|e| config(format!("HTTP client: {e}")))?;
        // Spacing of 1/rate plus 5 %: arrivals jitter on the way, and a server counting them per
        // second must still never see more than the rate.
        let period =
            Duration::from_secs(1).mul_f64(1.05 / f64::from(settings.rate_limit_per_second.get()));
        let quota = Quota::with_period(period)
            .ok_or_else(|| config("rate_limit_per_second is too large".into()))?
            .allow_burst(NonZeroU32::MIN);
        Ok(Client {
            http,
            endpoint,
            limiter: Arc::new(RateLimiter::direct(quota)),
            metrics: SourceMetrics::detached(&settings.name),
            settings,
        })
    }

    /// Counts this client's requests (and the sync engine's windows of this source) in `metrics`.
    pub fn set_metrics(&mut self, metrics: SourceMetrics) {
        self.metrics = metrics;
    }

    /// The source's metric handles.
    pub fn metrics(&self) -> &SourceMetrics {
        &self.metrics
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The endpoint without a window, for messages.
    pub fn url_base(&self) -> &reqwest::Url {
        &self.endpoint
    }

    /// The URL a window is fetched from (no credentials are ever in it).
    pub fn url(&self, window: &Window) -> reqwest::Url {
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair("from", &window.from_param())
            .append_pair("tom", &window.tom_param());
        url
    }

    /// Requests a window until a 2xx arrives, retrying what the policy says may be retried.
    /// `on_retry` hears about every retry (for metrics and logs).
    ///
    /// # Errors
    /// A refusal that retrying cannot fix, a 413, or retries used up.
    pub async fn fetch(
        &self,
        window: &Window,
        mut on_retry: impl FnMut(RetryReason, Option<u16>),
    ) -> Result<Fetched, SourceError> {
        let url = self.url(window);
        let label = window.label();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.limiter.until_ready().await;
            let mut request = self.http.get(url.clone());
            if let Some((user, password)) = &self.settings.auth.basic {
                request = request.basic_auth(user, Some(password.expose_secret()));
            }
            if let Some(token) = &self.settings.auth.bearer {
                request = request.bearer_auth(token.expose_secret());
            }
            let sent = std::time::Instant::now();
            let result = request.send().await;
            self.metrics.http_attempt(
                result.as_ref().ok().map(|r| r.status().as_u16()),
                sent.elapsed(),
            );
            let (reason, delay, status) = match result {
                Ok(response) => {
                    let status = response.status();
                    match policy::classify(status, response.headers(), SystemTime::now()) {
                        Verdict::Accept => {
                            return Ok(Fetched {
                                response,
                                status: status.as_u16(),
                                attempts: attempt,
                            })
                        }
                        Verdict::Split => return Err(SourceError::TooLarge { window: label }),
                        Verdict::Fail(hint) => {
                            return Err(SourceError::Refused {
                                window: label,
                                status: status.as_u16(),
                                hint,
                            })
                        }
                        Verdict::Retry { after, reason } => {
                            if attempt >= self.settings.max_attempts {
                                return Err(SourceError::GaveUp {
                                    window: label,
                                    status: status.as_u16(),
                                    attempts: attempt,
                                });
                            }
                            (reason, after, Some(status.as_u16()))
                        }
                    }
                }
                Err(e) => {
                    let timed_out = e.is_timeout();
                    if attempt >= self.settings.max_attempts {
                        return Err(SourceError::Transport {
                            window: label,
                            kind: if timed_out {
                                "timed out"
                            } else {
                                "connection failed"
                            },
                            attempts: attempt,
                            message: with_causes(&e),
                            timed_out,
                        });
                    }
                    let reason = if timed_out {
                        RetryReason::Timeout
                    } else {
                        RetryReason::Transport
                    };
                    (reason, None, None)
                }
            };
            self.metrics.retry(reason);
            on_retry(reason, status);
            let wait = delay.unwrap_or_else(|| {
                policy::backoff(
                    attempt - 1,
                    self.settings.backoff_base,
                    self.settings.backoff_cap,
                    &mut rand::rng(),
                )
            });
            tracing::debug!(source = %self.settings.name, window = %label, reason = reason.as_str(), ?wait, "retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

/// An error's message followed by those of its causes: reqwest says "error sending request",
/// the reason (a refused client certificate, a connection reset) is further down the chain.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // hyper repeats its inner error in its own message; say each thing once.
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = c.source();
    }
    message
}
