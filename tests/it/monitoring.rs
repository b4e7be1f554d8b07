//! The shipped monitoring files use only metrics the daemon exports.

use nprov_sync::metrics::FAMILIES;

/// `monitoring/metrics.txt`: family names, except those Prometheus itself generates.
fn listed() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/metrics.txt");
    let text = std::fs::read_to_string(&path).expect("monitoring/metrics.txt");
    text.lines()
        .filter(|l| !l.contains("prometheus-generated"))
        .filter_map(|l| l.split('#').next())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_metric_the_rules_and_dashboard_may_use_is_exported() {
    // monitoring/check.sh holds the rules and the dashboard to metrics.txt; this holds
    // metrics.txt to the daemon.
    for name in listed() {
        assert!(
            FAMILIES.contains(&name.as_str()),
            "{name} is in monitoring/metrics.txt but the daemon does not export it"
        );
    }
}

#[test]
fn every_metric_of_the_daemon_is_listed_for_the_dashboard_and_rules() {
    let listed = listed();
    for name in FAMILIES.iter().filter(|f| f.starts_with("nprov_")) {
        assert!(
            listed.iter().any(|l| l == name),
            "{name} is exported but missing from monitoring/metrics.txt"
        );
    }
}

#[test]
fn the_rules_and_the_dashboard_name_no_metric_outside_the_list() {
    // An independent check of the same rule (check.sh does it with promtool on CI): every
    // `nprov_…` identifier in the files is a listed family or one of its series suffixes.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring");
    let listed = listed();
    for file in ["prometheus/nprov-sync.rules.yml", "grafana/nprov-sync.json"] {
        let text = std::fs::read_to_string(dir.join(file)).expect(file);
        let mut rest = text.as_str();
        while let Some(at) = rest.find("nprov_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|base| listed.iter().any(|l| l == base))
                .unwrap_or(name);
            // Rule and alert names (NprovSync…) are not metrics; identifiers start lower-case.
            assert!(
                listed.iter().any(|l| l == family),
                "{file} uses {name}, which is not in monitoring/metrics.txt"
            );
            rest = &tail[end..];
        }
    }
}
