//! The provisioning API's client: a GNAP access token from the authorisation server (mutual
//! TLS with the huvudman's certificate), then the list and lookup endpoints, every request
//! through the results source's own [`crate::source::Client`] (trust, limiter, retries,
//! back-off, `429`/`x-ratelimit-reset`). A token is refreshed before the earlier of its
//! `expires_in` and its JWT's `exp`, and once more when the API answers `403` (5002: the token
//! was refused), without restarting the pass. Bodies are read to a bound and parsed here; no
//! body is logged, and errors name the request (kind, page) and the field, never a value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::model::Page;
use super::Kind;
use crate::source::{Client, Event, Request, SourceError};

/// How many times one request refreshes a refused token: the first refusal, and a token that
/// expired again while the request was retried.
const MAX_TOKEN_REFUSALS: u32 = 3;

/// The longest token lifetime believed: a longer `expires_in` is a server's mistake, and a
/// token kept that long outlives a revocation.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);

pub use crate::config::provisioning::KeyProof;

/// Why a request of a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Http(#[from] SourceError),
    #[error("{request}: {message}")]
    Body { request: String, message: String },
    #[error("{request}: the response is larger than max_response_bytes ({limit} bytes)")]
    TooLarge { request: String, limit: u64 },
    #[error("access token: {0}")]
    Token(String),
}

impl ApiError {
    /// Whether a later pass may succeed where this one failed (the daemon's back-off decides
    /// when): anything but a refusal retrying cannot fix.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Http(e) => match e {
                SourceError::GaveUp { .. }
                | SourceError::WaitTooLong { .. }
                | SourceError::Transport { .. }
                | SourceError::TooLarge { .. } => true,
                SourceError::Refused { .. }
                | SourceError::Redirected { .. }
                | SourceError::Config { .. } => false,
            },
            ApiError::Body { .. } | ApiError::TooLarge { .. } | ApiError::Token(_) => true,
        }
    }
}

/// What the client counts, for the pass row and metrics.
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub token_refreshes: AtomicU64,
    /// Responses by status class: 2xx, 4xx, 429, 5xx, and none (transport failures).
    pub by_status: [AtomicU64; 5],
}

/// The labels of [`Counters::by_status`], in order.
pub const STATUS_LABELS: [&str; 5] = ["2xx", "4xx", "429", "5xx", "none"];

fn status_slot(status: Option<u16>) -> usize {
    match status {
        Some(429) => 2,
        Some(200..=299) => 0,
        Some(400..=499) => 1,
        Some(_) => 3,
        None => 4,
    }
}

struct Token {
    value: SecretString,
    refresh_at: Instant,
}

pub struct Api {
    api: Client,
    auth: Client,
    proof: KeyProof,
    /// The API's base URL as configured: the `locations` the token is asked for.
    location: String,
    max_response_bytes: u64,
    token: tokio::sync::Mutex<Option<Token>>,
    pub counters: Counters,
}

impl Api {
    /// `api`'s base URL is the provisioning API's (…/provisioning/v1); `auth`'s the
    /// authorisation server's transaction endpoint.
    pub fn new(api: Client, auth: Client, proof: KeyProof, max_response_bytes: u64) -> Api {
        let location = api.url_base().as_str().trim_end_matches('/').to_owned();
        Api {
            api,
            auth,
            proof,
            location,
            max_response_bytes,
            token: tokio::sync::Mutex::new(None),
            counters: Counters::default(),
        }
    }

    pub fn name(&self) -> &str {
        self.api.name()
    }

    /// The API's base URL, for messages.
    pub fn base_url(&self) -> &str {
        &self.location
    }

    /// Requests per second at most.
    pub fn rate_limit(&self) -> u32 {
        self.api.rate_limit()
    }

