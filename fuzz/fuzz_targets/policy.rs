//! Any status and header bytes a server may send: the policy must classify them without a panic,
//! never accept a wait above the cap, and quote only short printable text.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use nprov_sync::source::policy::{classify, Verdict};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::StatusCode;

const NAMES: [&str; 3] = ["retry-after", "x-ratelimit-reset", "location"];

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let status = 100 + u16::from_le_bytes([data[0], data[1]]) % 500;
    let Ok(status) = StatusCode::from_u16(status) else {
        return;
    };
    let now = SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            u64::from(u32::from_le_bytes([data[2], data[3], data[4], data[5]])) * 4,
        );
    let cap = Duration::from_secs(u64::from(u16::from_le_bytes([data[6], data[7]])));
    // The rest: header values separated by 0x00, in the order of NAMES.
    let mut headers = HeaderMap::new();
    for (name, value) in NAMES.iter().zip(data[8..].split(|b| *b == 0)) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(*name, v);
        }
    }
    match classify(status, &headers, now, cap) {
        Verdict::Retry {
            after: Some(after), ..
        } => assert!(after <= cap),
        Verdict::WaitTooLong { asked, max } => {
            assert!(asked.wait > max);
            assert!(asked.header.chars().count() <= 160);
            assert!(!asked.header.chars().any(char::is_control));
        }
        Verdict::Redirect {
            location: Some(location),
        } => {
            assert!(location.chars().count() <= 160);
            assert!(!location.chars().any(char::is_control));
        }
        _ => {}
    }
});
