#!/usr/bin/env bash
# Memory with 1,000,000 users, items and orders loaded, and how long their batch_init takes. Starts the whole
# system (the supervisor with the default config, as `npm start` does) on its own ports with a temporary data
# directory, loads, waits SETTLE seconds, prints the RSS of every process and their sum, and stops it.
# Usage: npm run build && bash bench/memory.sh   (N, SETTLE, PORT_BASE override)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-1000000}
base=${PORT_BASE:-34000}
data=$(mktemp -d /tmp/shop-memory-XXXXXX)
url=http://127.0.0.1:$((base + 2))
export SHOP_DATA_DIR=$data SHOP_NATS_PORT=$base SHOP_REDIS_PORT=$((base + 1)) SHOP_HTTP_PORT=$((base + 2)) SHOP_ADMIN_PORT=0
export SHOP_NATS_URL=nats://127.0.0.1:$base SHOP_REDIS_URL=redis://127.0.0.1:$((base + 1))
node dist/src/main.js supervisor > "$data/supervisor.log" 2>&1 &
sup=$!
trap 'kill -INT $sup 2>/dev/null; wait $sup 2>/dev/null; rm -rf "$data"' EXIT
# Ready when the owner of the item's partition answers: a missing item is 400 not_found.
ready=
for _ in $(seq 1 200); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/stock/find/x")" = 400 ] && ready=1 && break
  sleep 0.3
done
[ -n "$ready" ] || { echo "the system did not answer within 60 s; the end of its log:" >&2; tail -20 "$data/supervisor.log" >&2; exit 1; }
timed() { local t0; t0=$(date +%s%N); curl -fsS -X POST "$url$1" > /dev/null; echo "$(( ($(date +%s%N) - t0) / 1000000 ))"; }
users=$(timed "/payment/batch_init/$n/100")
items=$(timed "/stock/batch_init/$n/100/1")
orders=$(timed "/orders/batch_init/$n/$n/$n/1")
echo "batch_init of $n each: users $users ms, items $items ms, orders $orders ms, in all $((users + items + orders)) ms"
sleep "${SETTLE:-5}"
total=0
for p in $sup $(pgrep -P $sup); do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$p/status")
  total=$((total + rss))
  printf '%6d MiB  %s\n' $((rss / 1024)) "$(tr '\0\n' '  ' < "/proc/$p/cmdline" | cut -c1-70)"
done
echo "RSS of all processes: $((total / 1024)) MiB"
