#!/usr/bin/env bash
# The "Limits at scale" rows of BENCHMARKS.md: release `keygate serve` processes with the
# default policy, measured from `keygate-bench load --target` (a process of its own) against
# the floor (a process of its own), in alternating rounds.
#
#   scripts/bench-limits.sh [RUNS] [SCENARIO...]
#
# Scenarios: local (SQLite, in-process limiter), redis (SQLite, limits leased from Redis),
# replicas (2 replicas on one Postgres and one Redis, calls alternating). Default: all three,
# RUNS times each (default 1), one after the other. Redis at $REDIS_URL
# (redis://127.0.0.1:6379), Postgres at $POSTGRES_URL (postgres://postgres@127.0.0.1:5432,
# database keygate_bench, made if missing). LOAD_ARGS overrides the load's settings.
set -euo pipefail
runs=${1:-1}
[[ $runs =~ ^[0-9]+$ ]] || { echo "usage: $0 [RUNS] [local|redis|replicas]..." >&2; exit 2; }
shift || true
scenarios=("${@:-local redis replicas}")
read -r -a scenarios <<<"${scenarios[*]}"
redis=${REDIS_URL:-redis://127.0.0.1:6379}
postgres=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
load_args=${LOAD_ARGS:---keys 500 --concurrency 1,64 --seconds 8 --rounds 4}
cd "$(dirname "$0")/.."
cargo build --release --quiet -p keygate --bin keygate && cargo build --release --quiet -p keygate-bench
bin=$PWD/target/release
work=$(mktemp -d)
pids=()
stop() {
  for pid in ${pids[@]+"${pids[@]}"}; do kill "$pid" 2>/dev/null || true; done
  for pid in ${pids[@]+"${pids[@]}"}; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap 'stop; rm -rf "$work"' EXIT
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')

# serve NAME PORT ARGS...: a keygate on 127.0.0.1:PORT, ready when it says so.
serve() {
  local name=$1 port=$2
  shift 2
  # In the work directory: the digest key file it makes stays there.
  (cd "$work" && KEYGATE_ADMIN_TOKEN=$token exec "$bin/keygate" serve --listen "127.0.0.1:$port" \
    --metrics-listen "127.0.0.1:$((port + 1))" "$@" >"$work/$name.log" 2>&1) &
  pids+=($!)
  for _ in $(seq 200); do
    grep -q "keygate is serving" "$work/$name.log" && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  cat "$work/$name.log" >&2
  return 1
}

for run in $(seq "$runs"); do
  for scenario in "${scenarios[@]}"; do
    prefix="keygate-bench:$run:$RANDOM:"
    case $scenario in
      local)
        serve a 50081 --database-url "sqlite://$work/local-$run.db"
        targets=http://127.0.0.1:50081
        ;;
      redis)
        serve a 50081 --database-url "sqlite://$work/redis-$run.db" \
          --rate-limit-store "$redis" --rate-limit-key-prefix "$prefix"
        targets=http://127.0.0.1:50081
        ;;
      replicas)
        # A database of its own, made afresh each run.
        psql "$postgres/postgres" -qc "DROP DATABASE IF EXISTS keygate_bench" -c "CREATE DATABASE keygate_bench"
        serve a 50081 --database-url "$postgres/keygate_bench" \
          --rate-limit-store "$redis" --rate-limit-key-prefix "$prefix"
        serve b 50083 --database-url "$postgres/keygate_bench" \
          --rate-limit-store "$redis" --rate-limit-key-prefix "$prefix"
        targets=http://127.0.0.1:50081,http://127.0.0.1:50083
        ;;
      *)
        echo "unknown scenario: $scenario" >&2
        exit 2
        ;;
    esac
    echo "== $scenario, run $run"
    # shellcheck disable=SC2086
    "$bin/keygate-bench" load --target "$targets" --admin-token "$token" $load_args
    for metrics in 50082 50084; do
      curl -sf "http://127.0.0.1:$metrics/metrics" 2>/dev/null \
        | grep -E '^keygate_rate_limit_lease_(renewals|waits)_total' | sed "s/^/  :$metrics /" || true
    done
    stop
  done
done
