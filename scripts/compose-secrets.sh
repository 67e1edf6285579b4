#!/usr/bin/env bash
# Makes what deploy/compose.yaml mounts, in DIR (default deploy/compose-secrets/): a CA
# (ca.pem, its key ca.key stays here), server certificates for the services `postgres`
# and `redis` (ECDSA P-256, 1 year), their passwords, keygate's admin token and digest
# key, and the URLs keygate reads (verify-full to Postgres, rediss:// to Redis). Files
# that exist are kept, so running it again changes nothing.
#   sudo scripts/compose-secrets.sh [DIR]
# Run as root, it hands keygate's secrets to the image's user (10001, mode 0400: keygate
# refuses files others may read); the rest stay root's, 0600, for the services' own
# entrypoints (root) to copy. Not root: it says what to chown.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$root/deploy/compose-secrets}"
mkdir -p "$dir"
cd "$dir"
umask 077

random() { openssl rand -hex 32; }
[ -s ca.pem ] || openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 365 \
  -subj "/CN=keygate compose CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout ca.key -out ca.pem 2>/dev/null
for service in postgres redis; do
  [ -s "$service.pem" ] && continue
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "/CN=$service" \
    -keyout "$service.key" -out "$service.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$service" > "$service.ext"
  openssl x509 -req -in "$service.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 -sha256 \
    -extfile "$service.ext" -out "$service.pem" 2>/dev/null
  rm -f "$service.csr" "$service.ext" ca.srl
done
for secret in postgres-password redis-password admin-token digest-key; do
  [ -s "$secret" ] || random > "$secret"
done
[ -s database-url ] || printf 'postgres://keygate:%s@postgres:5432/keygate?sslmode=verify-full&sslrootcert=/run/secrets/ca.pem\n' \
  "$(cat postgres-password)" > database-url
[ -s redis-url ] || printf 'rediss://:%s@redis:6379/0\n' "$(cat redis-password)" > redis-url
chmod 0644 ca.pem postgres.pem redis.pem
chmod 0600 ca.key postgres.key redis.key postgres-password redis-password
keygate_reads=(database-url redis-url admin-token digest-key)
chmod 0400 "${keygate_reads[@]}"
if [ "$(id -u)" = 0 ]; then
  chown 10001:10001 "${keygate_reads[@]}"
else
  echo "not root: run  sudo chown 10001:10001 ${keygate_reads[*]/#/$dir/}" >&2
fi
echo "made in $dir"
