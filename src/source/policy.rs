//! What to do with a response or a failed attempt: pure functions, tested without a network.
//!
//! After the public sector's published client rules (Skolverket's provisioning API): a `429` or
//! `503` is retried after the time the server names (`Retry-After` in seconds or as an HTTP date,
//! or `X-RateLimit-Reset`), other transient failures with capped exponential back-off and full
//! jitter, and what retrying cannot fix (`400`, `401`, `403`, `404`) fails at once with a message
//! that says what to check.
//!
//! Every header is hostile input: values are parsed with checked arithmetic (a number too large
//! for a [`Duration`] or a [`SystemTime`] means "longer than we will ever wait", never a panic),
//! and a wait the server asks for that is longer than the source's `max_retry_wait` fails the
//! window at once ([`Verdict::WaitTooLong`]): the daemon's own back-off then decides when the
//! source is tried again, instead of one window holding the source for as long as the server
//! says. A redirect is never followed here ([`Verdict::Redirect`]): the client follows only the
//! ones the source allows, and what reaches this module was not allowed.

use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::header::{HeaderMap, LOCATION, RETRY_AFTER};
use reqwest::StatusCode;

/// The longest header text quoted in a message: enough for any honest value, and a hostile one
/// cannot flood a log line.
const MAX_QUOTED_CHARS: usize = 120;

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
    /// The server asked for a wait longer than the source allows: give the window up now.
    WaitTooLong {
        /// What the server asked for, as a header line fit for a message.
        asked: ServerDelay,
        max: Duration,
    },
    /// A 3xx that the client did not follow.
    Redirect {
        /// The `Location` header, quoted for a message (printable ASCII, bounded, no
        /// credentials), if there was one.
        location: Option<String>,
    },
}

