#!/usr/bin/env python3
"""Extract and lint the PromQL expressions of the sshtail Grafana dashboards.

Library use (e.g. from an end-to-end test that runs every expression against
a real Prometheus):

    import dashboard_exprs
    for title, expr in dashboard_exprs.exprs("grafana/dashboards/nginx-overview.json"):
        ...

`exprs()` substitutes the Grafana template variables ($job, $instance,
$source -> ".*"; $__rate_interval, $__interval, $__range -> "1m"); pass
`variables={...}` to override any of them (for instance job="sshtail").
An expression that still uses an unknown variable raises ValueError.

Command line:

    dashboard_exprs.py DASHBOARD.json...           one expression per line
    dashboard_exprs.py --titles DASHBOARD.json...  "title<TAB>expr" per line
    dashboard_exprs.py --raw DASHBOARD.json...     without substitution
    dashboard_exprs.py --metrics FILE...           metric names used by
                                                   dashboards (.json) and
                                                   Prometheus rule files (.yml)
    dashboard_exprs.py --check-metrics FILE...     fail on metric names the
                                                   exporter does not expose
    dashboard_exprs.py --lint DASHBOARD.json...    structural checks (schema,
                                                   panel types, datasource,
                                                   variables, label filters)

Only the standard library is required (PyYAML is used for rule files when it
is installed; otherwise a small reader for the `expr:` keys is used).
"""
import argparse
import json
import re
import sys

# Metric name -> whether its series carry the `source` label. This is the
# exporter's documented metric set; histograms expand to _bucket/_sum/_count.
_COUNTERS_AND_GAUGES = {
    "nginx_http_requests_total": True,
    "nginx_http_response_bytes_total": True,
    "sshtail_lines_total": True,
    "sshtail_lines_unmatched_total": True,
    "sshtail_bytes_total": True,
    "sshtail_lines_too_long_total": True,
    "sshtail_queue_batches": False,
    "sshtail_queue_capacity_batches": False,
    "sshtail_source_up": True,
    "sshtail_source_offset_bytes": True,
    "sshtail_rotations_total": True,
    "sshtail_files_lost_total": True,
    "sshtail_source_last_line_timestamp_seconds": True,
    "sshtail_ssh_reconnects_total": True,
    "sshtail_series_overflow_total": True,
    "sshtail_build_info": False,
    "sshtail_config_last_reload_successful": False,
    "sshtail_glob_up": False,
    "sshtail_glob_files": False,
    "sshtail_shard_hosts": False,
    "sshtail_shard_handover_write_failures_total": False,
    "up": False,
}
_HISTOGRAMS = {
    "nginx_http_request_duration_seconds": True,
    "nginx_http_upstream_response_duration_seconds": True,
}
KNOWN_METRICS = dict(_COUNTERS_AND_GAUGES)
for _name, _has_source in _HISTOGRAMS.items():
    for _suffix in ("_bucket", "_sum", "_count"):
        KNOWN_METRICS[_name + _suffix] = _has_source

DEFAULT_VARIABLES = {
    "job": ".*",
    "instance": ".*",
    "source": ".*",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1m",
}

# $name, ${name}, ${name:format}, [[name]], [[name:format]]. `${1}` (a
# label_replace back-reference) starts with a digit and is left alone.
_VARIABLE = re.compile(
    r"\$\{([A-Za-z_]\w*)(?::[^}]*)?\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)(?::[^\]]*)?\]\]")


# ---------------------------------------------------------------------------
# Dashboards


def load_dashboard(path):
    with open(path, encoding="utf-8") as f:
        dash = json.load(f)
    # Accept the export format that wraps the model in {"dashboard": ...}.
    if "panels" not in dash and isinstance(dash.get("dashboard"), dict):
        dash = dash["dashboard"]
    return dash


def iter_panels(panels):
    """All panels, including those nested in (collapsed) rows."""
    for panel in panels or []:
        yield panel
        yield from iter_panels(panel.get("panels"))


def raw_exprs(path):
    """[(panel_title, expr)] exactly as written in the dashboard."""
    out = []
    for panel in iter_panels(load_dashboard(path).get("panels")):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if isinstance(expr, str) and expr.strip():
                out.append((panel.get("title", ""), expr))
    return out


def substitute(expr, variables=None):
    """Replace Grafana variables; raise ValueError on unknown ones."""
    values = dict(DEFAULT_VARIABLES)
    values.update(variables or {})

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise ValueError("unknown Grafana variable $%s in: %s" % (name, expr))
        return values[name]

    # Dashboards may spread an expression over several lines; the CLI prints
    # one expression per line.
    return re.sub(r"\s*\n\s*", " ", _VARIABLE.sub(repl, expr)).strip()


