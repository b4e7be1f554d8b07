#!/usr/bin/env bash
# Where a first sync's CPU goes, stage by stage: a school year of the simulated platform at memory
# speed (so the client's own work is all there is to measure) into a fresh SQLite file, the
# release binary as shipped.
#
#   bash benches/stages.sh [STUDENTS] [OUT_DIR]     # default 20 000 students, target/stages
#
# 1. Three unprofiled runs: the client's CPU (user + system, /usr/bin/time), the median quoted.
# 2. One run under `perf record --call-graph dwarf`: each sample goes to the innermost frame that
#    names a stage (benches/stages.awk), and a stage's CPU is its share of the samples times the
#    unprofiled median (perf's own overhead is not in it).
# 3. A flame graph of that run, OUT_DIR/flame.svg, when inferno is installed
#    (`cargo install inferno`): `perf script | inferno-collapse-perf | inferno-flamegraph`.
#
# Needs perf (Debian: linux-perf) and permission to profile one's own processes
# (kernel.perf_event_paranoid <= 2). Builds the release binary first (NO_BUILD=1 skips it;
# BIN=path measures another build of nprov-sync, e.g. the one before a change).
# Not run in CI: it measures, it asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
students=${1:-20000}
out=${2:-${CARGO_TARGET_DIR:-target}/stages}
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/nprov-sync}
command -v perf >/dev/null || { echo "stages.sh needs perf (Debian: apt-get install linux-perf)" >&2; exit 2; }
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet --bin nprov-sync
work=$(mktemp -d)
mkdir -p "$out"
trap 'kill "$sim" 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin" simulate --listen 127.0.0.1:0 --students "$students" >"$work/sim.out" 2>"$work/sim.err" &
sim=$!
for _ in $(seq 600); do
  grep -q 'source url = ' "$work/sim.out" 2>/dev/null && break
  sleep 0.1
done
url=$(sed -n 's/.*source url = "\([^"]*\)".*/\1/p' "$work/sim.out")
[ -n "$url" ] || { echo "the simulator did not start:" >&2; cat "$work/sim.err" >&2; exit 1; }
# Loopback and a simulator: the politeness limit would only measure itself here.
cat >"$work/nprov.toml" <<EOF
[database]
url = "sqlite://$work/stages.db"

[[source]]
url = "$url"
start = "2025-08-01T00:00"
rate_limit_per_second = 1000
EOF
sync() {
  rm -f "$work"/stages.db*
  "$@" "$bin" --config "$work/nprov.toml" sync --once --until 2026-06-13T00:00 \
    >"$work/sync.out" 2>"$work/sync.err"
}

cpus=()
for run in 1 2 3; do
  sync /usr/bin/time -f '%U %S %e %M' -o "$work/time"
  read -r user sys wall rss <"$work/time"
  cpus+=("$(awk -v u="$user" -v s="$sys" 'BEGIN {printf "%.2f", u + s}')")
  echo "run $run: ${user} s user + ${sys} s system, ${wall} s wall, peak RSS $((rss / 1024)) MiB"
done
cpu=$(printf '%s\n' "${cpus[@]}" | sort -n | sed -n 2p)
bytes=$(grep -o '[0-9]* bytes' "$work/sync.out" | awk '{b += $1} END {print b}')
rows=$("$bin" --config "$work/nprov.toml" status 2>/dev/null |
  sed -n 's/^tables: provomrade \([0-9]*\), provtillfalle \([0-9]*\), delprovsresultat \([0-9]*\).*/\1 \2 \3/p' |
  awk '{print $1 + $2 + $3}')
echo "$students students, a school year: $(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1e6}') MB of XML, $rows rows; client CPU median $cpu s"

sync perf record -q -F 1999 --call-graph dwarf,16384 -o "$out/perf.data" --
perf script -i "$out/perf.data" -F tid,ip,sym --no-inline 2>/dev/null >"$work/script.txt"
echo
printf '| stage | share of samples | CPU s |\n|---|---|---|\n'
awk -f benches/stages.awk "$work/script.txt" |
  while IFS=$'\t' read -r stage samples share; do
    printf '| %s | %s %% | %s |\n' "$stage" "$share" "$(awk -v c="$cpu" -v s="$share" 'BEGIN {printf "%.2f", c * s / 100}')"
  done
echo
if command -v inferno-collapse-perf >/dev/null && command -v inferno-flamegraph >/dev/null; then
  perf script -i "$out/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph >"$out/flame.svg"
  echo "flame graph: $out/flame.svg"
else
  echo "no flame graph: cargo install inferno, then run again (perf data in $out/perf.data)"
fi
