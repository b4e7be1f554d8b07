//! What to do with a response or a failed attempt: pure functions, tested without a network.
//!
//! After the public sector's published client rules (Skolverket's provisioning API): a `429` or
//! `503` is retried after the time the server names (`Retry-After` in seconds or as an HTTP date,
//! or `X-RateLimit-Reset`), other transient failures with capped exponential back-off and full
//! jitter, and what retrying cannot fix (`400`, `401`, `403`, `404`) fails at once with a message
//! that says what to check.

use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

/// What an attempt's status means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: read the body.
    Accept,
    /// Try again after at least this long (the server's word), or after a back-off if `None`.
    Retry {
        after: Option<Duration>,
        reason: RetryReason,
    },
    /// The window is too large for the server: split it.
    Split,
    /// Retrying will not help.
    Fail(&'static str),
}

/// Why an attempt is retried (a bounded metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryReason {
    RateLimited,
    Unavailable,
    ServerError,
    Transport,
    Timeout,
    Body,
}

impl RetryReason {
    pub const ALL: [RetryReason; 6] = [
        RetryReason::RateLimited,
        RetryReason::Unavailable,
        RetryReason::ServerError,
        RetryReason::Transport,
        RetryReason::Timeout,
        RetryReason::Body,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::RateLimited => "rate_limited",
            RetryReason::Unavailable => "unavailable",
            RetryReason::ServerError => "server_error",
            RetryReason::Transport => "transport",
            RetryReason::Timeout => "timeout",
            RetryReason::Body => "body",
        }
    }
}

/// Classifies a response status.
pub fn classify(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Accept,
        429 => Verdict::Retry {
            after: server_delay(headers, now),
            reason: RetryReason::RateLimited,
        },
        503 => Verdict::Retry {
            after: server_delay(headers, now),
            reason: RetryReason::Unavailable,
        },
        500 | 502 | 504 => Verdict::Retry {
            after: None,
            reason: RetryReason::ServerError,
        },
        413 => Verdict::Split,
        400 => Verdict::Fail(
            "the server refused the request as malformed: check the source URL (the client \
             appends /api/skolplattform/nationellaprov) and that the platform accepts from/tom \
             as yyyy-MM-ddTHH:mm",
        ),
        401 => Verdict::Fail(
            "the server did not accept our credentials: check the client certificate and key \
             (mutual TLS), or the user/password or token files, and that they are not expired",
        ),
        403 => Verdict::Fail(
            "the server knows us but refuses access: check that the certificate or account is \
             authorised for the nationellaprov API of this municipality",
        ),
        404 => Verdict::Fail(
            "the endpoint does not exist: check the source URL (the base URL of the platform, \
             without /api/skolplattform/nationellaprov)",
        ),
        _ => Verdict::Fail("unexpected HTTP status"),
    }
}

/// The delay the server asks for: `Retry-After` (seconds or HTTP date), else `X-RateLimit-Reset`
/// (seconds until the reset, or a Unix time when it is that large).
pub fn server_delay(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(v) = headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = httpdate::parse_http_date(v) {
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    let reset = headers
        .get("x-ratelimit-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)?;
    // Anything past year 2001 as seconds is an epoch time, not a delay.
    if reset > 1e9 {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(reset);
        Some(at.duration_since(now).unwrap_or(Duration::ZERO))
    } else {
        Some(Duration::from_secs_f64(reset))
    }
}

/// Full-jitter exponential back-off: uniform in `[0, min(cap, base · 2^attempt)]`, so that many
/// clients retrying at once spread out instead of arriving together.
pub fn backoff(attempt: u32, base: Duration, cap: Duration, rng: &mut impl Rng) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX));
    let ceiling = exp.min(cap);
    ceiling.mul_f64(rng.random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn statuses_are_classified_by_what_retrying_can_do() {
        let now = SystemTime::now();
        let h = HeaderMap::new();
        let code = |c: u16| classify(StatusCode::from_u16(c).expect("status"), &h, now);
        assert_eq!(code(200), Verdict::Accept);
        assert!(matches!(
            code(429),
            Verdict::Retry {
                reason: RetryReason::RateLimited,
                ..
            }
        ));
        assert!(matches!(
            code(503),
            Verdict::Retry {
                reason: RetryReason::Unavailable,
                ..
            }
        ));
        for c in [500, 502, 504] {
            assert!(matches!(
                code(c),
                Verdict::Retry {
                    reason: RetryReason::ServerError,
                    after: None
                }
            ));
        }
        assert_eq!(code(413), Verdict::Split);
        for c in [400, 401, 403, 404, 418] {
            assert!(matches!(code(c), Verdict::Fail(_)), "{c}");
        }
        let Verdict::Fail(why) = code(401) else {
            unreachable!()
        };
        assert!(why.contains("certificate"));
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date_and_rate_limit_reset_either_way() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            server_delay(&headers(&[("retry-after", "7")]), now),
            Some(Duration::from_secs(7))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            server_delay(&headers(&[("retry-after", &later)]), now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            server_delay(&headers(&[("retry-after", &past)]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            server_delay(&headers(&[("x-ratelimit-reset", "2")]), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            server_delay(&headers(&[("x-ratelimit-reset", "1700000005")]), now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            server_delay(&headers(&[("retry-after", "soon")]), now),
            None
        );
    }

    #[test]
    fn backoff_is_jittered_below_a_growing_capped_ceiling() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let base = Duration::from_millis(500);
        let cap = Duration::from_secs(30);
        for attempt in 0..40 {
            let ceiling = base.saturating_mul(1 << attempt.min(30)).min(cap);
            let d = backoff(attempt, base, cap, &mut rng);
            assert!(d <= ceiling, "{attempt}: {d:?} > {ceiling:?}");
        }
        let spread: Vec<_> = (0..20).map(|_| backoff(5, base, cap, &mut rng)).collect();
        assert!(
            spread.iter().any(|d| *d < Duration::from_secs(4))
                && spread.iter().any(|d| *d > Duration::from_secs(8))
        );
    }
}