def exprs(path, variables=None):
    """[(panel_title, expr)] with the Grafana variables substituted."""
    return [(title, substitute(expr, variables)) for title, expr in raw_exprs(path)]


# ---------------------------------------------------------------------------
# Prometheus rule files


def rule_exprs(path):
    """[(alert or record name, expr)] of a Prometheus rules file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        import yaml  # noqa: PLC0415 (optional dependency)
    except ImportError:
        return _rule_exprs_without_yaml(text)
    doc = yaml.safe_load(text) or {}
    out = []
    for group in doc.get("groups") or []:
        for rule in group.get("rules") or []:
            out.append((rule.get("alert") or rule.get("record") or "", str(rule["expr"]).strip()))
    return out


def _rule_exprs_without_yaml(text):
    """Reads `- alert:`/`- record:` names and single-line or block `expr:`s."""
    out = []
    name = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^\s*-?\s*(alert|record):\s*(.*?)\s*$", line)
        if m:
            name = m.group(2).strip("'\"")
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*?)\s*$", line)
        if m:
            value = m.group(2)
            if value[:1] in ("|", ">"):
                indent = None
                block = []
                i += 1
                while i < len(lines):
                    nxt = lines[i]
                    if nxt.strip():
                        cur = len(nxt) - len(nxt.lstrip())
                        if indent is None:
                            indent = cur
                        if cur < indent:
                            break
                    block.append(nxt[indent or 0:])
                    i += 1
                sep = "\n" if value[0] == "|" else " "
                out.append((name, sep.join(block).strip()))
                continue
            if value[:1] == "'":
                value = value[1:-1].replace("''", "'")
            elif value[:1] == '"':
                value = json.loads(value)
            out.append((name, value))
        i += 1
    return out


# ---------------------------------------------------------------------------
# A small PromQL lexer: enough to find metric names and their matchers.

_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                 "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_OTHER_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
_TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>(?:0[xX][0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)[a-zA-Z0-9]*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>.)
""", re.X | re.S)


def _tokens(expr):
    """[(kind, text)]; a {...} or [...] block is one token with its content."""
    out = []
    pos = 0
    while pos < len(expr):
        ch = expr[pos]
        if ch in "{[":
            close = "}" if ch == "{" else "]"
            end = pos + 1
            while end < len(expr) and expr[end] != close:
                m = _TOKEN.match(expr, end)
                end = m.end() if m and m.lastgroup == "string" else end + 1
            if end >= len(expr):
                raise ValueError("unbalanced %r in: %s" % (ch, expr))
            out.append(("braces" if ch == "{" else "brackets", expr[pos + 1:end]))
            pos = end + 1
            continue
        m = _TOKEN.match(expr, pos)
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group()))
        pos = m.end()
    return out


def selectors(expr):
    """[(metric_name or None, matcher_text or None)] for each vector selector."""
    toks = _tokens(expr)
    out = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else (None, None)
        if kind == "ident":
            low = text.lower()
            if low in _LABEL_LIST_KEYWORDS:
                if nxt == ("op", "("):  # skip the label list
                    while i < len(toks) and toks[i] != ("op", ")"):
                        i += 1
            elif low in _OTHER_KEYWORDS:
                pass
            elif nxt == ("op", "("):
                pass  # function call
            elif low in _AGGREGATIONS and nxt[0] == "ident" and nxt[1].lower() in ("by", "without"):
                pass  # sum by (...) (...)
            else:
                out.append((text, nxt[1] if nxt[0] == "braces" else None))
                if nxt[0] == "braces":
                    i += 1
        elif kind == "braces":
            out.append((None, text))  # {__name__="..."} style selector
        i += 1
    return out


def metric_names(expr):
    names = set()
    for name, matchers in selectors(expr):
        if name is None:
            m = re.search(r"""__name__\s*=\s*["'`]([^"'`]*)""", matchers or "")
            names.add(m.group(1) if m else "{%s}" % matchers)
        else:
            names.add(name)
    return names


_MATCHER = re.compile(r"""([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)""")


def matchers(text):
    """{label: (op, value)} of a matcher block."""
    return {m.group(1): (m.group(2), m.group(3)[1:-1]) for m in _MATCHER.finditer(text or "")}


# ---------------------------------------------------------------------------
# Checks


def _label_values_metrics(query):
    """Metric selectors used by a label_values(...) variable query."""
    m = re.match(r"\s*label_values\((.*),\s*[A-Za-z_]\w*\s*\)\s*$", query, re.S)
    return metric_names(m.group(1)) if m else set()


