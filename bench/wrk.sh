#!/usr/bin/env bash
# Throughput and latency of GET /stock/find and POST /stock/add with wrk, against a running system
# (npm start). Usage: bench/wrk.sh [URL] — defaults to http://127.0.0.1:8000; CONNECTIONS, DURATION, ITEMS override.
set -euo pipefail
url=${1:-http://127.0.0.1:8000}
connections=${CONNECTIONS:-256}
duration=${DURATION:-20s}
items=${ITEMS:-100000}
threads=${THREADS:-2}
here=$(cd "$(dirname "$0")" && pwd)
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk"; exit 1; }

start=$(date +%s%N)
curl -fsS -X POST "$url/stock/batch_init/$items/1000000000/1" >/dev/null
echo "batch_init of $items items: $(( ($(date +%s%N) - start) / 1000000 )) ms"

for scenario in find add; do
  echo "== $scenario: $connections connections, $duration, $threads wrk threads"
  ITEMS=$items wrk -t"$threads" -c"$connections" -d"$duration" --latency -s "$here/wrk/$scenario.lua" "$url"
done
