//! Any bytes as a response body: the parser must end in records, quarantined elements or one
//! document error, never a panic, a hang or unbounded memory; and scanning with the building
//! stage ahead (the facade) or behind (raw hash first, built on demand, as a re-read does) must
//! agree on what the document holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nprov_sync::xml::{build_element, Item, Limits, Parser, Scanned, Scanner};

/// Small caps, so the fuzzer reaches the limit paths with small inputs.
const LIMITS: Limits = Limits {
    max_record_bytes: 4096,
    max_document_bytes: Some(1 << 20),
};

/// (records, quarantined, the document error's code).
fn with_parser(data: &[u8]) -> (u64, u64, Option<&'static str>) {
    let mut parser = match Parser::new(data, LIMITS) {
        Ok(p) => p,
        Err(e) => return (0, 0, Some(e.code())),
    };
    let (mut records, mut quarantined) = (0, 0);
    loop {
        match parser.next_item() {
            Ok(Some(Item::Record(r))) => {
                // Nothing XML forbids may reach a database.
                assert!(!r.provomrade.key.elev.contains('\0'));
                records += 1;
            }
            Ok(Some(Item::Quarantined(_))) => quarantined += 1,
            Ok(None) => return (records, quarantined, None),
            Err(e) => return (records, quarantined, Some(e.code())),
        }
    }
}

fn with_scanner_behind(data: &[u8]) -> (u64, u64, Option<&'static str>) {
    let mut scanner = match Scanner::new(data, LIMITS) {
        Ok(s) => s,
        Err(e) => return (0, 0, Some(e.code())),
    };
    scanner.set_build_ahead(false);
    let (mut records, mut quarantined) = (0, 0);
    loop {
        match scanner.next_element() {
            Ok(Some(Scanned::Quarantined(_))) => quarantined += 1,
            Ok(Some(Scanned::Element(e))) => {
                let built = match e.built {
                    Some(b) => b,
                    None => match build_element(&e.raw, e.location, scanner.context()) {
                        Ok(b) => b,
                        Err(err) => return (records, quarantined, Some(err.code())),
                    },
                };
                match built {
                    Ok(_) => records += 1,
                    Err(_) => quarantined += 1,
                }
            }
            Ok(None) => return (records, quarantined, None),
            Err(e) => return (records, quarantined, Some(e.code())),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let ahead = with_parser(data);
    let behind = with_scanner_behind(data);
    // A document error ends the document: what was counted before it is never applied, so only
    // the verdict must agree then; without one, every count must.
    match (ahead.2, behind.2) {
        (None, None) => assert_eq!(ahead, behind),
        (a, b) => assert_eq!(a.is_some(), b.is_some(), "{ahead:?} vs {behind:?}"),
    }
});