def _variable_query(var):
    q = var.get("query")
    return q.get("query", "") if isinstance(q, dict) else (q or "")


def used_metrics(path):
    """{metric name: [where it is used]} for a dashboard or a rules file."""
    used = {}
    if path.endswith(".json"):
        items = raw_exprs(path)
        for var in load_dashboard(path).get("templating", {}).get("list", []):
            if var.get("type") == "query":
                for name in _label_values_metrics(_variable_query(var)):
                    used.setdefault(name, []).append("variable $" + var.get("name", "?"))
    else:
        items = rule_exprs(path)
    for title, expr in items:
        for name in metric_names(expr):
            used.setdefault(name, []).append(title)
    return used


def lint_dashboard(path):
    """Problems (strings) with a dashboard; empty when it is fine."""
    problems = []
    dash = load_dashboard(path)

    def problem(msg):
        problems.append("%s: %s" % (path, msg))

    if dash.get("schemaVersion") != 39:
        problem("schemaVersion is %r, want 39" % dash.get("schemaVersion"))
    if not dash.get("uid"):
        problem("dashboard has no uid")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problem("needs a variable `datasource` of type datasource with query prometheus")
    for name in ("job", "instance", "source"):
        var = variables.get(name)
        if not var or var.get("type") != "query":
            problem("needs a query variable `%s`" % name)
            continue
        if not (var.get("multi") and var.get("includeAll")):
            problem("variable `%s` must be multi-value with includeAll" % name)
        if not _variable_query(var).startswith("label_values("):
            problem("variable `%s` should use a label_values() query" % name)
        if (var.get("datasource") or {}).get("uid") != "${datasource}":
            problem("variable `%s` must use the ${datasource} data source" % name)

    ids = set()
    for panel in iter_panels(dash.get("panels")):
        title = panel.get("title", "")
        ptype = panel.get("type")
        if ptype not in ("timeseries", "stat", "row"):
            problem("panel %r has type %r (want timeseries, stat or row)" % (title, ptype))
        if panel.get("id") in ids:
            problem("panel %r reuses id %r" % (title, panel.get("id")))
        ids.add(panel.get("id"))
        if ptype == "row":
            continue
        if not panel.get("targets"):
            problem("panel %r has no targets" % title)
        for holder in [panel] + list(panel.get("targets") or []):
            uid = (holder.get("datasource") or {}).get("uid")
            if uid != "${datasource}":
                problem("panel %r uses data source %r, want ${datasource}" % (title, uid))
        for target in panel.get("targets") or []:
            expr = target.get("expr", "")
            for name, block in selectors(expr):
                if name not in KNOWN_METRICS:
                    continue  # reported by --check-metrics
                got = matchers(block)
                want = ["job", "instance"] + (["source"] if KNOWN_METRICS[name] else [])
                for label in want:
                    if got.get(label) != ("=~", "$" + label):
                        problem('panel %r: %s lacks %s=~"$%s"' % (title, name, label, label))
                if not KNOWN_METRICS[name] and "source" in got:
                    problem("panel %r: %s has no source label; do not filter it by source"
                            % (title, name))
            if (re.search(r"\b(rate|irate|increase)\(", expr)
                    and "[$__rate_interval]" not in expr and "[$__range]" not in expr):
                problem("panel %r: use [$__rate_interval] for rate()/increase()" % title)
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--raw", action="store_true", help="do not substitute variables")
    mode.add_argument("--titles", action="store_true", help='print "title<TAB>expr"')
    mode.add_argument("--metrics", action="store_true", help="print the metric names used")
    mode.add_argument("--check-metrics", action="store_true",
                      help="fail if a metric is not one the exporter exposes")
    mode.add_argument("--lint", action="store_true", help="structural dashboard checks")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)

    if args.metrics or args.check_metrics:
        bad = 0
        for path in args.files:
            for name, where in sorted(used_metrics(path).items()):
                known = name in KNOWN_METRICS
                if args.metrics:
                    print(name)
                elif not known:
                    bad += 1
                    print("%s: unknown metric %s (used in: %s)"
                          % (path, name, ", ".join(sorted(set(where)))), file=sys.stderr)
        return 1 if bad else 0

    if args.lint:
        problems = [p for path in args.files for p in lint_dashboard(path)]
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0

    for path in args.files:
        try:
            items = raw_exprs(path) if args.raw else exprs(path)
        except ValueError as e:
            print("%s: %s" % (path, e), file=sys.stderr)
            return 1
        for title, expr in items:
            if args.titles:
                print("%s\t%s" % (title, expr))
            else:
                print(re.sub(r"\s*\n\s*", " ", expr).strip() if args.raw else expr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
