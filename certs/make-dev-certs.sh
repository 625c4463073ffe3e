#!/usr/bin/env bash
# Makes a local development CA and certificates with the openssl CLI:
#   ca.pem / ca.key           the development CA (NOT for production)
#   server.pem / server.key   for localhost and 127.0.0.1, signed by the CA
#   wrong-name.pem / .key     for wrong.example, signed by the CA (name-mismatch tests)
#   self-signed.pem / .key    for localhost, signed by nobody (untrusted tests)
#   uri-only.pem / .key       CN uri-agent with only a URI SAN, signed by the CA (tests)
#   agent-<name>.pem / .key   client certificates for agents (mTLS), one per extra argument
# usage: certs/make-dev-certs.sh OUTDIR [agent-name ...]
# Everything it writes is test/development material: short-lived keys on the local disk,
# never used by breakerbox unless a config points at them.
set -euo pipefail
out=${1:?usage: make-dev-certs.sh OUTDIR [agent-name ...]}
shift || true
mkdir -p "$out"
cd "$out"
days=3650
if [[ ! -f ca.pem ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem \
    -days "$days" -subj "/CN=breakerbox development CA (TEST ONLY)" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
leaf() { # name cn san
  local name=$1 cn=$2 san=$3
  [[ -f $name.pem ]] && return 0
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$name.key" -out "$name.csr" \
    -subj "/CN=$cn" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$name.pem" -days "$days" \
    -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
leaf server localhost "DNS:localhost,IP:127.0.0.1"
leaf wrong-name wrong.example "DNS:wrong.example"
if [[ ! -f self-signed.pem ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout self-signed.key \
    -out self-signed.pem -days "$days" -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
fi
# A client certificate whose only SAN is a URI (a SPIFFE-style workload identity): its CN
# must not name an agent (tests).
leaf uri-only uri-agent "URI:spiffe://example.test/uri-agent"
for agent in "$@"; do
  leaf "agent-$agent" "$agent" "DNS:$agent.agents.local"
done
echo "development certificates in $out (TEST ONLY)"
