#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 (trust auth), installing and starting it
# when this machine lacks it. Idempotent.
set -euo pipefail
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
# TLS on, for the sslmode tests: Debian clusters use the snakeoil certificate when it exists.
ensure_ssl() {
  [ "$(psql -h 127.0.0.1 -U postgres -tAc 'SHOW ssl')" = on ] && return 0
  if [ ! -f /etc/ssl/private/ssl-cert-snakeoil.key ]; then
    command -v make-ssl-cert >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q ssl-cert >/dev/null
    make-ssl-cert generate-default-snakeoil
  fi
  local pgkey=/var/lib/postgresql/tollgate-ssl.key
  install -o postgres -m 600 /etc/ssl/private/ssl-cert-snakeoil.key "$pgkey"
  psql -h 127.0.0.1 -U postgres -qc "ALTER SYSTEM SET ssl_cert_file = '/etc/ssl/certs/ssl-cert-snakeoil.pem'" \
    -c "ALTER SYSTEM SET ssl_key_file = '$pgkey'" -c "ALTER SYSTEM SET ssl = on" -c "SELECT pg_reload_conf()" >/dev/null
  sleep 1
  [ "$(psql -h 127.0.0.1 -U postgres -tAc 'SHOW ssl')" = on ] || { echo "postgres: cannot turn TLS on" >&2; exit 1; }
}
if command -v pg_isready >/dev/null && ready; then ensure_ssl; exit 0; fi
if ! command -v pg_ctlcluster >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q postgresql >/dev/null 2>&1 || { apt-get update -q >/dev/null; apt-get install -y -q postgresql >/dev/null; }
fi
ver=$(ls /etc/postgresql | sort -V | tail -1)
hba=/etc/postgresql/$ver/main/pg_hba.conf
if ! grep -q "tollgate-ci" "$hba"; then
  { echo "# tollgate-ci: trust loopback"; echo "host all all 127.0.0.1/32 trust"; echo "host all all ::1/128 trust"; echo "local all all trust"; cat "$hba"; } > "$hba.new" && mv "$hba.new" "$hba"
fi
pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || pg_ctlcluster --skip-systemctl-redirect "$ver" main reload || true
for _ in $(seq 1 30); do ready && break; sleep 1; done
ready || { echo "postgres did not start" >&2; exit 1; }
# Databases and role the tests expect.
for db in test root; do
  psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db" >/dev/null
done
psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname='root'" | grep -q 1 || psql -h 127.0.0.1 -U postgres -c "CREATE ROLE root SUPERUSER LOGIN" >/dev/null
ensure_ssl
