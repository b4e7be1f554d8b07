//! The upstream client: one per configured source.
//!
//! reqwest with rustls, trusting the operating system's store ([`trust`]) and a source's
//! `ca_file`; `User-Agent: nprov-sync/<version>`; gzip accepted; connect and total timeouts.
//! Politeness is the default: a GCRA limiter (governor) with burst 1 spaces *every* request,
//! retries included, so a server counting arrivals never sees more than `rate_limit_per_second`
//! in any one-second interval. What to do with a status is decided in
//! [`policy`]; this module only applies it. Credentials are [`secrecy`] types: they reach reqwest
//! and nothing else (no `Debug`, no log line, no error text carries them).
//!
//! HTTP-level failures are retried here. A body that breaks while it streams in is the sync
//! engine's to retry, because only a whole attempt (request, parse, apply) can be repeated.
//!
//! What the network may not do to us: make us wait longer than `max_retry_wait` for one retry
//! (the window fails instead, see [`policy`]); keep a body open without sending (`read_timeout`
//! between bytes, `request_timeout` in all); move us elsewhere (redirects are not followed unless
//! the source allows same-origin ones, and never to another scheme, host or port: a credential
//! must not travel to a host it was not made for, nor over plain http); or make us retry what
//! cannot succeed (a TLS handshake that either side refused fails at once).

pub mod policy;
pub mod trust;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use secrecy::{ExposeSecret, SecretBox, SecretString};

pub use policy::{RetryReason, Verdict};

use crate::window::Window;

/// The path the client appends to a source's base URL.
pub const ENDPOINT_PATH: &str = "/api/skolplattform/nationellaprov";

/// Who we are, on every request.
pub const USER_AGENT: &str = concat!("nprov-sync/", env!("CARGO_PKG_VERSION"));

/// How long a stalled connection is waited for, unless a source says otherwise: far longer than
/// a platform that streams its XML pauses, far shorter than `request_timeout`.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest `Retry-After` honoured, unless a source says otherwise: the public sector's
/// rules speak of seconds to a minute; past a few minutes the daemon's back-off (which other
/// sources do not wait for) is the better judge.
pub const DEFAULT_MAX_RETRY_WAIT: Duration = Duration::from_secs(300);

/// Same-origin redirects followed for one request at most, when they are followed at all: a
/// platform moving its endpoint needs one or two; a loop is stopped here.
pub const MAX_REDIRECTS: u32 = 5;

/// Which redirects the client follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Redirects {
    /// None: a 3xx fails the window with its `Location` named. The documented API never
    /// redirects, so one is a misconfiguration (or an attack) to look at, not to follow.
    #[default]
    Never,
    /// Those to the same scheme, host and port, up to [`MAX_REDIRECTS`]; any other is refused.
    SameOrigin,
}

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
    /// For each wait on the connection (for the headers, between chunks of the body): a body
    /// that stalls this long is a timeout, and its window is split, well before
    /// `request_timeout` would notice.
    pub read_timeout: Duration,
    /// The longest wait a `429`/`503` may ask for; a longer one fails the window at once.
    pub max_retry_wait: Duration,
    pub redirects: Redirects,
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
        /// The setting at fault (`url`, `client_key_file`, …), for a message that names it.
        setting: &'static str,
        message: String,
    },
    #[error("{request}: HTTP {status}: {hint}")]
    Refused {
        request: String,
        status: u16,
        hint: &'static str,
    },
    #[error("{request}: the server says the response is too large (HTTP 413)")]
    TooLarge { request: String },
    #[error(
        "{request}: HTTP {status}: the server asked us to wait {} ({header}), longer than \
         max_retry_wait ({}); the request is given up and the source tried again later",
        humanize(*asked), humanize(*max)
    )]
    WaitTooLong {
        request: String,
        status: u16,
        asked: Duration,
        max: Duration,
        header: String,
    },
    #[error(
        "{request}: HTTP {status} redirects to {}: not followed ({why})",
        location.as_deref().unwrap_or("nowhere (no Location header)")
    )]
    Redirected {
        request: String,
        status: u16,
        location: Option<String>,
        why: &'static str,
    },
    #[error("{request}: HTTP {status} after {}", counted(*attempts))]
    GaveUp {
        request: String,
        status: u16,
        attempts: u32,
    },
    #[error("{request}: {kind} after {}: {message}", counted(*attempts))]
    Transport {
        request: String,
        kind: TransportKind,
        attempts: u32,
        /// reqwest's message and its causes (a refused handshake says why only there); it names
        /// the URL, which carries no credentials (they are refused in URLs and sent in headers
        /// or the TLS handshake).
        message: String,
    },
}

