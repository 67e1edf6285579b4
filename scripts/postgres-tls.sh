#!/usr/bin/env bash
# Turns on TLS for the machine's Postgres and makes a second database, test_tls, that
# answers only over TLS, for tests/api/postgres_tls.rs. Idempotent: run again, it keeps
# the certificates it made and rewrites nothing twice. The plaintext `test` database and
# its trust rule are left as they are.
#
# Made here (openssl), in $KEYGATE_TEST_POSTGRES_TLS_DIR (default /var/tmp/keygate-postgres-tls),
# what the tests read:
#   ca.pem              the CA that signed the server's and the client's certificates
#   other-ca.pem        a CA that signed nothing Postgres shows (the "wrong CA")
#   client.pem/.key     a client certificate for the role keygate_tls_cert
# and, in Postgres's data directory (owned by postgres, key 0600), server.pem/.key: a
# certificate for the DNS name `localhost` only, so `127.0.0.1` is a name it lacks.
set -euo pipefail

dir="${KEYGATE_TEST_POSTGRES_TLS_DIR:-/var/tmp/keygate-postgres-tls}"
psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d postgres "$@"; }

mkdir -p "$dir"
cd "$dir"
if [ ! -s ca.pem ] || [ ! -s other-ca.pem ] || [ ! -s client.key ] || [ ! -s server.key ]; then
  rm -f ./*.pem ./*.key ./*.csr ./*.srl ./*.ext
  for ca in ca other-ca; do
    openssl req -x509 -new -nodes -newkey rsa:2048 -days 3650 -sha256 -subj "/CN=keygate test $ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$ca.key" -out "$ca.pem" 2>/dev/null
  done
  openssl req -new -nodes -newkey rsa:2048 -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
  printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
    -extfile server.ext -out server.pem 2>/dev/null
  # Postgres's cert authentication takes the role from the certificate's CN.
  openssl req -new -nodes -newkey rsa:2048 -subj "/CN=keygate_tls_cert" -keyout client.key -out client.csr 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' > client.ext
  openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
    -extfile client.ext -out client.pem 2>/dev/null
  rm -f ./*.csr ./*.srl ./*.ext
fi
chmod 0600 ./*.key

data="$(psql_admin -Atc 'SHOW data_directory')"
hba="$(psql_admin -Atc 'SHOW hba_file')"
install -d -o postgres -g postgres -m 0700 "$data/keygate-tls"
install -o postgres -g postgres -m 0644 server.pem ca.pem "$data/keygate-tls/"
install -o postgres -g postgres -m 0600 server.key "$data/keygate-tls/"

psql_admin -c "ALTER SYSTEM SET ssl = on" \
  -c "ALTER SYSTEM SET ssl_cert_file = '$data/keygate-tls/server.pem'" \
  -c "ALTER SYSTEM SET ssl_key_file = '$data/keygate-tls/server.key'" \
  -c "ALTER SYSTEM SET ssl_ca_file = '$data/keygate-tls/ca.pem'"
psql_admin -Atc "SELECT 1 FROM pg_database WHERE datname = 'test_tls'" | grep -q 1 \
  || psql_admin -c 'CREATE DATABASE test_tls'
psql_admin -Atc "SELECT 1 FROM pg_roles WHERE rolname = 'keygate_tls_cert'" | grep -q 1 \
  || psql_admin -c 'CREATE ROLE keygate_tls_cert LOGIN'
# keygate migrates test_tls as either role; the certificate's role owns nothing else.
psql_admin -c 'GRANT ALL ON DATABASE test_tls TO keygate_tls_cert' \
  -d test_tls -c 'GRANT ALL ON SCHEMA public TO keygate_tls_cert'

# First match wins in pg_hba.conf: the certificate's role by certificate, anyone else over
# TLS, and nothing in plaintext to test_tls; the file's own rules follow for the rest.
marker='# keygate test_tls (scripts/postgres-tls.sh)'
if ! grep -qF "$marker" "$hba"; then
  {
    echo "$marker"
    echo 'hostssl   test_tls keygate_tls_cert 127.0.0.1/32 cert'
    echo 'hostssl   test_tls all              127.0.0.1/32 trust'
    echo 'hostnossl test_tls all              127.0.0.1/32 reject'
    echo '# end keygate test_tls'
    cat "$hba"
  } > "$hba.keygate" && cat "$hba.keygate" > "$hba" && rm "$hba.keygate"
fi
psql_admin -Atc 'SELECT pg_reload_conf()' >/dev/null
for _ in $(seq 1 20); do
  [ "$(psql_admin -Atc 'SHOW ssl_cert_file')" = "$data/keygate-tls/server.pem" ] && break
  sleep 0.2
done
echo "Postgres TLS: test_tls over TLS only; CA and client certificate in $dir"
