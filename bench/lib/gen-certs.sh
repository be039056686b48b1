#!/usr/bin/env bash
# One ECDSA P-256 leaf (localhost, 127.0.0.1) signed by a throwaway bench CA, shared by every
# proxy under test. Idempotent: keeps existing files. Usage: gen-certs.sh DIR
set -euo pipefail
dir=${1:?usage: gen-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
[ -s leaf.pem ] && [ -s leaf.key ] && [ -s ca.pem ] && exit 0
openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=tollgate bench CA" -out ca.pem 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out leaf.ec.key 2>/dev/null
# PKCS#8 for rustls-pemfile/Tollgate; nginx and HAProxy read it as well.
openssl pkcs8 -topk8 -nocrypt -in leaf.ec.key -out leaf.key
rm -f leaf.ec.key
openssl req -new -key leaf.key -subj "/CN=localhost" -out leaf.csr 2>/dev/null
cat > leaf.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
EXT
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
  -extfile leaf.ext -out leaf.pem 2>/dev/null
cat leaf.pem leaf.key > leaf-combined.pem   # HAProxy wants cert + key in one file
rm -f leaf.csr leaf.ext ca.srl