/// How a request or its body failed below HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// No response in time, or a body that stalled (`read_timeout`) or took longer than
    /// `request_timeout`: a smaller window may succeed.
    TimedOut,
    /// A TLS handshake that either side refused: it will be refused again.
    TlsRefused,
    /// No connection, or one that broke before the headers: retried here up to `max_attempts`.
    ConnectionFailed,
    /// The body ended before the transport's framing said it would (a `Content-Length` not
    /// reached, a chunked or gzip stream cut): whatever the parser tripped on at the cut.
    BodyCut,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::TimedOut => "timed out",
            TransportKind::TlsRefused => "TLS handshake refused",
            TransportKind::ConnectionFailed => "connection failed",
            TransportKind::BodyCut => "body truncated",
        })
    }
}

impl SourceError {
    /// The HTTP status, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            SourceError::Refused { status, .. }
            | SourceError::GaveUp { status, .. }
            | SourceError::WaitTooLong { status, .. }
            | SourceError::Redirected { status, .. } => Some(*status),
            SourceError::TooLarge { .. } => Some(413),
            SourceError::Config { .. } | SourceError::Transport { .. } => None,
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

/// What a request did, as [`Client::fetch`] reports it to whoever keeps count (the sync engine
/// hands these to the source's metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// One HTTP attempt: its status (`None` when no response came) and the time to headers.
    Attempt {
        status: Option<u16>,
        elapsed: Duration,
    },
    /// A failed attempt about to be retried, and why.
    Retry {
        reason: RetryReason,
        status: Option<u16>,
    },
}

pub struct Client {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    limiter: Arc<DefaultDirectRateLimiter>,
    settings: SourceSettings,
}

impl Client {
    /// Builds the client.
    ///
    /// # Errors
    /// A bad URL (one with credentials in it, a scheme other than https or http, credentials over
    /// plain http to anything but loopback), or unreadable certificates; the error names the
    /// setting at fault.
    pub fn new(settings: SourceSettings) -> Result<Client, SourceError> {
        Client::with_path(settings, ENDPOINT_PATH)
    }

