#!/usr/bin/env bash
# Self-signed CA and a SuperLink server certificate, for TLS between SuperLink, SuperNodes
# and the flwr CLI.
#
#   scripts/generate_certs.sh [OUT_DIR] [HOST ...]
#
# OUT_DIR (default: certificates) receives ca.crt (give it to every SuperNode and to the
# flwr CLI), ca.key (keep it private), server.pem and server.key (the SuperLink's).
# The certificate is valid for localhost, 127.0.0.1 and every HOST given: add the name or
# address SuperNodes on other machines use to reach the SuperLink.
set -euo pipefail

out=${1:-certificates}
shift || true
mkdir -p "$out"

san="DNS:localhost,IP:127.0.0.1"
for host in "$@"; do
    if [[ $host =~ ^[0-9.]+$ || $host == *:* ]]; then san+=",IP:$host"; else san+=",DNS:$host"; fi
done

# EC P-256 keys: strong and generated in milliseconds.
openssl ecparam -name prime256v1 -genkey -noout -out "$out/ca.key"
openssl req -x509 -new -key "$out/ca.key" -sha256 -days 365 \
    -subj "/CN=Flower template CA" -out "$out/ca.crt" 2>/dev/null

openssl ecparam -name prime256v1 -genkey -noout -out "$out/server.key"
openssl req -new -key "$out/server.key" -subj "/CN=${1:-localhost}" -out "$out/server.csr" 2>/dev/null
cat > "$out/server.ext" <<EXT
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $san
EXT
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$out/server.ext" -out "$out/server.pem" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext" "$out/ca.srl"
chmod 600 "$out/ca.key" "$out/server.key"
echo "wrote $out/ca.crt, $out/server.pem, $out/server.key (SAN: $san)"
