//! A simulated provtjänst provisioning API (the GET and lookup endpoints of
//! `../shared/spec/provtjanst/dnp-provisioning-api.yaml`) and its GNAP token endpoint, over a
//! generated register consistent with the results [`Population`]: most pupils registered by
//! their platform id, some by an external identifier only, some not at all, and registered
//! pupils without results, so the join views have matches and both kinds of mismatch.
//!
//! Faults, as a real service shows them: the published rate limit enforced (`429` with a
//! fractional `x-ratelimit-reset`), `429`/`503` bursts, tokens whose JWT `exp` is much shorter
//! than the `expires_in` they are granted with (`403` 5002 after), latency per request, `413`
//! for a lookup of too many ids, and records added, changed and deleted while a pass pages.
//! Pages are keyed by id (the token is the last id returned), so a change between two pages
//! neither repeats nor skips a record that stays.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::Population;

/// The API's path below the simulator's address.
pub const BASE_PATH: &str = "/provisioning/v1";
/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/transaction";

/// What the simulated service does wrong, and how slowly.
#[derive(Clone, Debug)]
pub struct ProvFaults {
    /// Requests per second per client before `429` (the published 10).
    pub rate_limit_per_second: Option<u32>,
    /// Probability of a `429` burst starting at a request (3 in a row).
    pub burst_429: f64,
    /// Probability of a `503` burst starting at a request (3 in a row).
    pub burst_503: f64,
    /// How long a token's JWT is valid (its `exp`); `expires_in` always says an hour.
    pub token_ttl: Duration,
    /// Wait before every answer.
    pub latency: Duration,
    /// Lookups of more ids answer `413`.
    pub max_lookup_ids: usize,
    /// Every this many list requests, one person is added, one changed and one deleted.
    pub churn_every: Option<u64>,
    pub seed: u64,
}

impl Default for ProvFaults {
    fn default() -> Self {
        ProvFaults {
            rate_limit_per_second: Some(10),
            burst_429: 0.0,
            burst_503: 0.0,
            token_ttl: Duration::from_secs(3600),
            latency: Duration::ZERO,
            max_lookup_ids: 100,
            churn_every: None,
            seed: 2026,
        }
    }
}

/// What the simulated service saw.
#[derive(Default)]
pub struct ProvStats {
    pub requests: AtomicU64,
    pub list_requests: AtomicU64,
    pub lookup_requests: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub rate_limited: AtomicU64,
    pub token_refused: AtomicU64,
    pub arrivals: Mutex<Vec<Instant>>,
}

impl ProvStats {
    /// The most API requests that arrived within any one second.
    pub fn max_per_second(&self) -> usize {
        let arrivals = self.arrivals.lock().map(|a| a.clone()).unwrap_or_default();
        let mut max = 0;
        let mut start = 0;
        for (end, t) in arrivals.iter().enumerate() {
            while t.duration_since(arrivals[start]) >= Duration::from_secs(1) {
                start += 1;
            }
            max = max.max(end - start + 1);
        }
        max
    }
}

/// The four kinds' records, by id, as JSON the API would send (persons whole; the list shows a
/// subset).
#[derive(Default)]
pub struct Register {
    pub persons: BTreeMap<String, Value>,
    pub duties: BTreeMap<String, Value>,
    pub groups: BTreeMap<String, Value>,
    pub activities: BTreeMap<String, Value>,
    serial: u64,
}

fn uuid_from(rng: &mut ChaCha8Rng) -> String {
    uuid::Builder::from_random_bytes(rng.random())
        .into_uuid()
        .hyphenated()
        .to_string()
}

fn meta(t: &str) -> Value {
    json!({ "created": t, "modified": t })
}