    /// Builds a client whose endpoint is the base URL with `path` appended (empty: the base URL
    /// itself, for a source with several endpoints, see [`Client::join`]).
    ///
    /// # Errors
    /// As [`Client::new`].
    pub fn with_path(settings: SourceSettings, path: &str) -> Result<Client, SourceError> {
        let config = |setting: &'static str, message: String| SourceError::Config {
            source_name: settings.name.clone(),
            setting,
            message,
        };
        let mut endpoint = reqwest::Url::parse(&settings.base_url)
            .map_err(|e| config("url", format!("url {:?}: {e}", settings.base_url)))?;
        if !endpoint.username().is_empty() || endpoint.password().is_some() {
            return Err(config(
                "url",
                "url must not contain credentials: configure basic_user and password_file".into(),
            ));
        }
        check_scheme(&endpoint, &settings.auth).map_err(|m| config("url", m))?;
        let path = format!("{}{path}", endpoint.path().trim_end_matches('/'));
        endpoint.set_path(&path);
        if endpoint.scheme() == "https" && settings.auth.extra_roots_pem.is_empty() {
            // An empty store would fail every handshake with "unknown issuer"; say why once.
            let roots = trust::system_roots();
            if roots.certificates == 0 {
                return Err(config(
                    "ca_file",
                    format!(
                        "no certificate authority to trust: {} holds no certificates{} and the \
                         source sets no ca_file; install the ca-certificates package (and the \
                         platform's CA with update-ca-certificates), or set ca_file",
                        roots.origin,
                        if roots.errors.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", roots.errors.join("; "))
                        }
                    ),
                ));
            }
        }
        // Trusted: the operating system's store (reqwest's native roots, see [`trust`]) and the
        // source's ca_file.
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(USER_AGENT)
            .gzip(true)
            // Redirects are followed (or not) in `fetch`, where the rate limit spaces each hop
            // and the origin is checked; reqwest's own policy would do neither.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            .timeout(settings.request_timeout);
        for pem in &settings.auth.extra_roots_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| config("ca_file", format!("extra CA certificates: {e}")))?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        if let Some(identity) = &settings.auth.identity_pem {
            let pem = identity.expose_secret();
            if is_encrypted_key(pem) {
                return Err(config(
                    "client_key_file",
                    "the private key is encrypted, which is not supported: a passphrase would \
                     have to sit beside the key with the same protection. Store the key \
                     unencrypted (openssl pkey -in key.pem -out key.plain.pem) where only the \
                     service can read it (mode 0600, or systemd's LoadCredential=)"
                        .into(),
                ));
            }
            let id = reqwest::Identity::from_pem(pem).map_err(|e| {
                config(
                    "client_key_file",
                    format!(
                        "client certificate and key (PEM, key in PKCS#8, RSA or SEC1 form): {}",
                        crate::error::chain(&e)
                    ),
                )
            })?;
            builder = builder.identity(id);
        }
        let http = builder.build().map_err(|e| {
            let setting = if settings.auth.identity_pem.is_some() {
                "client_certificate_file"
            } else if !settings.auth.extra_roots_pem.is_empty() {
                "ca_file"
            } else {
                "url"
            };
            config(setting, format!("HTTP client: {}", crate::error::chain(&e)))
        })?;
        // Spacing of 1/rate plus 5 %: arrivals jitter on the way, and a server counting them per
        // second must still never see more than the rate.
        let period =
            Duration::from_secs(1).mul_f64(1.05 / f64::from(settings.rate_limit_per_second.get()));
        let quota = Quota::with_period(period)
            .ok_or_else(|| {
                config(
                    "rate_limit_per_second",
                    "rate_limit_per_second is too large".into(),
                )
            })?
            .allow_burst(NonZeroU32::MIN);
        Ok(Client {
            http,
            endpoint,
            limiter: Arc::new(RateLimiter::direct(quota)),
            settings,
        })
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Requests per second at most.
    pub fn rate_limit(&self) -> u32 {
        self.settings.rate_limit_per_second.get()
    }

    /// The time a whole response may take.
    pub fn request_timeout(&self) -> Duration {
        self.settings.request_timeout
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

    /// Requests a window until a 2xx arrives, retrying what the policy says may be retried and
    /// following the redirects the source allows. `on_event` hears of every attempt and every
    /// retry, as they happen: the client keeps no counts of its own.
    ///
    /// # Errors
    /// A refusal that retrying cannot fix, a 413, a wait longer than `max_retry_wait`, a redirect
    /// not followed, or retries used up.
    pub async fn fetch(
        &self,
        window: &Window,
        on_event: impl FnMut(Event),
    ) -> Result<Fetched, SourceError> {
        self.send(
            Request {
                label: window_request(window),
                method: reqwest::Method::GET,
                url: self.url(window),
                json: None,
                bearer: None,
                explain: None,
            },
            on_event,
        )
        .await
    }

    /// The base URL joined with `path` (for a source whose endpoints are several).
    pub fn join(&self, path: &str) -> reqwest::Url {
        let mut url = self.endpoint.clone();
        let joined = format!("{}{path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    /// Sends one request until a 2xx arrives: the one loop of limiter, retries, back-off and
    /// redirects that every source kind's requests go through.
    ///
    /// # Errors
    /// As [`Client::fetch`].
    pub async fn send(
        &self,
        request: Request<'_>,
        mut on_event: impl FnMut(Event),
    ) -> Result<Fetched, SourceError> {
        let Request {
            label,
            method,
            mut url,
            json,
            bearer,
            explain,
        } = request;
        let mut attempt = 0u32;
        let mut hops = 0u32;
        loop {
            attempt += 1;
            self.limiter.until_ready().await;
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(body) = json {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_vec());
            }
            if let Some((user, password)) = &self.settings.auth.basic {
                request = request.basic_auth(user, Some(password.expose_secret()));
            }
            if let Some(token) = bearer.or(self.settings.auth.bearer.as_ref()) {
                request = request.bearer_auth(token.expose_secret());
            }
            let sent = std::time::Instant::now();
            let result = request.send().await;
            on_event(Event::Attempt {
                status: result.as_ref().ok().map(|r| r.status().as_u16()),
                elapsed: sent.elapsed(),
            });
            let (reason, delay, status) = match result {
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    let verdict = policy::classify(
                        status,
                        &headers,
                        SystemTime::now(),
                        self.settings.max_retry_wait,
                    );
                    match verdict {
                        Verdict::Accept => {
                            return Ok(Fetched {
                                response,
                                status: status.as_u16(),
                                attempts: attempt,
                            })
                        }
                        Verdict::Split => {
                            self.explain(response, &label, explain).await;
                            return Err(SourceError::TooLarge { request: label });
                        }
                        Verdict::Fail(hint) => {
                            self.explain(response, &label, explain).await;
                            return Err(SourceError::Refused {
                                request: label,
                                status: status.as_u16(),
                                hint,
                            });
                        }
                        Verdict::WaitTooLong { asked, max } => {
                            self.explain(response, &label, explain).await;
                            return Err(SourceError::WaitTooLong {
                                request: label,
                                status: status.as_u16(),
                                asked: asked.wait,
                                max,
                                header: asked.header,
                            });
                        }
                        Verdict::Redirect { location } => {
                            match self.redirect_target(&url, &headers, hops) {
                                Ok(next) => {
                                    hops += 1;
                                    // A hop is not a failed attempt: it does not use one up.
                                    attempt -= 1;
                                    tracing::debug!(source = %self.settings.name, request = %label, status = status.as_u16(), "following a same-origin redirect");
                                    url = next;
                                    continue;
                                }
                                Err(why) => {
                                    return Err(SourceError::Redirected {
                                        request: label,
                                        status: status.as_u16(),
                                        location,
                                        why,
                                    })
                                }
                            }
                        }
                        Verdict::Retry { after, reason } => {
                            self.explain(response, &label, explain).await;
                            if attempt >= self.settings.max_attempts {
                                return Err(SourceError::GaveUp {
                                    request: label,
                                    status: status.as_u16(),
                                    attempts: attempt,
                                });
                            }
                            (reason, after, Some(status.as_u16()))
                        }
                    }
                }
                Err(e) => {
                    let kind = if e.is_timeout() {
                        TransportKind::TimedOut
                    } else if is_tls_refusal(&e) {
                        TransportKind::TlsRefused
                    } else {
                        TransportKind::ConnectionFailed
                    };
                    let give_up = match kind {
                        TransportKind::TlsRefused => true,
                        TransportKind::TimedOut
                        | TransportKind::ConnectionFailed
                        | TransportKind::BodyCut => attempt >= self.settings.max_attempts,
                    };
                    if give_up {
                        return Err(SourceError::Transport {
                            request: label,
                            kind,
                            attempts: attempt,
                            message: crate::error::chain(&e),
                        });
                    }
                    let reason = match kind {
                        TransportKind::TimedOut => RetryReason::Timeout,
                        TransportKind::TlsRefused
                        | TransportKind::ConnectionFailed
                        | TransportKind::BodyCut => RetryReason::Transport,
                    };
                    (reason, None, None)
                }
            };
            on_event(Event::Retry { reason, status });
            let wait = delay.unwrap_or_else(|| {
                policy::backoff(
                    attempt - 1,
                    self.settings.backoff_base,
                    self.settings.backoff_cap,
                    &mut rand::rng(),
                )
            });
            if delay.is_some_and(policy::is_long_wait) {
                tracing::info!(source = %self.settings.name, request = %label, reason = reason.as_str(), wait = %humanize(wait), "the platform asked us to wait; waiting");
            } else {
                tracing::debug!(source = %self.settings.name, request = %label, reason = reason.as_str(), ?wait, "retrying");
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Logs what a refused response's body says, through the request's `explain` (bounded:
    /// at most [`MAX_EXPLAINED_BYTES`] are read, and `explain` returns codes and messages, never
    /// the body). Without `explain` the body is not read at all.
    async fn explain(&self, response: reqwest::Response, label: &str, explain: Option<Explain>) {
        use futures_util::StreamExt;
        let Some(explain) = explain else {
            return;
        };
        let status = response.status().as_u16();
        let mut stream = response.bytes_stream();
        let mut body = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            let room = MAX_EXPLAINED_BYTES - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= MAX_EXPLAINED_BYTES {
                break;
            }
        }
        if let Some(said) = explain(&body) {
            tracing::warn!(source = %self.settings.name, request = %label, status, said = %said, "the server refused a request");
        }
    }

    /// Where a redirect may take us, or why it may not.
    fn redirect_target(
        &self,
        from: &reqwest::Url,
        headers: &reqwest::header::HeaderMap,
        hops: u32,
    ) -> Result<reqwest::Url, &'static str> {
        if self.settings.redirects == Redirects::Never {
            return Err("redirects are not followed unless follow_redirects = \"same-origin\"");
        }
        if hops >= MAX_REDIRECTS {
            return Err("too many redirects in a row");
        }
        let next = headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| from.join(v).ok())
            .ok_or("the Location is not a URL")?;
        if next.origin() != self.endpoint.origin() {
            return Err("it leads to another scheme, host or port, which is never followed");
        }
        Ok(next)
    }
}

/// Reads a refusal's body for its codes and messages (never the body itself).
pub type Explain = fn(&[u8]) -> Option<String>;

/// One request as [`Client::send`] sends it.
pub struct Request<'a> {
    /// What the request is called in messages and logs ("window …", "persons page 3"): never a
    /// body, never personal data.
    pub label: String,
    pub method: reqwest::Method,
    pub url: reqwest::Url,
    /// A JSON body, sent again on every attempt.
    pub json: Option<&'a [u8]>,
    /// A token for this request, in place of the source's own `bearer`.
    pub bearer: Option<&'a SecretString>,
    /// Reads a refusal's body for its codes and messages, for the log; `None` reads no body.
    pub explain: Option<Explain>,
}