/// A wait the server asked for, with the header it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerDelay {
    /// [`Duration::MAX`] when the value is larger than any duration (or lies past the end of
    /// time as a date).
    pub wait: Duration,
    /// `Name: value`, quoted for a message.
    pub header: String,
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

    /// The `reason` label of each, in the order of [`RetryReason::ALL`]: metrics start every
    /// series at zero from this list.
    pub const LABELS: [&'static str; 6] = [
        "rate_limited",
        "unavailable",
        "server_error",
        "transport",
        "timeout",
        "body",
    ];

    pub fn as_str(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// Classifies a response status. `max_wait` is the longest wait the server may ask for before
/// the window is given up instead ([`Verdict::WaitTooLong`]).
pub fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
    max_wait: Duration,
) -> Verdict {
    let retry_after = |reason| match server_delay(headers, now) {
        Some(asked) if asked.wait > max_wait => Verdict::WaitTooLong {
            asked,
            max: max_wait,
        },
        asked => Verdict::Retry {
            after: asked.map(|a| a.wait),
            reason,
        },
    };
    match status.as_u16() {
        200..=299 => Verdict::Accept,
        300..=399 => Verdict::Redirect {
            location: headers.get(LOCATION).map(|v| quote_location(v.as_bytes())),
        },
        429 => retry_after(RetryReason::RateLimited),
        503 => retry_after(RetryReason::Unavailable),
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
/// (seconds until the reset, or a Unix time when it is that large). A value that cannot be read
/// is no request at all (`None`: the client's own back-off applies); one too large to represent
/// is [`Duration::MAX`].
pub fn server_delay(headers: &HeaderMap, now: SystemTime) -> Option<ServerDelay> {
    let quoted = |name: &str, raw: &[u8]| format!("{name}: {}", quote(raw));
    if let Some(raw) = headers.get(RETRY_AFTER) {
        if let Some(wait) = raw.to_str().ok().and_then(|v| retry_after(v.trim(), now)) {
            return Some(ServerDelay {
                wait,
                header: quoted("Retry-After", raw.as_bytes()),
            });
        }
    }
    let raw = headers.get("x-ratelimit-reset")?;
    let wait = rate_limit_reset(raw.to_str().ok()?.trim(), now)?;
    Some(ServerDelay {
        wait,
        header: quoted("X-RateLimit-Reset", raw.as_bytes()),
    })
}

/// `Retry-After`: delay-seconds (digits only, RFC 9110) or an HTTP date.
fn retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still a number of seconds: longer than any wait.
        return Some(v.parse::<u64>().map_or(Duration::MAX, Duration::from_secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `X-RateLimit-Reset`: not standardised; platforms send seconds until the reset (possibly
/// fractional) or the reset's Unix time.
fn rate_limit_reset(v: &str, now: SystemTime) -> Option<Duration> {
    let reset = v
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r >= 0.0)?;
    let span = Duration::try_from_secs_f64(reset).unwrap_or(Duration::MAX);
    // Anything past year 2001 as seconds is an epoch time, not a delay.
    if reset > 1e9 {
        return Some(match SystemTime::UNIX_EPOCH.checked_add(span) {
            Some(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
            None => Duration::MAX,
        });
    }
    Some(span)
}

/// Header bytes as text fit for a log line or an error: printable ASCII kept, anything else
/// escaped, at most [`MAX_QUOTED_CHARS`] characters.
fn quote(raw: &[u8]) -> String {
    let mut out = String::new();
    for &b in raw {
        let piece = if b.is_ascii_graphic() || b == b' ' {
            char::from(b).to_string()
        } else {
            format!("\\x{b:02x}")
        };
        if out.len() + piece.len() > MAX_QUOTED_CHARS {
            out.push('…');
            break;
        }
        out.push_str(&piece);
    }
    out
}

/// A `Location` quoted as [`quote`] does, with any `user:password@` in it replaced: a redirect
/// could point at a URL that carries credentials, and messages never do.
fn quote_location(raw: &[u8]) -> String {
    let text = quote(raw);
    if let Some(scheme_end) = text.find("://") {
        let rest = &text[scheme_end + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{}***{}", &text[..scheme_end + 3], &rest[at..]);
        }
    }
    text
}

/// Whether a wait is long enough to say so at `info`: shorter ones are routine spacing.
pub fn is_long_wait(wait: Duration) -> bool {
    wait >= Duration::from_secs(10)
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

    #[test]
    fn each_retry_reason_has_its_own_label() {
        let labels: Vec<&str> = RetryReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels, RetryReason::LABELS);
        assert_eq!(RetryReason::RateLimited.as_str(), "rate_limited");
        assert_eq!(RetryReason::Body.as_str(), "body");
    }
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
        let code = |c: u16| {
            classify(
                StatusCode::from_u16(c).expect("status"),
                &h,
                now,
                Duration::from_secs(300),
            )
        };
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

    fn wait(h: &HeaderMap, now: SystemTime) -> Option<Duration> {
        server_delay(h, now).map(|d| d.wait)
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date_and_rate_limit_reset_either_way() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            wait(&headers(&[("retry-after", "7")]), now),
            Some(Duration::from_secs(7))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            wait(&headers(&[("retry-after", &later)]), now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            wait(&headers(&[("retry-after", &past)]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            wait(&headers(&[("x-ratelimit-reset", "2")]), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            wait(&headers(&[("x-ratelimit-reset", "1700000005")]), now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(wait(&headers(&[("retry-after", "soon")]), now), None);
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

    #[test]
    fn absurd_waits_are_longer_than_any_cap_and_never_panic() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for (name, value) in [
            ("x-ratelimit-reset", "1e20"),
            ("x-ratelimit-reset", "1e300"),
            ("x-ratelimit-reset", "1.7976931348623157e308"),
            ("retry-after", "1000000000"),
            ("retry-after", "99999999999999999999999999999999"),
            ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"),
        ] {
            let h = headers(&[(name, value)]);
            let asked = server_delay(&h, now).expect(value);
            assert!(asked.wait > Duration::from_secs(3600), "{value}: {asked:?}");
            for status in [429, 503] {
                let verdict = classify(
                    StatusCode::from_u16(status).expect("status"),
                    &h,
                    now,
                    Duration::from_secs(300),
                );
                let Verdict::WaitTooLong { asked, max } = verdict else {
                    panic!("{status} {value}: {verdict:?}")
                };
                assert_eq!(max, Duration::from_secs(300));
                assert!(asked.header.contains(value), "{}", asked.header);
            }
        }
    }

    #[test]
    fn values_that_are_not_waits_leave_the_wait_to_our_back_off() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for (name, value) in [
            ("x-ratelimit-reset", "-1"),
            ("x-ratelimit-reset", "NaN"),
            ("x-ratelimit-reset", "inf"),
            ("x-ratelimit-reset", ""),
            ("retry-after", "-5"),
            ("retry-after", "+5"),
            ("retry-after", "1.5"),
        ] {
            assert_eq!(wait(&headers(&[(name, value)]), now), None, "{value}");
        }
        // A wait within the cap is honoured as asked, and the cap is inclusive.
        let verdict = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "300")]),
            now,
            Duration::from_secs(300),
        );
        assert_eq!(
            verdict,
            Verdict::Retry {
                after: Some(Duration::from_secs(300)),
                reason: RetryReason::RateLimited
            }
        );
    }

    #[test]
    fn a_redirect_names_its_location_without_credentials_or_control_characters() {
        let now = SystemTime::now();
        let cap = Duration::from_secs(300);
        let mut h = HeaderMap::new();
        h.insert(
            LOCATION,
            // What a header can carry beside printable ASCII: tab and bytes past 0x7f.
            HeaderValue::from_bytes(b"http://user:secret@evil.example/\t\xffx").expect("value"),
        );
        let verdict = classify(StatusCode::FOUND, &h, now, cap);
        assert_eq!(
            verdict,
            Verdict::Redirect {
                location: Some("http://***@evil.example/\\x09\\xffx".into())
            }
        );
        let long = "https://a.example/".to_owned() + &"x".repeat(10_000);
        let verdict = classify(
            StatusCode::MOVED_PERMANENTLY,
            &headers(&[("location", &long)]),
            now,
            cap,
        );
        let Verdict::Redirect {
            location: Some(quoted),
        } = verdict
        else {
            panic!("{verdict:?}")
        };
        assert!(
            quoted.chars().count() <= MAX_QUOTED_CHARS + 1,
            "{}",
            quoted.len()
        );
        assert_eq!(
            classify(StatusCode::TEMPORARY_REDIRECT, &HeaderMap::new(), now, cap),
            Verdict::Redirect { location: None }
        );
    }

    proptest::proptest! {
        /// Whatever bytes a server sends in its headers, classifying them returns (no panic), a
        /// wait it accepts is within the cap, and the text it quotes stays short and printable.
        #[test]
        fn no_header_value_panics_or_escapes_the_cap(
            status in 100u16..600,
            retry_after in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            reset in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            reset_number in proptest::num::f64::ANY,
            retry_seconds in proptest::num::u64::ANY,
            location in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            now_secs in 0u64..8_000_000_000,
            cap_secs in 0u64..100_000,
        ) {
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs);
            let cap = Duration::from_secs(cap_secs);
            let status = StatusCode::from_u16(status).expect("100..600 is a status");
            let sets: [Vec<(&'static str, Vec<u8>)>; 3] = [
                vec![("retry-after", retry_after), ("x-ratelimit-reset", reset), ("location", location)],
                vec![("x-ratelimit-reset", reset_number.to_string().into_bytes())],
                vec![("retry-after", retry_seconds.to_string().into_bytes())],
            ];
            for set in sets {
                let mut h = HeaderMap::new();
                for (name, value) in set {
                    // Only what a header can carry at all reaches the policy.
                    if let Ok(v) = HeaderValue::from_bytes(&value) {
                        h.insert(name, v);
                    }
                }
                match classify(status, &h, now, cap) {
                    Verdict::Retry { after: Some(after), .. } => proptest::prop_assert!(after <= cap),
                    Verdict::WaitTooLong { asked, .. } => {
                        proptest::prop_assert!(asked.wait > cap);
                        proptest::prop_assert!(asked.header.chars().count() <= MAX_QUOTED_CHARS + 20);
                        proptest::prop_assert!(asked.header.chars().all(|c| !c.is_control()));
                    }
                    Verdict::Redirect { location: Some(l) } => {
                        proptest::prop_assert!(l.chars().count() <= MAX_QUOTED_CHARS + 4);
                        proptest::prop_assert!(l.chars().all(|c| !c.is_control()));
                    }
                    _ => {}
                }
            }
        }
    }
}
