#!/usr/bin/env bash
# Run before `npm start` and `npm test` (prestart/pretest): makes sure nats-server and redis-server
# (the Debian packages) are installed and node_modules matches package-lock.json.
# `ensure-deps.sh test` (npm test, .ci/run) also wants Debian's docker-compose: test/unit/deploy.test.ts checks
# deploy/docker-compose.yml with `docker-compose config`, which needs no container engine. `test` and `monitor`
# (npm run monitor) want Debian's prometheus (2.42, with promtool): test/unit/monitoring.test.ts runs `promtool` on the
# alert rules, test/integration/prometheus-live.test.ts scrapes a real stack with it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The Debian packages put nats-server in /usr/sbin, which is often not on a non-root PATH.
have() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/local/sbin/$1" ]
}

# The packages start system services on 4222 and 6379, the local stack's ports. Stop and disable the
# ones just installed (a service that was there before is the user's business), best effort: without
# systemd (containers) `service` or the pid file is all there is.
stop_system_services() {
  local svc pidfile
  for svc in "$@"; do
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      systemctl stop "$svc" >/dev/null 2>&1 || true
      systemctl disable "$svc" >/dev/null 2>&1 || true
    elif command -v service >/dev/null 2>&1; then
      service "$svc" stop >/dev/null 2>&1 || true
    fi
  done
  case " $* " in
    *' redis-server '*)
      for pidfile in /run/redis/redis-server.pid /var/run/redis/redis-server.pid; do
        if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
      done
      ;;
  esac
}

# As root: apt-get install of the packages given (options first, e.g. --no-install-recommends).
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y "$@"
}

missing=()
for bin in nats-server redis-server; do
  have "$bin" || missing+=("$bin")
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "ensure-deps: ${missing[*]} not found; installing the Debian packages nats-server and redis-server" >&2
    apt_install nats-server redis-server
    stop_system_services "${missing[@]}"
  else
    echo "ensure-deps: ${missing[*]} not found (looked on PATH and in /usr/sbin). Install them with:" >&2
    echo 'sudo apt-get update && sudo apt-get install -y nats-server redis-server'
    exit 1
  fi
fi

# Without recommends: the package recommends docker.io, a container engine the check does not use.
if [ "${1:-}" = test ] && ! have docker-compose; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "ensure-deps: docker-compose not found; installing the Debian package docker-compose" >&2
    apt_install --no-install-recommends docker-compose
  else
    # The other tests need no docker-compose: they run, and test/unit/deploy.test.ts fails with this command.
    echo "ensure-deps: docker-compose not found; test/unit/deploy.test.ts will fail until it is installed with:" >&2
    echo 'sudo apt-get update && sudo apt-get install -y --no-install-recommends docker-compose'
  fi
fi

# Without recommends: the package recommends prometheus-node-exporter, which the shop does not use.
if { [ "${1:-}" = test ] || [ "${1:-}" = monitor ]; } && ! have prometheus; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "ensure-deps: prometheus not found; installing the Debian package prometheus" >&2
    apt_install --no-install-recommends prometheus
    # It starts a system Prometheus on :9090, the port of npm run monitor.
    stop_system_services prometheus
  else
    echo "ensure-deps: prometheus not found; the monitoring tests and npm run monitor need it. Install it with:" >&2
    echo 'sudo apt-get update && sudo apt-get install -y --no-install-recommends prometheus'
    if [ "${1:-}" = monitor ]; then exit 1; fi
  fi
fi

if [ ! -d node_modules ] || [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "ensure-deps: node_modules is missing or older than package-lock.json; running npm ci" >&2
  npm ci
fi