impl Register {
    /// A register for a results population: its pupils (most by their platform id, one in
    /// twenty by an external identifier only, one in twenty not registered), as many pupils
    /// again one in ten without results, a teacher per 25 pupils with a duty, a class and a
    /// teaching group per 25, an activity per teaching group.
    pub fn generate(population: &Population, persons: u64) -> Register {
        let mut rng = ChaCha8Rng::seed_from_u64(population.seed ^ 0x5052_4f56);
        let mut r = Register::default();
        let t = "2026-01-19T08:00:00.000+01:00";
        let school = "5e1a0c1e-0000-4000-8000-000000000001";
        let mut pupils = Vec::new();
        for i in 0..persons {
            let with_results = i < population.students;
            if with_results && i % 20 == 19 {
                continue; // a result without a registration
            }
            let elev = population.elev_id(i);
            let bare = elev.trim_matches(['{', '}']).to_ascii_lowercase();
            let (id, external) = if with_results && i % 20 == 7 {
                (uuid_from(&mut rng), Some(elev.clone()))
            } else if with_results {
                (bare, None)
            } else {
                (uuid_from(&mut rng), None)
            };
            let marked = i % 100 == 42;
            let mut p = json!({
                "id": id,
                "meta": meta(t),
                "givenName": format!("Elev{i}"),
                "familyName": format!("Efternamn{i}"),
                "eduPersonPrincipalNames": [format!("elev{i}@edu.kommun.se")],
                "civicNo": { "value": format!("2012{:02}{:02}{:04}", 1 + i % 12, 1 + i % 28, i % 10_000), "nationality": "SE" },
                "securityMarking": if marked { "Skyddad folkbokföring" } else { "Ingen" },
                "emails": [{ "value": format!("elev{i}@skola.kommun.se"), "type": "Skola elev" }],
                "enrolments": [{ "enroledAt": { "id": school }, "schoolYear": 3 + 3 * (i % 3), "schoolType": "GR" }],
                "provisioningStatus": true,
            });
            if let Some(x) = external {
                p["externalIdentifiers"] =
                    json!([{ "value": x, "context": "https://eduid.se", "globallyUnique": true }]);
            }
            pupils.push(id.clone());
            r.persons.insert(id, p);
        }
        for (g, members) in pupils.chunks(25).enumerate() {
            let teacher = uuid_from(&mut rng);
            r.persons.insert(
                teacher.clone(),
                json!({
                    "id": teacher, "meta": meta(t),
                    "givenName": format!("Lärare{g}"), "familyName": "Lärarsson",
                    "eduPersonPrincipalNames": [format!("larare{g}@edu.kommun.se")],
                    "civicNo": { "value": format!("1980{:02}{:02}{:04}", 1 + g % 12, 1 + g % 28, g % 10_000) },
                    "emails": [{ "value": format!("larare{g}@kommun.se"), "type": "Skola personal" }],
                    "provisioningStatus": true,
                }),
            );
            let duty = uuid_from(&mut rng);
            r.duties.insert(
                duty.clone(),
                json!({ "id": duty, "meta": meta(t), "person": { "id": teacher }, "dutyAt": { "id": school }, "dutyRole": "Lärare", "provisioningStatus": true }),
            );
            let memberships: Vec<Value> = members
                .iter()
                .map(|m| json!({ "person": { "id": m } }))
                .collect();
            let class = uuid_from(&mut rng);
            r.groups.insert(
                class.clone(),
                json!({ "id": class, "meta": meta(t), "displayName": format!("Klass {g}"), "groupType": "Klass", "schoolType": "GR", "organisation": { "id": school }, "groupMemberships": memberships, "provisioningStatus": true }),
            );
            let teaching = uuid_from(&mut rng);
            r.groups.insert(
                teaching.clone(),
                json!({ "id": teaching, "meta": meta(t), "displayName": format!("MA {g}"), "groupType": "Undervisning", "schoolType": "GR", "organisation": { "id": school }, "groupMemberships": memberships, "provisioningStatus": true }),
            );
            let activity = uuid_from(&mut rng);
            r.activities.insert(
                activity.clone(),
                json!({ "id": activity, "meta": meta(t), "displayName": format!("Matematik {g}"), "activityType": "Undervisning", "groups": [{ "id": teaching }], "teachers": [{ "duty": { "id": duty } }], "organisation": { "id": school }, "parentActivity": { "id": "0a7e5c1d-0000-4000-8000-00000000a006" }, "provisioningStatus": true }),
            );
        }
        r
    }

