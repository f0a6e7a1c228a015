#!/bin/bash
# A throwaway CA and a server certificate for 127.0.0.1 signed by it, for
# TLS tests against a local server (tests/common/swift.rs). Writes
# ca.pem, cert.pem, key.pem into DIR.
set -euo pipefail
dir=${1:?usage: test-ca.sh DIR}
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 \
    -subj "/CN=hvflight test CA" -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=127.0.0.1" \
    -keyout key.pem -out server.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out cert.pem -days 2 -sha256 -extfile ext.cnf 2>/dev/null
