//! Property: any valid record, written as XML of any version and parsed back, is equal.

use nprov_sync::domain::*;
use nprov_sync::simulate::render_to_string;
use nprov_sync::xml::version::VERSIONS;
use nprov_sync::xml::{Item, Parser};
use proptest::prelude::*;

/// Text that survives XML unchanged: no leading/trailing space (simple values are trimmed), no
/// control characters (attribute values would be normalised), markup characters included.
fn text() -> impl Strategy<Value = String> {
    "[A-Za-z0-9ÅÄÖåäö{}<>&\"'_-]([A-Za-z0-9ÅÄÖåäö{}<>&\"' _-]{0,12}[A-Za-z0-9ÅÄÖåäö{}<>&\"'_-])?"
}

fn enum_value(known: &'static [&'static str]) -> impl Strategy<Value = Text> {
    // Mostly known values, sometimes one the version does not list (kept, not rejected).
    prop_oneof![
        4 => proptest::sample::select(known).prop_map(Text::Borrowed),
        1 => text().prop_map(Text::Owned),
    ]
}

fn date() -> impl Strategy<Value = chrono::NaiveDate> {
    (1990i32..2100, 1u32..=12, 1u32..=28)
        .prop_map(|(y, m, d)| chrono::NaiveDate::from_ymd_opt(y, m, d).expect("valid date"))
}

fn utfall(v: usize) -> impl Strategy<Value = Utfall> {
    let betyg = VERSIONS[v].betyg;
    let varde = prop_oneof![
        Just(None),
        enum_value(betyg).prop_map(|b| Some(Varde::Betyg(b))),
        any::<i64>().prop_map(|p| Some(Varde::Poang(p))),
    ];
    prop_oneof![
        6 => (varde, proptest::option::of(any::<bool>()))
            .prop_map(|(varde, maluppfyllnad)| Utfall::Resultat { varde, maluppfyllnad }),
        1 => Just(Utfall::Intedeltagit),
        1 => Just(Utfall::Borttappat),
    ]
}

fn provtillfalle(v: usize) -> impl Strategy<Value = Provtillfalle> {
    let rules = &VERSIONS[v];
    let delprov = proptest::collection::vec(
        (enum_value(rules.typ), utfall(v))
            .prop_map(|(typ, utfall)| Delprovsresultat { typ, utfall }),
        0..5,
    );
    let resultat = prop_oneof![
        1 => Just(ProvtillfalleResultat::Intedeltagit),
        5 => (proptest::option::of(enum_value(rules.sammanvagt_provbetyg)), delprov).prop_map(
            |(sammanvagt_provbetyg, delprovsresultat)| ProvtillfalleResultat::Resultat {
                sammanvagt_provbetyg,
                delprovsresultat,
            }
        ),
    ];
    let genomfort = if rules.genomfort {
        proptest::option::of(date()).boxed()
    } else {
        Just(None).boxed()
    };
    (date(), genomfort, resultat).prop_map(|(uppdaterat, genomfort, resultat)| Provtillfalle {
        uppdaterat,
        genomfort,
        resultat,
    })
}

fn provomrade(v: usize) -> impl Strategy<Value = Provomrade> {
    let omrade = prop_oneof![
        (text(), proptest::sample::select(&[3i64, 6, 9][..])).prop_map(|(amne, a)| Omrade::Amne {
            amne,
            arskurs: Arskurs::try_from(a).expect("3, 6 or 9"),
        }),
        text().prop_map(|kurs| Omrade::Kurs { kurs }),
    ];
    (
        text(),
        omrade,
        enum_value(VERSIONS[v].skolform),
        proptest::collection::vec(provtillfalle(v), 0..4),
    )
        .prop_map(|(elev, omrade, skolform, provtillfallen)| Provomrade {
            key: ProvomradeKey { elev, omrade },
            skolform,
            provtillfallen,
        })
}

fn document() -> impl Strategy<Value = (usize, Vec<Provomrade>)> {
    (0..VERSIONS.len()).prop_flat_map(|v| (Just(v), proptest::collection::vec(provomrade(v), 0..6)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn rendered_records_parse_back_equal((v, records) in document()) {
        let xml = render_to_string(&VERSIONS[v], "2026-01-01T00:00:00", "2026-01-02T00:00:00", &records);
        let mut parser = Parser::new(xml.as_bytes(), Default::default()).expect("document parses");
        prop_assert_eq!(parser.header().version.rules.name, VERSIONS[v].name);
        let mut parsed = Vec::new();
        while let Some(item) = parser.next_item().expect("no document error") {
            match item {
                Item::Record(r) => parsed.push(r.provomrade),
                Item::Quarantined(q) => prop_assert!(false, "quarantined: {}\n{}", q.error, xml),
            }
        }
        prop_assert_eq!(parsed, records);
    }
}