    fn kind(&self, kind: &str) -> Option<&BTreeMap<String, Value>> {
        match kind {
            "persons" => Some(&self.persons),
            "duties" => Some(&self.duties),
            "groups" => Some(&self.groups),
            "activities" => Some(&self.activities),
            _ => None,
        }
    }

    /// Adds a pupil, changes one (a new enrolment year and `meta.modified`) and deletes one.
    pub fn churn(&mut self, rng: &mut ChaCha8Rng) {
        self.serial += 1;
        let id = uuid_from(rng);
        self.persons.insert(
            id.clone(),
            json!({ "id": id, "meta": meta("2026-03-01T08:00:00.000+01:00"), "givenName": "Ny", "familyName": format!("Elev{}", self.serial), "eduPersonPrincipalNames": [format!("ny{}@edu.kommun.se", self.serial)], "civicNo": { "value": format!("2013010{:05}", self.serial % 100_000) }, "enrolments": [{ "enroledAt": { "id": "5e1a0c1e-0000-4000-8000-000000000001" }, "schoolYear": 6, "schoolType": "GR" }] }),
        );
        let n = self.persons.len();
        if n < 3 {
            return;
        }
        let changed = self.persons.keys().nth(rng.random_range(0..n)).cloned();
        if let Some(changed) = changed {
            self.change_person(&changed);
        }
        let gone = self.persons.keys().nth(rng.random_range(0..n)).cloned();
        if let Some(gone) = gone {
            self.persons.remove(&gone);
        }
    }

    /// Changes a person's enrolment and `meta.modified`.
    pub fn change_person(&mut self, id: &str) {
        self.serial += 1;
        if let Some(p) = self.persons.get_mut(id) {
            p["meta"]["modified"] = json!(format!(
                "2026-04-01T08:{:02}:{:02}.000+02:00",
                (self.serial / 60) % 60,
                self.serial % 60
            ));
            p["enrolments"] = json!([{ "enroledAt": { "id": "5e1a0c1e-0000-4000-8000-000000000001" }, "schoolYear": 9, "schoolType": "GR" }]);
        }
    }
}

/// The simulated service.
pub struct ProvSim {
    pub register: Mutex<Register>,
    pub faults: ProvFaults,
    pub stats: ProvStats,
    /// A kind (`persons`, …) whose list answers `503` until cleared: a pass that stops part
    /// way.
    pub outage: Mutex<Option<String>>,
    tokens: Mutex<HashMap<String, SystemTime>>,
    recent: Mutex<VecDeque<Instant>>,
    rng: Mutex<ChaCha8Rng>,
    burst: Mutex<(u16, u32)>,
}

impl ProvSim {
    pub fn new(register: Register, faults: ProvFaults) -> Arc<ProvSim> {
        Arc::new(ProvSim {
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(faults.seed)),
            register: Mutex::new(register),
            faults,
            stats: ProvStats::default(),
            outage: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::new()),
            burst: Mutex::new((0, 0)),
        })
    }

    /// Forgets every token issued: the next request answers `403` 5002, as when the
    /// authorisation server revokes a token before its time.
    pub fn revoke_tokens(&self) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.clear();
        }
    }

    /// The routes: the API below [`BASE_PATH`], the token endpoint at [`TOKEN_PATH`].
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(TOKEN_PATH, post(token))
            .route(&format!("{BASE_PATH}/{{kind}}"), get(list))
            .route(&format!("{BASE_PATH}/{{kind}}/lookup"), post(lookup))
            .with_state(self.clone())
    }
}

