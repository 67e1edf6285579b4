#!/usr/bin/env bash
# A second Redis Cluster, of the failover tests' own (tests/api/redis_failover.rs): three
# masters, each with a replica, on ports 7111-7116, so that a test may promote a replica
# without touching the cluster of scripts/redis-cluster.sh. Same commands and behaviour as
# that script (idempotent; `stop`); prints KEYGATE_TEST_REDIS_FAILOVER_URL=... to export.
set -euo pipefail
export KEYGATE_TEST_REDIS_CLUSTER_PORTS="${KEYGATE_TEST_REDIS_FAILOVER_PORTS:-7111 7112 7113 7114 7115 7116}"
export KEYGATE_TEST_REDIS_CLUSTER_DIR="${KEYGATE_TEST_REDIS_FAILOVER_DIR:-/var/tmp/keygate-redis-failover}"
export KEYGATE_TEST_REDIS_CLUSTER_REPLICAS=1
export KEYGATE_TEST_REDIS_CLUSTER_VAR=KEYGATE_TEST_REDIS_FAILOVER_URL
exec "$(dirname "$0")/redis-cluster.sh" "$@"
