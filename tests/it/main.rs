#[test]
fn scratch() {
    for v in ["v1.1", "v1.2", "v2.0b", "v4.0a", "v12.0"] {
        let path = format!("../shared/spec/nationellaprov/{v}/nationellaprov-exempel.xml");
        let f = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
        let mut p = nprov_sync::xml::Parser::new(f, Default::default()).unwrap();
        let mut n = 0;
        while let Some(item) = p.next_item().unwrap() {
            n += 1;
            if let nprov_sync::xml::Item::Quarantined(q) = item { println!("Q {}", q.error); }
        }
        println!("{v}: {} items {:?} warnings {:?}", n, p.stats().unknown_values, p.stats().warnings);
    }
    for doc in ["<provresultat xmlns='http://pingpong.se/schemas/nationellaprov/v1.1' from='x' tom='y'><kursresultat elev='a' kurs='K' skolform='GY'><provtillfälle uppdaterat='2016-01-01'><delprovsresultat><betyg>A</betyg><poäng>3</poäng><typ>A</typ></delprovsresultat></provtillfälle></kursresultat><kursresultat elev='b' kurs='K' skolform='GY'><provtillf",
                "<!DOCTYPE x [<!ENTITY a 'b'>]><provresultat/>", "<p:provresultat xmlns:p='http://pingpong.se/schemas/nationellaprov/v12.0'><p:kursresultat elev='&amp;x' kurs='K' skolform='GY'/></p:provresultat>", "<provresultat xmlns='urn:x'/>", "", "<a><b></a>"] {
        match nprov_sync::xml::Parser::new(doc.as_bytes(), Default::default()) {
            Err(e) => println!("DOC ERR {e}"),
            Ok(mut p) => loop { match p.next_item() { Ok(None) => break, Ok(Some(i)) => println!("{i:?}"), Err(e) => { println!("ERR {e}"); break } } }
        }
    }
}