/// The most of a refused response's body that is read to explain it.
pub const MAX_EXPLAINED_BYTES: usize = 16 * 1024;

/// How a window's request is named in messages.
pub fn window_request(window: &Window) -> String {
    format!("window {}", window.label())
}

/// https always; plain http only without credentials, or to a loopback address (a platform
/// simulated, or reached through a local TLS-terminating tunnel).
fn check_scheme(url: &reqwest::Url, auth: &Auth) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let credentials =
                auth.basic.is_some() || auth.bearer.is_some() || auth.identity_pem.is_some();
            if credentials && !is_loopback(url) {
                Err(format!(
                    "credentials are only sent over https: {} is plain http to a host that is \
                     not loopback",
                    url.as_str()
                ))
            } else {
                Ok(())
            }
        }
        other => Err(format!(
            "the scheme {other:?} is not supported: use https:// (or http:// without credentials \
             or to a loopback address)"
        )),
    }
}

/// Whether a URL's host is this machine (`localhost`, 127.0.0.0/8, ::1).
pub fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    let host = host.to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// Whether a PEM bundle holds an encrypted private key (PKCS#8 or OpenSSL's legacy form).
fn is_encrypted_key(pem: &[u8]) -> bool {
    let has = |needle: &[u8]| memchr::memmem::find(pem, needle).is_some();
    has(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || has(b"Proc-Type: 4,ENCRYPTED")
}

/// Whether a request failed because a TLS handshake was refused (a certificate not trusted or
/// expired, our client certificate refused, no common protocol): that does not change in the
/// seconds between retries. A connection reset during a handshake is an I/O error, not this.
fn is_tls_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        // io::Error's `source()` skips the error it wraps, and wrappers nest (a server
        // certificate we do not trust arrives as io(Other, io(InvalidData, rustls))): look inside.
        cause = match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    false
}

/// "1 attempt", "3 attempts".
fn counted(attempts: u32) -> String {
    format!("{attempts} attempt{}", if attempts == 1 { "" } else { "s" })
}

/// A duration as people write it ("5m", "11574d 1h 46m 40s"); "forever" for one too long to
/// name.
fn humanize(d: Duration) -> String {
    if d == Duration::MAX {
        return "forever".into();
    }
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}
