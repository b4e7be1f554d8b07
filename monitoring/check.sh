#!/usr/bin/env bash
# Checks the shipped operations files: the Prometheus rules and their unit tests, the scrape
# example, the Grafana dashboard, the metric names both use, and the systemd units.
#
#   bash monitoring/check.sh
#
# Quiet on success apart from the hardening scores and a summary line; on a failure it prints
# the failing tool's output and exits non-zero. Installs promtool (Debian package prometheus)
# and systemd-analyze (package systemd) when they are missing and it runs as root; a package
# installed here is never started (policy-rc.d) and is left disabled. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

RULES=monitoring/prometheus/nprov-sync.rules.yml
TESTS=monitoring/prometheus/nprov-sync.rules.test.yml
SCRAPE=monitoring/prometheus/scrape.example.yml
DASHBOARD=monitoring/grafana/nprov-sync.json
METRICS=monitoring/metrics.txt
UNITS=(systemd/nprov-sync.service systemd/nprov-sync-once.service)
TIMERS=(systemd/nprov-sync-once.timer)
# systemd-analyze's --threshold is on its internal 0..100 scale: 20 is an exposure of 2.0.
THRESHOLD=20

work=$(mktemp -d)
created_policy=""
cleanup() {
  rm -rf "$work"
  if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

fail() {
  echo "monitoring/check.sh: $*" >&2
  exit 1
}

# Runs a command with its output captured; prints the output only when it fails.
quiet() {
  if ! "$@" >"$work/out" 2>&1; then
    cat "$work/out" >&2
    fail "failed: $*"
  fi
}

apt_updated=""
# ensure COMMAND PACKAGE: installs the Debian package that provides COMMAND when it is missing.
ensure() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || fail "$cmd is missing; install the Debian package $pkg (or run as root)"
  command -v apt-get >/dev/null 2>&1 || fail "$cmd is missing and there is no apt-get to install $pkg"
  # Keep maintainer scripts from starting the package's service.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  if [ -z "$apt_updated" ]; then
    quiet apt-get update -qq
    apt_updated=1
  fi
  quiet env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg"
  # Installed only for this check: not started at boot either.
  if [ "$pkg" = prometheus ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable prometheus.service >/dev/null 2>&1 || true
  fi
  command -v "$cmd" >/dev/null 2>&1 || fail "installed $pkg but $cmd is still missing"
}

# ---------------------------------------------------------------- Prometheus
ensure promtool prometheus

quiet promtool check rules "$RULES"
rules=$(sed -n 's/.*SUCCESS: \([0-9]*\) rules found.*/\1/p' "$work/out")
[ -n "$rules" ] || fail "promtool check rules did not report a rule count"

quiet promtool test rules "$TESTS"
alert_tests=$(grep -c 'alertname:' "$TESTS")

# Every alert in the rules must have a test that expects it to fire and one that expects it not
# to (exp_alerts: []).
python3 - "$RULES" "$TESTS" <<'PY' || fail "alert test coverage"
import re, sys
rules, tests = (open(p, encoding="utf-8").read() for p in sys.argv[1:3])
alerts = re.findall(r"^\s*- alert:\s*(\S+)", rules, re.M)
missing = []
for a in alerts:
    quiet = re.search(r"alertname:\s*%s\s*,\s*exp_alerts:\s*\[\]" % a, tests) or re.search(
        r"alertname:\s*%s\s*\n\s*exp_alerts:\s*\[\]" % a, tests)
    fires = re.search(r"alertname:\s*%s\s*\n\s*exp_alerts:\s*\n\s*- exp_labels" % a, tests)
    if not quiet:
        missing.append(a + " (not firing)")
    if not fires:
        missing.append(a + " (firing)")
if missing:
    print("alerts without a test: " + ", ".join(missing), file=sys.stderr)
    sys.exit(1)
PY

# The scrape example names the rule file by its installed path; check it against this one.
sed "s|/etc/prometheus/rules/nprov-sync.rules.yml|$PWD/$RULES|" "$SCRAPE" >"$work/prometheus.yml"
quiet promtool check config "$work/prometheus.yml"

# ---------------------------------------------------------------- metric names, dashboard
# Extracts the PromQL expressions of the rules and the dashboard, checks that every metric name
# in them is listed in metrics.txt, and writes the dashboard's expressions (Grafana variables
# replaced) as recording rules so promtool can parse them.
python3 - "$RULES" "$DASHBOARD" "$METRICS" "$work/dashboard-rules.yml" <<'PY' || fail "metric names or dashboard"
import json, re, sys

rules_path, dash_path, metrics_path, out_path = sys.argv[1:5]

known = set()
for line in open(metrics_path, encoding="utf-8"):
    name = line.split("#", 1)[0].strip()
    if name:
        known.add(name)

def rule_exprs(text):
    """expr: values of a rules file: one line, or a block scalar (>-, |) indented below."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)expr:\s*(.*)$", lines[i])
        i += 1
        if not m:
            continue
        indent, rest = len(m.group(1)), m.group(2).strip()
        if rest[:1] in (">", "|"):
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            out.append(" ".join(block))
        else:
            out.append(rest.strip("'\""))
    return out

KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "atan2",
            # aggregation operators: `sum by (x) (…)` puts the grouping before the parenthesis
            "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
            "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
TOKEN = re.compile(r"""
    (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<labels>\{[^}]*\})
  | (?P<range>\[[^\]]*\])
  | (?P<grouping>\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\))
  | (?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)(?P<call>\s*\()?
  | (?P<other>.)
""", re.X | re.S)

def metric_names(expr):
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables
    names = []
    for m in TOKEN.finditer(expr):
        if m.group("ident") and not m.group("call") and m.group("ident") not in KEYWORDS:
            names.append(m.group("ident"))
    return names

def family_known(name):
    if name in known:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in known:
            return True
    return False

problems = []
for expr in rule_exprs(open(rules_path, encoding="utf-8").read()):
    for n in metric_names(expr):
        if not family_known(n):
            problems.append(f"{rules_path}: {n} (in: {expr})")

dash = json.load(open(dash_path, encoding="utf-8"))
exprs = []
def walk(panels):
    for p in panels:
        for t in p.get("targets", []):
            if t.get("expr"):
                exprs.append((p.get("title", "?"), t["expr"]))
        walk(p.get("panels", []))
walk(dash.get("panels", []))
if not exprs:
    problems.append(f"{dash_path}: no panel queries found")
for title, expr in exprs:
    for n in metric_names(expr):
        if not family_known(n):
            problems.append(f"{dash_path}: panel {title!r}: {n}")
variables = dash.get("templating", {}).get("list", [])
for v in variables:
    q = v.get("query")
    q = q.get("query", "") if isinstance(q, dict) else (q or "")
    m = re.match(r"\s*label_values\(\s*(.*),\s*\w+\s*\)\s*$", q)
    if m:
        exprs.append((f"variable {v.get('name')}", m.group(1)))
        for n in metric_names(m.group(1)):
            if not family_known(n):
                problems.append(f"{dash_path}: variable {v.get('name')}: {n}")
names = {v.get("name") for v in variables}
for needed in ("datasource", "source"):
    if needed not in names:
        problems.append(f"{dash_path}: template variable {needed!r} is missing")

if problems:
    print("metric names not in " + metrics_path + ":\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)

# Grafana's variables as a Prometheus server would see them after interpolation.
def interpolate(expr):
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)

rules = [{"record": f"dashboard:query_{i}", "expr": interpolate(e)} for i, (_, e) in enumerate(exprs)]
with open(out_path, "w", encoding="utf-8") as f:
    json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, indent=1)

PY
# (the JSON was already parsed above; this is the tool the README names)
quiet python3 -m json.tool "$DASHBOARD"
quiet promtool check rules "$work/dashboard-rules.yml"
dashboard_queries=$(sed -n 's/.*SUCCESS: \([0-9]*\) rules found.*/\1/p' "$work/out")

# ---------------------------------------------------------------- systemd
ensure systemd-analyze systemd

for unit in "${UNITS[@]}"; do
  if ! systemd-analyze security --offline=yes --threshold="$THRESHOLD" "$unit" >"$work/out" 2>&1; then
    cat "$work/out" >&2
    fail "$unit: exposure above $((THRESHOLD / 10)).$((THRESHOLD % 10))"
  fi
  grep -F 'Overall exposure level' "$work/out" | sed 's/^→ *//'
done
# verify: the one complaint allowed is the binary not being installed on this machine.
for unit in "${UNITS[@]}" "${TIMERS[@]}"; do
  systemd-analyze verify "$unit" >"$work/out" 2>&1 || true
  if grep -v -e 'Command /usr/bin/nprov-sync is not executable' "$work/out" | grep -q .; then
    cat "$work/out" >&2
    fail "systemd-analyze verify $unit"
  fi
done

echo "$rules rules, $alert_tests alert tests passed; $dashboard_queries dashboard queries parse; metric names match $METRICS"
