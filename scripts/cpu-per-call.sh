#!/usr/bin/env bash
# Where a call's CPU goes: the floor, a release `keygate serve` (default policy, SQLite) and
# the load generator each run as a process of their own, and their CPU time (user + system,
# from /proc) is sampled through `keygate-bench load --target --floor`'s alternating
# rounds. Each round's CPU is charged to the server being measured (the idle one's
# barely moves), and divided by its calls. With --rate-limit-store, Redis' CPU is read too.
#
#   scripts/cpu-per-call.sh [keygate serve flags...]
#   e.g. scripts/cpu-per-call.sh --rate-limit-store redis://127.0.0.1:6379
#
# Env: SECONDS_MEASURED (40), ROUNDS (4), CONCURRENCY (64), KEYS (500), KEYGATE_BIN_DIR,
# LOAD_ARGS (more `keygate-bench load` flags, e.g. --uniform), METRICS (an address given to
# keygate as --metrics-listen: its lease renewals per 1,000 decisions are printed at the
# end). At c=64 both processes keep the two cores busy, so throughput × floor is the ratio
# of the totals.
set -euo pipefail
measured=${SECONDS_MEASURED:-40}
cd "$(dirname "$0")/.."
# KEYGATE_BIN_DIR: binaries built elsewhere (keygate and keygate-bench), e.g. two builds
# compared on one host, alternating; otherwise this tree's, built here.
if [ -n "${KEYGATE_BIN_DIR:-}" ]; then
  bin=$KEYGATE_BIN_DIR
else
  cargo build --release --quiet -p keygate --bin keygate && cargo build --release --quiet -p keygate-bench
  bin=$PWD/target/release
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
cd "$work"

"$bin/keygate-bench" floor >floor.log 2>/dev/null &
floor=$!
KEYGATE_ADMIN_TOKEN=$token "$bin/keygate" serve --listen 127.0.0.1:50091 \
  --database-url "sqlite://$work/kg.db" "$@" >kg.log 2>&1 &
keygate=$!
for _ in $(seq 200); do
  grep -q "listening on" floor.log && grep -q "keygate is serving" kg.log && break
  sleep 0.1
done
grep -q "keygate is serving" kg.log || { cat kg.log >&2; exit 1; }
"$bin/keygate-bench" load --target http://127.0.0.1:50091 --admin-token "$token" \
  --floor "$(awk '/listening on/ {print $3}' floor.log)" --keys "${KEYS:-500}" \
  --concurrency "${CONCURRENCY:-64}" --seconds "$measured" --rounds "${ROUNDS:-4}" \
  --warmup-seconds 0 ${LOAD_ARGS:-} >load.log 2>/dev/null &
load=$!
# Redis' CPU only when keygate uses it: the Redis serving its --rate-limit-store port.
redis=
if [[ " $* " == *" --rate-limit-store "* ]]; then
  port=$(sed -E 's|.*--rate-limit-store [a-z]+://([^/ ]*:)?([0-9]+).*|\2|' <<<" $* ")
  redis=$(pgrep -f "redis-server .*:${port}" | head -1 || true)
fi
cpu() { if [ -n "$1" ]; then awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; else echo 0; fi; }
while kill -0 $load 2>/dev/null; do
  # After the keys are made and warmed: the measured rounds (no warm-up, every call counts).
  grep -q "rounds x" load.log && echo "$(cpu $floor) $(cpu $keygate) $(cpu $load) $(cpu "$redis")" >>samples
  sleep 0.1
done
grep "c=" load.log
python3 - "$measured" "$(getconf CLK_TCK)" <<'EOF'
import re, sys
measured, tick = float(sys.argv[1]), float(sys.argv[2])
calls = {}
for line in open("load.log"):
    m = re.match(r"(floor|keygate).*c=\d+\s+(\d+)/s", line)
    if m:
        calls[m.group(1)] = float(m.group(2)) * measured
rows = [list(map(float, l.split())) for l in open("samples")]
spent = {"floor": [0.0] * 4, "keygate": [0.0] * 4}
for a, b in zip(rows, rows[1:]):
    if 0 in a[:3] or 0 in b[:3]:
        continue  # a process had gone
    d = [y - x for x, y in zip(a, b)]
    if d[0] or d[1]:
        spent["floor" if d[0] > d[1] else "keygate"] = [s + x for s, x in zip(spent["floor" if d[0] > d[1] else "keygate"], d)]
print("µs of CPU per call     floor server  keygate server  load generator  redis   total")
for server, cpu in spent.items():
    f, k, c, r = (x / tick / calls[server] * 1e6 for x in cpu)
    print(f"while measuring {server:8} {f:12.2f} {k:15.2f} {c:15.2f} {r:7.2f} {f + k + c + r:7.2f}")
EOF
# Renewals of high-rate limits' slices per 1,000 decisions (the whole run: warm-up, and the
# hand-backs of idle slices while the floor is measured, included).
if [ -n "${METRICS:-}" ]; then
  curl -s "http://$METRICS/metrics" | awk '
    /^keygate_decisions_total/ { d += $NF }
    /^keygate_rate_limit_lease_renewals_total/ { r = $NF }
    /^keygate_rate_limit_lease_round_trips_total/ { t = $NF }
    END { printf "decisions %d, slices renewed %d (%.1f per 1,000), round trips %d (%.1f per 1,000)\n", d, r, d ? r * 1000 / d : 0, t, d ? t * 1000 / d : 0 }'
fi
