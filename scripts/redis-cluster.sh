#!/usr/bin/env bash
# A Redis Cluster of three masters on this machine (no replicas), for the cluster tests
# (tests/api/redis_cluster.rs). Idempotent: nodes that answer are left alone, stopped ones
# are started again from their configuration (they rejoin with their slots), and a cluster
# that is not whole (no slots, or slots missing) is made anew.
#
#   scripts/redis-cluster.sh             start (or check) it; prints the variable to export
#   scripts/redis-cluster.sh stop        stop its nodes and forget the cluster
#
# Ports: $KEYGATE_TEST_REDIS_CLUSTER_PORTS (default "7101 7102 7103"); replicas per master:
# $KEYGATE_TEST_REDIS_CLUSTER_REPLICAS (default 0; with 1, half the ports are replicas). The
# variable printed: $KEYGATE_TEST_REDIS_CLUSTER_VAR (default KEYGATE_TEST_REDIS_CLUSTER_URL;
# scripts/redis-failover-cluster.sh starts a second cluster, with replicas). Files (each node's
# configuration and cluster state) in $KEYGATE_TEST_REDIS_CLUSTER_DIR (default
# /var/tmp/keygate-redis-cluster). The tests read KEYGATE_TEST_REDIS_CLUSTER_URL
# (redis+cluster://127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103) and restart a node they
# stop with `redis-server $dir/PORT.conf`.
set -euo pipefail

read -r -a ports <<< "${KEYGATE_TEST_REDIS_CLUSTER_PORTS:-7101 7102 7103}"
dir="${KEYGATE_TEST_REDIS_CLUSTER_DIR:-/var/tmp/keygate-redis-cluster}"
replicas="${KEYGATE_TEST_REDIS_CLUSTER_REPLICAS:-0}"
var="${KEYGATE_TEST_REDIS_CLUSTER_VAR:-KEYGATE_TEST_REDIS_CLUSTER_URL}"
mkdir -p "$dir"

cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }
up() { cli "$1" ping >/dev/null 2>&1; }

if [ "${1:-}" = stop ]; then
  for port in "${ports[@]}"; do up "$port" && cli "$port" shutdown nosave >/dev/null 2>&1 || true; done
  rm -f "$dir"/nodes-*.conf "$dir"/*.log
  exit 0
fi

for port in "${ports[@]}"; do
  # The node's whole configuration, so that a test can start it again as it was. A short
  # node timeout: a stopped master is marked failed (and the cluster down) in 2 s.
  cat > "$dir/$port.conf" <<EOF
port $port
bind 127.0.0.1
daemonize yes
save ""
appendonly no
cluster-enabled yes
cluster-node-timeout 2000
cluster-config-file $dir/nodes-$port.conf
dir $dir
logfile $dir/$port.log
pidfile $dir/$port.pid
EOF
  if ! up "$port"; then
    echo "starting Redis Cluster node 127.0.0.1:$port" >&2
    redis-server "$dir/$port.conf"
  fi
done
for port in "${ports[@]}"; do
  for _ in $(seq 1 50); do up "$port" && break; sleep 0.1; done
  up "$port" || { echo "Redis Cluster node 127.0.0.1:$port did not start (see $dir/$port.log)" >&2; exit 1; }
done

# Whole: every node knows all 16384 slots assigned, and the nodes are one cluster.
whole() {
  for port in "${ports[@]}"; do
    local info
    info="$(cli "$port" cluster info 2>/dev/null)" || return 1
    grep -q '^cluster_slots_assigned:16384' <<< "$info" || return 1
    grep -q "^cluster_known_nodes:${#ports[@]}" <<< "$info" || return 1
  done
}
ok() { for port in "${ports[@]}"; do cli "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1; done; }

if ! whole; then
  echo "creating a Redis Cluster on ${ports[*]}" >&2
  for port in "${ports[@]}"; do
    cli "$port" flushall >/dev/null 2>&1 || true
    cli "$port" cluster reset hard >/dev/null
  done
  nodes=()
  for port in "${ports[@]}"; do nodes+=("127.0.0.1:$port"); done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas "$replicas" --cluster-yes >/dev/null
fi
# A slot left migrating (a test stopped half-way through moving one) is settled.
if cli "${ports[0]}" cluster nodes | grep -q -- '->-\|-<-'; then
  redis-cli --cluster fix "127.0.0.1:${ports[0]}" --cluster-yes >/dev/null 2>&1 || true
fi
for _ in $(seq 1 100); do ok && break; sleep 0.1; done
ok || { echo "the Redis Cluster on ${ports[*]} is not ok" >&2; exit 1; }

url="redis+cluster://$(printf '127.0.0.1:%s,' "${ports[@]}")"
echo "$var=${url%,}"
