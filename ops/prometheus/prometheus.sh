#!/usr/bin/env bash
# A local Prometheus that scrapes the mlrisk worker(s) with ops/prometheus/prometheus.yml and its alert rules.
# Usage: ops/prometheus/prometheus.sh install|start|stop|status|check|config
#   install  install prometheus and promtool (Debian's package) where we can: as root with apt-get
#   start    run /usr/bin/prometheus on 127.0.0.1:$MLRISK_PROMETHEUS_PORT (default 19090), storage under
#            $MLRISK_HOME/prometheus; no systemd service is used (Debian's own service, if any, keeps its :9090)
#   check    promtool: the configuration, the rules, and the rule unit tests under ops/prometheus/tests
#   config   print the configuration `start` would run with
# Settings (environment): MLRISK_PROMETHEUS_PORT; MLRISK_PROMETHEUS_TARGETS, comma-separated host:port of the
# workers' web ports (default 127.0.0.1:${MLRISK_WEB_PORT:-6066}); MLRISK_PROMETHEUS_SCRAPE_INTERVAL and
# MLRISK_PROMETHEUS_EVAL_INTERVAL (default: the file's).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
home="${MLRISK_HOME:-$root/.mlrisk}/prometheus"
conf="$home/prometheus.yml"
pidfile="$home/prometheus.pid"
log="$home/prometheus.log"
port="${MLRISK_PROMETHEUS_PORT:-19090}"
targets="${MLRISK_PROMETHEUS_TARGETS:-127.0.0.1:${MLRISK_WEB_PORT:-6066}}"
python="$root/.venv/bin/python"
[[ -x "$python" ]] || python=python3

if ! [[ "$port" =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
  echo "prometheus: configuration error: MLRISK_PROMETHEUS_PORT must be a port number in 1..65535, got $port" >&2
  exit 2
fi

how_to_install() {
  echo "prometheus: prometheus and promtool are not installed; as root: apt-get install prometheus" \
    "(Debian/Ubuntu), or put both binaries (https://prometheus.io/download/) on PATH" >&2
}

install() {
  if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    return 0
  fi
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    how_to_install
    return 0
  fi
  echo "prometheus: installing Debian's prometheus package"
  # no recommends: the node exporter is not ours to run
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
    >/dev/null
}

require() {
  if ! command -v "$1" >/dev/null; then
    how_to_install
    exit 1
  fi
}

render_config() {
  # The project's file with local targets and absolute rule paths; the file itself stays the compose one.
  MLRISK_PROMETHEUS_TARGETS="$targets" "$python" - "$here/prometheus.yml" <<'PY'
import os
import re
import sys
from pathlib import Path

import yaml

source = Path(sys.argv[1])
config = yaml.safe_load(source.read_text())
for key, name in (("scrape_interval", "MLRISK_PROMETHEUS_SCRAPE_INTERVAL"),
                  ("evaluation_interval", "MLRISK_PROMETHEUS_EVAL_INTERVAL")):
    value = os.environ.get(name)
    if value:
        if not re.fullmatch(r"[1-9][0-9]*(ms|s|m)", value):
            sys.exit(f"prometheus: configuration error: {name} must be a duration such as 15s, got {value}")
        config["global"][key] = value
config["rule_files"] = [str(source.parent / Path(path).name) for path in config["rule_files"]]
targets = [t.strip() for t in os.environ["MLRISK_PROMETHEUS_TARGETS"].split(",") if t.strip()]
if not targets or not all(re.fullmatch(r"[\w.\-]+:[0-9]{1,5}", t) for t in targets):
    sys.exit("prometheus: configuration error: MLRISK_PROMETHEUS_TARGETS must be host:port[,host:port...], "
             f"got {os.environ['MLRISK_PROMETHEUS_TARGETS']!r}")
for job in config["scrape_configs"]:
    if job["job_name"] == "mlrisk-worker":
        job["static_configs"] = [{"targets": targets}]
print(yaml.safe_dump(config, sort_keys=False), end="")
PY
}

running() {
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null
}

start() {
  if running; then
    echo "prometheus: already running (pid $(cat "$pidfile")) on http://127.0.0.1:${port}"
    return 0
  fi
  if answers; then
    echo "prometheus: configuration error: 127.0.0.1:${port} is taken by another process;" \
      "set MLRISK_PROMETHEUS_PORT to a free port" >&2
    return 1
  fi
  require prometheus
  mkdir -p "$home/data"
  render_config >"$conf"
  echo "prometheus: starting on http://127.0.0.1:${port}, scraping ${targets} (log: $log)"
  nohup prometheus --config.file="$conf" --storage.tsdb.path="$home/data" --storage.tsdb.retention.time=15d \
    --web.listen-address="127.0.0.1:${port}" >"$log" 2>&1 &
  echo $! >"$pidfile"
  local deadline=$((SECONDS + 30))
  until curl -fsS "http://127.0.0.1:${port}/-/ready" >/dev/null 2>&1; do
    if ! running; then
      echo "prometheus: it exited; last lines of $log:" >&2
      tail -n 20 "$log" >&2 || true
      return 1
    fi
    if ((SECONDS > deadline)); then
      echo "prometheus: not ready on 127.0.0.1:${port} in 30 s; see $log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "prometheus: ready; alerts at http://127.0.0.1:${port}/alerts"
}

stop() {
  if ! running; then
    rm -f "$pidfile"
    echo "prometheus: not running"
    return 0
  fi
  local pid
  pid="$(cat "$pidfile")"
  kill "$pid"
  for _ in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "prometheus: did not stop in 10 s; killing it"
    kill -9 "$pid" || true
  fi
  rm -f "$pidfile"
  echo "prometheus: stopped"
}

check() {
  require promtool
  local scratch
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' RETURN
  render_config >"$scratch/prometheus.yml"
  promtool check config --syntax-only "$here/prometheus.yml" >/dev/null
  promtool check config "$scratch/prometheus.yml"
  promtool check rules "$here"/alerts.yml
  promtool test rules "$here"/tests/*.yml
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  check) check ;;
  config) render_config ;;
  status) if running; then echo "prometheus: running (pid $(cat "$pidfile"))"; else echo "prometheus: stopped"; exit 1; fi ;;
  *) echo "usage: $0 install|start|stop|status|check|config" >&2; exit 2 ;;
esac