fn log_entry(code: &str, status: u16, message: &str) -> Value {
    json!([{ "id": code, "statusCode": status, "messageType": "Simulerat", "message": message, "severityLevel": "Error", "timeOfOccurance": "2026-01-19T08:00:00.000+01:00" }])
}

fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(log_entry(code, status.as_u16(), message)),
    )
        .into_response()
}

async fn token(State(sim): State<Arc<ProvSim>>, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": "invalid_request" })),
        )
            .into_response();
    };
    let access = &request["access_token"][0]["access"][0];
    let key = &request["client"]["key"];
    let key_ok = key.is_string() || (key["proof"] == "mtls" && key["cert#S256"].is_string());
    if access["type"] != "provisioning-api" || !access["locations"].is_array() || !key_ok {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": "invalid_request" })),
        )
            .into_response();
    }
    let n = sim.stats.tokens_issued.fetch_add(1, Ordering::Relaxed);
    let exp = SystemTime::now() + sim.faults.token_ttl;
    let exp_secs = exp
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let b = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let value = format!(
        "{}.{}.sim",
        b(json!({ "alg": "ES256" })),
        b(json!({ "exp": exp_secs, "n": n }))
    );
    if let Ok(mut tokens) = sim.tokens.lock() {
        tokens.insert(value.clone(), exp);
    }
    axum::Json(json!({ "access_token": { "value": value, "access": [access], "expires_in": 3600, "flags": ["bearer"] } })).into_response()
}

/// The common gate of every API request: arrival counted, latency, token, rate limit, bursts.
async fn gate(sim: &ProvSim, headers: &HeaderMap) -> Option<Response> {
    let arrived = Instant::now();
    sim.stats.requests.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut a) = sim.stats.arrivals.lock() {
        a.push(arrived);
    }
    if !sim.faults.latency.is_zero() {
        tokio::time::sleep(sim.faults.latency).await;
    }
    if let Some(limit) = sim.faults.rate_limit_per_second {
        let mut recent = sim.recent.lock().ok()?;
        while recent
            .front()
            .is_some_and(|t| arrived.duration_since(*t) >= Duration::from_secs(1))
        {
            recent.pop_front();
        }
        if recent.len() >= limit as usize {
            let reset = recent
                .front()
                .map(|t| Duration::from_secs(1).saturating_sub(arrived.duration_since(*t)))
                .unwrap_or_default();
            sim.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            let mut r = refusal(
                StatusCode::TOO_MANY_REQUESTS,
                "5021",
                "Den högsta tillåtna antal förfrågningar har uppnåtts.",
            );
            if let Ok(v) = format!("{:.3}", reset.as_secs_f64()).parse() {
                r.headers_mut().insert("x-ratelimit-reset", v);
            }
            return Some(r);
        }
        recent.push_back(arrived);
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let valid = bearer.is_some_and(|t| {
        sim.tokens
            .lock()
            .ok()
            .and_then(|tokens| tokens.get(t).copied())
            .is_some_and(|exp| SystemTime::now() < exp)
    });
    if !valid {
        sim.stats.token_refused.fetch_add(1, Ordering::Relaxed);
        return Some(refusal(
            StatusCode::FORBIDDEN,
            "5002",
            "Ogiltig eller utgången token.",
        ));
    }
    let mut burst = sim.burst.lock().ok()?;
    if burst.1 == 0 {
        let mut rng = sim.rng.lock().ok()?;
        if rng.random_bool(sim.faults.burst_429.clamp(0.0, 1.0)) {
            *burst = (429, 3);
        } else if rng.random_bool(sim.faults.burst_503.clamp(0.0, 1.0)) {
            *burst = (503, 3);
        }
    }
    if burst.1 > 0 {
        burst.1 -= 1;
        return Some(match burst.0 {
            429 => {
                let mut r = refusal(StatusCode::TOO_MANY_REQUESTS, "5021", "För många anrop.");
                r.headers_mut().insert(
                    "x-ratelimit-reset",
                    header::HeaderValue::from_static("0.25"),
                );
                r
            }
            _ => refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "5022",
                "Tjänsten är inte tillgänglig. Försök igen senare.",
            ),
        });
    }
    None
}

