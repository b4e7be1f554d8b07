//! Parses a file and prints counts: `cargo run --release --example parse_file -- FILE`.
//! Handy for profiling the parser alone.
fn main() {
    let path = std::env::args().nth(1).expect("usage: parse_file FILE");
    let input = std::fs::File::open(&path).expect("open");
    let doc = nprov_sync::import::parse_document(input, Default::default(), |_| {});
    if let Some(e) = doc.error {
        eprintln!("{e}");
        std::process::exit(1);
    }
    println!(
        "{} records, {} provtillfällen, {} delprovsresultat",
        doc.stats.records, doc.stats.provtillfallen, doc.stats.delprovsresultat
    );
}
