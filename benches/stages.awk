# Attributes CPU samples to the stages of a sync, for benches/stages.sh.
#
# Input: `perf script -F tid,ip,sym --no-inline` of a `perf record --call-graph dwarf` run: a header
# line per sample, then its frames leaf first, one per line, then a blank line. A sample belongs
# to the first (innermost) frame that names a stage: a malloc called while building a record
# counts as building, the kernel's copy behind SQLite's pwrite counts as SQL. Frames that belong to
# no stage (the allocator, memcpy, the kernel, std) are looked through.
#
# Output: one line per stage, "stage<TAB>samples<TAB>share in percent", largest first.

function stage_of(sym) {
    # SQL first: sqlx and SQLite do their own allocation, UTF-8 checks and hashing.
    if (sym ~ /sqlite3|sqlx_sqlite|sqlx_core|sqlx_postgres|libsqlite3_sys|^pager|^btree|^balance|^unix(Write|Read|Sync)|^wal[A-Z]|getPageNormal|^pcache|getAndInitPage|allocateBtreePage|insertCell|dropCell|clearCell|^vdbe/)
        return "SQL: SQLite and sqlx executing statements"
    if (sym ~ /sha2::|[Ss]ha256|digest_blocks/) return "hashing (SHA-256 of raw bytes and of content)"
    if (sym ~ /domain::canonical/) return "canonical form"
    if (sym ~ /store::replace/) return "comparing (the replace plan)"
    if (sym ~ /store::apply|store::sqlite|store::postgres|store::sql::/)
        return "SQL: building statements and binding values (our store code)"
    if (sym ~ /xml::build|nprov_sync::domain::/) return "building records"
    if (sym ~ /xml::lexer|quick_xml|xml::chars|xml::counter|xml::scan|xml::parser|xml::version/)
        return "lexing and scanning XML"
    if (sym ~ /reqwest|hyper|h2::|flate2|miniz|rustls|tower_http|http_body|nprov_sync::source::|tokio::net|mio::|nprov_sync::sync::fetch/)
        return "HTTP and decompression"
    if (sym ~ /flume|crossbeam|tokio::runtime|tokio::sync|parking_lot|futures_channel|tokio::task|std::sync::mpmc/)
        return "threads, channels and scheduling"
    if (sym ~ /_dl_|dl_main|^_start$|clap::|clap_builder|tracing|nprov_sync::config|nprov_sync::telemetry|migrate/)
        return "start-up, configuration and logging"
    return ""
}

function finish() {
    if (stage == "") stage = "other (allocator, kernel or frames perf could not name)"
    count[stage]++
    total++
    in_sample = 0
}

/^[^\t]/ { if (in_sample) finish(); stage = ""; in_sample = 1; next }
/^$/ { next }
{
    if (stage != "") next
    sym = $2
    for (i = 3; i <= NF; i++) sym = sym " " $i
    stage = stage_of(sym)
}

END {
    if (in_sample) finish()
    for (s in count) printf "%s\t%d\t%.1f\n", s, count[s], 100 * count[s] / total | "sort -t'\t' -k2,2nr"
}
