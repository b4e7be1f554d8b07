#!/usr/bin/env bash
# The provisioning mirror against a simulated provisioning API that answers like the real one:
# 100 ms per request and the published 10 requests a second per client IP. Prints, for a first
# pass into a fresh SQLite file and an unchanged second pass: wall time against the rate limit's
# bound (requests / 10 per second), requests, rows written, and the client's peak RSS.
#
#   bash benches/provisioning.sh [PERSONS]        # default 100 000 persons
#
# Builds the release binary first (cargo build --release). Not run in CI: a 100 000-person pass
# takes about four minutes by design.
set -euo pipefail
cd "$(dirname "$0")/.."
persons=${1:-100000}
# The register holds the results population's pupils and a tenth more; teachers come on top.
students=$(( persons * 10 / 11 ))
bin=${CARGO_TARGET_DIR:-target}/release/nprov-sync
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet --bin nprov-sync
work=$(mktemp -d)
trap 'kill "$sim" 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin" simulate --listen 127.0.0.1:0 --students "$students" --provisioning-persons "$persons" \
  --provisioning-latency 100ms --provisioning-rate-limit 10 >"$work/sim.out" 2>"$work/sim.err" &
sim=$!
for _ in $(seq 600); do
  grep -q 'base_url = ' "$work/sim.out" 2>/dev/null && break
  sleep 0.1
done
base=$(sed -n 's/.*base_url = "\([^"]*\)".*/\1/p' "$work/sim.out")
auth=${base%/provisioning/v1}/transaction
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/civic.key"
cat >"$work/nprov.toml" <<EOF
[database]
url = "sqlite://$work/bench.db"

[[provisioning]]
name = "bench"
base_url = "$base"
auth_url = "$auth"
entity_id = "https://bench.example/idp"
civic_no_key_file = "civic.key"
EOF

pass() {
  local label=$1
  /usr/bin/time -f '%e %M' -o "$work/time" "$bin" --config "$work/nprov.toml" sync --once \
    >"$work/$label.out" 2>"$work/$label.err"
  local wall rss requests log
  read -r wall rss <"$work/time"
  requests=$(sed -n 's/.*; \([0-9]*\) requests in .*/\1/p' "$work/$label.out")
  log=$(sqlite3 "$work/bench.db" 'SELECT count(*) FROM prov_change_log')
  awk -v l="$label" -v w="$wall" -v r="$requests" -v m="$rss" -v c="$log" 'BEGIN {
    b = r / 10;
    printf "%-10s %8.1f s wall   %6d requests   bound %7.1f s   ratio %.3f   peak RSS %6.1f MiB   prov_change_log %d\n",
      l, w, r, b, w / b, m / 1024, c }'
  sed -n 's/^bench: provisioning pass/  pass/p' "$work/$label.out"
}

echo "provisioning bench: $persons persons (+ teachers), 100 ms per request, 10 requests/s"
pass first
pass unchanged
changes=$(sqlite3 "$work/bench.db" "SELECT count(*) FROM prov_change_log WHERE at > (SELECT min(started_at) FROM prov_pass WHERE id = (SELECT max(id) FROM prov_pass))")
echo "rows logged by the unchanged pass: $changes"