#[derive(serde::Deserialize)]
struct ListQuery {
    limit: Option<String>,
    #[serde(rename = "pageToken")]
    page_token: Option<String>,
}

/// What the list shows of a person: id, civicNo, eduPersonPrincipalNames, names,
/// provisioningStatus and meta.
fn person_list_view(p: &Value) -> Value {
    let mut v = json!({});
    for k in [
        "id",
        "meta",
        "givenName",
        "middleName",
        "familyName",
        "eduPersonPrincipalNames",
        "civicNo",
        "provisioningStatus",
    ] {
        if let Some(x) = p.get(k) {
            v[k] = x.clone();
        }
    }
    v
}

async fn list(
    State(sim): State<Arc<ProvSim>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Some(refused) = gate(&sim, &headers).await {
        return refused;
    }
    let n = sim.stats.list_requests.fetch_add(1, Ordering::Relaxed) + 1;
    if sim
        .outage
        .lock()
        .is_ok_and(|o| o.as_deref() == Some(kind.as_str()))
    {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "5022",
            "Tjänsten är inte tillgänglig. Försök igen senare.",
        );
    }
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => 50,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        Some(_) => return refusal(StatusCode::BAD_REQUEST, "2011", "Ogiltigt värde på limit."),
    };
    let after = match q.page_token.as_deref() {
        None => None,
        Some(t) => match base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        {
            Some(id) => Some(id),
            None => return refusal(StatusCode::BAD_REQUEST, "2011", "Ogiltigt pageToken."),
        },
    };
    let mut register = match sim.register.lock() {
        Ok(r) => r,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    if let Some(every) = sim.faults.churn_every {
        if every > 0 && n % every == 0 {
            if let Ok(mut rng) = sim.rng.lock() {
                register.churn(&mut rng);
            }
        }
    }
    let Some(records) = register.kind(&kind) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let range = match &after {
        Some(a) => records.range::<String, _>((
            std::ops::Bound::Excluded(a.clone()),
            std::ops::Bound::Unbounded,
        )),
        None => records.range::<String, _>(..),
    };
    let mut data = Vec::with_capacity(limit);
    let mut last = None;
    for (id, v) in range.take(limit + 1) {
        if data.len() == limit {
            break;
        }
        data.push(if kind == "persons" {
            person_list_view(v)
        } else {
            v.clone()
        });
        last = Some(id.clone());
    }
    let more = last.as_ref().is_some_and(|l| {
        records
            .range::<String, _>((
                std::ops::Bound::Excluded(l.clone()),
                std::ops::Bound::Unbounded,
            ))
            .next()
            .is_some()
    });
    let token = if more {
        last.map(|l| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(l))
    } else {
        None
    };
    axum::Json(json!({ "data": data, "pageToken": token })).into_response()
}

async fn lookup(
    State(sim): State<Arc<ProvSim>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = gate(&sim, &headers).await {
        return refused;
    }
    sim.stats.lookup_requests.fetch_add(1, Ordering::Relaxed);
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return refusal(StatusCode::BAD_REQUEST, "2012", "Ogiltig förfrågan.");
    };
    let ids: Vec<String> = request["ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if ids.len() > sim.faults.max_lookup_ids {
        return refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            "5020",
            "Provisionerade uppgifter överstiger tillåten datamängd.",
        );
    }
    let Ok(register) = sim.register.lock() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Some(records) = register.kind(&kind) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let found: Vec<Value> = ids
        .iter()
        .filter_map(|id| records.get(&id.to_ascii_lowercase()).cloned())
        .collect();
    axum::Json(Value::Array(found)).into_response()
}
