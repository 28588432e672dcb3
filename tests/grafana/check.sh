#!/usr/bin/env bash
# Static checks of the Grafana dashboards, provisioning files and Prometheus
# alert rules under grafana/. Needs promtool (Debian package `prometheus`)
# and python3; PyYAML (python3-yaml) is used when present.
#
#   bash tests/grafana/check.sh
#
# Runs every check, prints PASS/FAIL for each and exits non-zero if any failed.
set -euo pipefail

cd "$(dirname "$0")/../.."

ALERTS=grafana/alerts.yml
ALERT_TESTS=grafana/alerts_test.yml
DASHBOARDS=(grafana/dashboards/nginx-overview.json grafana/dashboards/exporter-health.json)
HELPER=tests/grafana/dashboard_exprs.py

for tool in promtool python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "check.sh: $tool not found (promtool: apt-get install prometheus)" >&2
    exit 2
  fi
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

failures=0

# check DESCRIPTION COMMAND...: runs COMMAND, shows its output on failure.
check() {
  local desc=$1
  shift
  if "$@" >"$TMP/out" 2>&1; then
    echo "PASS  $desc"
  else
    echo "FAIL  $desc"
    sed 's/^/      /' "$TMP/out"
    failures=$((failures + 1))
  fi
}

# Every dashboard expression, with Grafana variables substituted, becomes a
# recording rule of a temporary rules file that promtool must accept.
check_dashboard_exprs() {
  local out rules="$TMP/dashboard_rules.yml" n=0 expr q="'"
  out=$(python3 "$HELPER" "${DASHBOARDS[@]}") || return 1
  {
    echo "groups:"
    echo "  - name: dashboard_exprs"
    echo "    rules:"
    while IFS= read -r expr; do
      [ -n "$expr" ] || continue
      n=$((n + 1))
      echo "      - record: dashboard:expr_$n"
      # YAML single-quoted scalar: only ' needs escaping (as '').
      echo "        expr: '${expr//$q/$q$q}'"
    done <<<"$out"
  } >"$rules"
  if [ "$n" -eq 0 ]; then
    echo "no expressions found in ${DASHBOARDS[*]}"
    return 1
  fi
  if ! promtool check rules "$rules"; then
    echo "expressions (dashboard:expr_N is line N):"
    python3 "$HELPER" --titles "${DASHBOARDS[@]}" | cat -n
    return 1
  fi
  echo "$n expressions are valid PromQL"
}

# Dashboards are kept in `python3 -m json.tool --indent 2` layout.
check_json_layout() {
  local f rc=0
  for f in "${DASHBOARDS[@]}"; do
    if ! python3 -m json.tool --indent 2 "$f" | cmp -s - "$f"; then
      echo "$f is not laid out like 'python3 -m json.tool --indent 2' output; reformat it with:"
      echo "  python3 -m json.tool --indent 2 $f > $f.tmp && mv $f.tmp $f"
      rc=1
    fi
  done
  return "$rc"
}

check_provisioning() {
  python3 - <<'EOF'
import sys
try:
    import yaml
except ImportError:
    print("PyYAML missing: only checking that the files exist")
    import os
    sys.exit(0 if all(os.path.isfile(p) for p in (
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/sshtail.yml")) else 1)

problems = []
ds = yaml.safe_load(open("grafana/provisioning/datasources/prometheus.yml"))
if ds.get("apiVersion") != 1:
    problems.append("datasources: apiVersion must be 1")
entries = ds.get("datasources") or []
prom = [d for d in entries if d.get("uid") == "prometheus"]
if len(prom) != 1:
    problems.append("datasources: need exactly one data source with uid prometheus")
else:
    d = prom[0]
    if d.get("type") != "prometheus":
        problems.append("datasources: uid prometheus must have type prometheus")
    if d.get("url") != "${PROMETHEUS_URL}":
        problems.append("datasources: url must be ${PROMETHEUS_URL}")
    for key in ("name", "access"):
        if not d.get(key):
            problems.append("datasources: missing %s" % key)

dp = yaml.safe_load(open("grafana/provisioning/dashboards/sshtail.yml"))
if dp.get("apiVersion") != 1:
    problems.append("dashboards: apiVersion must be 1")
providers = dp.get("providers") or []
if len(providers) != 1:
    problems.append("dashboards: expected one provider")
for p in providers:
    if p.get("type") != "file" or not p.get("name"):
        problems.append("dashboards: provider needs a name and type file")
    if (p.get("options") or {}).get("path") != "/var/lib/grafana/dashboards/sshtail":
        problems.append("dashboards: options.path must be /var/lib/grafana/dashboards/sshtail")
for msg in problems:
    print(msg)
sys.exit(1 if problems else 0)
EOF
}

check "promtool check rules $ALERTS" promtool check rules "$ALERTS"
check "promtool test rules $ALERT_TESTS" promtool test rules "$ALERT_TESTS"
for f in "${DASHBOARDS[@]}"; do
  check "$f parses as JSON" python3 -m json.tool "$f"
done
check "dashboards use 2-space JSON layout" check_json_layout
check "dashboard structure, variables and label filters" python3 "$HELPER" --lint "${DASHBOARDS[@]}"
check "dashboard expressions are valid PromQL" check_dashboard_exprs
check "dashboards and alerts use only exported metrics" \
  python3 "$HELPER" --check-metrics "${DASHBOARDS[@]}" "$ALERTS"
check "provisioning files" check_provisioning

if [ "$failures" -ne 0 ]; then
  echo "$failures check(s) failed"
  exit 1
fi
echo "all grafana checks passed"