    /// One page of a kind's list.
    ///
    /// # Errors
    /// The request failed, or its body is not a page of that kind.
    pub async fn list<T: DeserializeOwned>(
        &self,
        kind: Kind,
        page_token: Option<&str>,
        page: u64,
        limit: u32,
    ) -> Result<Page<T>, ApiError> {
        let mut url = self.api.join(kind.path());
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("limit", &limit.to_string());
            if let Some(t) = page_token {
                q.append_pair("pageToken", t);
            }
        }
        let label = format!("{} page {page}", kind.plural());
        let body = self.call(&label, reqwest::Method::GET, url, None).await?;
        let parsed: Page<T> = parse(&label, &body)?;
        if parsed.data.len() > limit as usize {
            return Err(ApiError::Body {
                request: label,
                message: format!(
                    "{} records on a page of at most {limit}: refused",
                    parsed.data.len()
                ),
            });
        }
        Ok(parsed)
    }

    /// The whole records of `ids` (lookup), in batches halved on `413` down to one id.
    ///
    /// # Errors
    /// A request failed, or a body is not an array of that kind.
    pub async fn lookup<T: DeserializeOwned>(
        &self,
        kind: Kind,
        ids: &[String],
        page: u64,
    ) -> Result<Vec<T>, ApiError> {
        let url = self.api.join(&format!("{}/lookup", kind.path()));
        let mut out = Vec::with_capacity(ids.len());
        let mut rest = ids;
        let mut batch = ids.len().max(1);
        while !rest.is_empty() {
            let take = batch.min(rest.len());
            let label = format!("{} lookup for page {page}", kind.plural());
            let body = serde_json::to_vec(&serde_json::json!({ "ids": &rest[..take] }))
                .unwrap_or_default();
            match self
                .call(&label, reqwest::Method::POST, url.clone(), Some(&body))
                .await
            {
                Ok(bytes) => {
                    let records: Vec<T> = parse(&label, &bytes)?;
                    if records.len() > take {
                        return Err(ApiError::Body {
                            request: label,
                            message: format!("{} records for {take} ids: refused", records.len()),
                        });
                    }
                    out.extend(records);
                    rest = &rest[take..];
                }
                Err(ApiError::Http(SourceError::TooLarge { .. })) if take > 1 => {
                    batch = take / 2;
                    tracing::info!(source = %self.name(), request = %label, batch, "the lookup was too large (413); halving the batch");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// A request with the current token; a `403` refreshes the token and tries once more.
    async fn call(
        &self,
        label: &str,
        method: reqwest::Method,
        url: reqwest::Url,
        json: Option<&[u8]>,
    ) -> Result<Vec<u8>, ApiError> {
        let mut refusals = 0;
        let mut stale: Option<SecretString> = None;
        loop {
            let (token, refresh_at) = self.bearer(stale.as_ref()).await?;
            let sent = self
                .api
                .send(
                    Request {
                        label: label.to_owned(),
                        method: method.clone(),
                        url: url.clone(),
                        json,
                        bearer: Some(&token),
                        explain: Some(explain),
                    },
                    |e| self.count(e),
                )
                .await;
            match sent {
                Ok(fetched) => return self.read(label, fetched.response).await,
                // 403 (LogEntry 5002) is the API's answer to a token it no longer accepts; 401
                // is what a gateway in front of it answers for the same.
                Err(SourceError::Refused {
                    status: 401 | 403, ..
                })
                    // Once for a refusal; again only when the token reached its refresh time
                    // while the request waited out retries (a 429 or 503 burst can outlast a
                    // short-lived token), never for a fresh token refused.
                    if refusals == 0
                        || (Instant::now() >= refresh_at && refusals < MAX_TOKEN_REFUSALS) =>
                {
                    tracing::info!(source = %self.name(), request = %label, "the API refused the token; refreshing it");
                    refusals += 1;
                    stale = Some(token);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn count(&self, e: Event) {
        match e {
            Event::Attempt { status, .. } => {
                self.counters.requests.fetch_add(1, Ordering::Relaxed);
                self.counters.by_status[status_slot(status)].fetch_add(1, Ordering::Relaxed);
            }
            Event::Retry { .. } => {}
        }
    }

    /// A body, to `max_response_bytes`.
    async fn read(&self, label: &str, response: reqwest::Response) -> Result<Vec<u8>, ApiError> {
        let limit = self.max_response_bytes;
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(ApiError::TooLarge {
                request: label.to_owned(),
                limit,
            });
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::Body {
                request: label.to_owned(),
                message: format!("the body broke off: {}", crate::error::chain(&e)),
            })?;
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(ApiError::TooLarge {
                    request: label.to_owned(),
                    limit,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The token to send and when it is due for refresh: the one held while it is fresh, else a
    /// new one. `stale` is a token the API refused: it is replaced whatever its age, unless a
    /// concurrent request has replaced it already (then that one is used: one refresh, not one
    /// per request in flight).
    async fn bearer(
        &self,
        stale: Option<&SecretString>,
    ) -> Result<(SecretString, Instant), ApiError> {
        let mut held = self.token.lock().await;
        if let Some(t) = held.as_ref() {
            let refused = stale.is_some_and(|s| s.expose_secret() == t.value.expose_secret());
            if !refused && Instant::now() < t.refresh_at {
                return Ok((t.value.clone(), t.refresh_at));
            }
        }
        let token = self.request_token().await?;
        let value = (token.value.clone(), token.refresh_at);
        *held = Some(token);
        self.counters
            .token_refreshes
            .fetch_add(1, Ordering::Relaxed);
        Ok(value)
    }

    async fn request_token(&self) -> Result<Token, ApiError> {
        let key = match &self.proof {
            KeyProof::EntityId(id) => serde_json::json!(id),
            KeyProof::Mtls { cert_sha256 } => {
                serde_json::json!({ "proof": "mtls", "cert#S256": cert_sha256 })
            }
        };
        let request = serde_json::json!({
            "access_token": [{
                "access": [{ "type": "provisioning-api", "locations": [&self.location] }],
                "flags": ["bearer"],
            }],
            "client": { "key": key },
        });
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let label = "access token request".to_owned();
        let fetched = self
            .auth
            .send(
                Request {
                    label: label.clone(),
                    method: reqwest::Method::POST,
                    url: self.auth.url_base().clone(),
                    json: Some(&body),
                    bearer: None,
                    explain: Some(explain),
                },
                |_| {},
            )
            .await
            .map_err(|e| ApiError::Token(e.to_string()))?;
        let bytes = self.read(&label, fetched.response).await?;
        let granted = grant(&bytes).map_err(ApiError::Token)?;
        let issued = Instant::now();
        let lifetime = token_lifetime(&granted, SystemTime::now());
        Ok(Token {
            value: granted.value,
            refresh_at: issued + lifetime,
        })
    }
}

/// What the authorisation server granted.
pub struct Granted {
    pub value: SecretString,
    pub expires_in: Option<u64>,
}

/// Reads a GNAP grant response: `access_token` as one object or an array of one.
pub fn grant(bytes: &[u8]) -> Result<Granted, String> {
    #[derive(Deserialize)]
    struct AccessToken {
        value: String,
        expires_in: Option<serde_json::Value>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(AccessToken),
        Many(Vec<AccessToken>),
    }
    #[derive(Deserialize)]
    struct Response {
        access_token: OneOrMany,
    }
    let response: Response = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "the authorisation server's answer has no access_token.value ({:?} at line {} \
             column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    let token = match response.access_token {
        OneOrMany::One(t) => t,
        OneOrMany::Many(v) => v
            .into_iter()
            .next()
            .ok_or("the authorisation server granted no access token")?,
    };
    if token.value.is_empty() || token.value.len() > 16 * 1024 {
        return Err("the access token is empty or longer than 16 KiB".into());
    }
    if !token.value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the access token is not printable ASCII".into());
    }
    Ok(Granted {
        value: SecretString::from(token.value),
        // A string or a float from a lax server is read as what it says.
        expires_in: token.expires_in.and_then(|v| match v {
            serde_json::Value::Number(n) => n.as_f64().map(|f| f.max(0.0) as u64),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }),
    })
}

/// How long a token is used: until a margin before the earlier of `expires_in` and the JWT's
/// own `exp` (which can be much shorter), never past [`MAX_TOKEN_LIFETIME`], and at least a
/// second (a token already expired by our clock is still tried once: the clocks may differ, and
/// a 403 refreshes it).
pub fn token_lifetime(granted: &Granted, now: SystemTime) -> Duration {
    let from_expires_in = granted.expires_in.map(Duration::from_secs);
    let from_exp = jwt_exp(granted.value.expose_secret()).map(|exp| {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Duration::from_secs(exp.saturating_sub(now))
    });
    let lifetime = [from_expires_in, from_exp]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(Duration::from_secs(300))
        .min(MAX_TOKEN_LIFETIME);
    // A tenth of the lifetime, at most a minute: a request sent at the edge must still arrive
    // with a valid token.
    let margin = (lifetime / 10).min(Duration::from_secs(60));
    lifetime.saturating_sub(margin).max(Duration::from_secs(1))
}

/// The `exp` claim of a JWT (seconds since the epoch), if the token is one. The signature is the
/// API's to check, not ours: this only tells when to refresh.
pub fn jwt_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    #[derive(Deserialize)]
    struct Claims {
        exp: Option<serde_json::Value>,
    }
    let claims: Claims = serde_json::from_slice(&bytes).ok()?;
    claims.exp?.as_f64().map(|f| f.max(0.0) as u64)
}

/// Parses a body as `T`; a failure names the request and where, never a value.
fn parse<T: DeserializeOwned>(label: &str, body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Body {
        request: label.to_owned(),
        message: format!(
            "the body is not what the API documents ({}) at line {} column {}",
            match e.classify() {
                serde_json::error::Category::Io => "unreadable",
                serde_json::error::Category::Syntax => "not JSON",
                serde_json::error::Category::Data => "a field is missing or of the wrong type",
                serde_json::error::Category::Eof => "cut short",
            },
            e.line(),
            e.column()
        ),
    })
}

/// The codes and messages of an error body (an array of `LogEntry`), for the log: `id`,
/// `messageType` and `message` only (parameter and attribute values may be personal data),
/// each bounded.
pub fn explain(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct LogEntry {
        id: Option<serde_json::Value>,
        message_type: Option<String>,
        message: Option<String>,
    }
    let entries: Vec<LogEntry> = serde_json::from_slice(body).ok()?;
    let clip = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).take(200).collect() };
    let said: Vec<String> = entries
        .iter()
        .take(5)
        .map(|e| {
            let id = match &e.id {
                Some(serde_json::Value::String(s)) => clip(s),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                _ => "?".into(),
            };
            format!(
                "{id} {}: {}",
                clip(e.message_type.as_deref().unwrap_or("")),
                clip(e.message.as_deref().unwrap_or(""))
            )
        })
        .collect();
    (!said.is_empty()).then(|| said.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(exp: u64) -> String {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.sig",
            b(r#"{"alg":"ES256"}"#),
            b(&format!(r#"{{"exp":{exp},"sub":"x"}}"#))
        )
    }

    #[test]
    fn a_token_is_refreshed_before_the_earlier_of_expires_in_and_exp() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let g = Granted {
            value: SecretString::from(jwt(1_000_120)),
            expires_in: Some(3600),
        };
        // exp is 120 s away: refresh 12 s before it.
        assert_eq!(token_lifetime(&g, now), Duration::from_secs(108));
        let g = Granted {
            value: SecretString::from("opaque".to_owned()),
            expires_in: Some(3600),
        };
        assert_eq!(token_lifetime(&g, now), Duration::from_secs(3540));
        let g = Granted {
            value: SecretString::from(jwt(999_000)),
            expires_in: None,
        };
        assert_eq!(token_lifetime(&g, now), Duration::from_secs(1));
    }

    #[test]
    fn grants_are_read_as_one_object_or_an_array() {
        let one = grant(br#"{"access_token":{"value":"abc","expires_in":60}}"#).expect("one");
        assert_eq!(one.value.expose_secret(), "abc");
        assert_eq!(one.expires_in, Some(60));
        let many = grant(br#"{"access_token":[{"value":"abc"}]}"#).expect("many");
        assert_eq!(many.expires_in, None);
        assert!(grant(br#"{"access_token":{"value":"a b"}}"#).is_err());
        assert!(grant(b"<html>").is_err());
    }

    #[test]
    fn refusals_are_explained_by_code_and_message_only() {
        let body = br#"[{"id":"5002","statusCode":403,"messageType":"Autentisering","message":"Ogiltig token","parameterValue":"200901272385","severityLevel":"Error","timeOfOccurance":"x"}]"#;
        let said = explain(body).expect("explained");
        assert_eq!(said, "5002 Autentisering: Ogiltig token");
        assert!(explain(b"not json").is_none());
    }

    #[test]
    fn parse_errors_name_no_values() {
        let e = parse::<Page<super::super::model::Duty>>(
            "duties page 1",
            br#"{"data":[{"id":"200901272385"}]}"#,
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(e.starts_with("duties page 1: "), "{e}");
        assert!(!e.contains("200901272385"), "{e}");
    }
}
