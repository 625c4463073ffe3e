#!/usr/bin/env bash
# Makes a local development CA and certificates with the openssl CLI:
#   ca.pem / ca.key           the development CA (NOT for production)
#   server.pem / server.key   for localhost and 127.0.0.1, signed by the CA
#   wrong-name.pem / .key     for wrong.example, signed by the CA (name-mismatch tests)
#   cn-only.pem / .key        CN localhost, no DNS or IP name (a URI SAN), signed by the CA:
#                             a name only in the CN, which TLS clients must not take (tests)
#   self-signed.pem / .key    for localhost, signed by nobody (untrusted tests)
#   uri-only.pem / .key       CN uri-agent with only a URI SAN, signed by the CA (tests)
#   agent-<name>.pem / .key   client certificates for agents (mTLS), one per extra argument
#   crl.pem                   the CA's certificate revocation list: the agents named after
#                             --revoke are made and then revoked (for a listener's client_crl_file)
#   crl-empty.pem             a CRL from the same CA revoking nothing (written once)
# usage: certs/make-dev-certs.sh OUTDIR [agent-name ...] [--revoke agent-name ...]
# Everything it writes is test/development material: short-lived keys on the local disk,
# never used by breakerbox unless a config points at them.
set -euo pipefail
out=${1:?usage: make-dev-certs.sh OUTDIR [agent-name ...] [--revoke agent-name ...]}
shift || true
agents=()
revoke=()
for arg in "$@"; do
  if [[ $arg == --revoke ]]; then
    revoking=1
  elif [[ -n ${revoking:-} ]]; then
    revoke+=("$arg")
  else
    agents+=("$arg")
  fi
done
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
leaf cn-only localhost "URI:spiffe://example.test/cn-only"
if [[ ! -f self-signed.pem ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout self-signed.key \
    -out self-signed.pem -days "$days" -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
fi
# A client certificate whose only SAN is a URI (a SPIFFE-style workload identity): its CN
# must not name an agent (tests).
leaf uri-only uri-agent "URI:spiffe://example.test/uri-agent"
for agent in ${agents[@]+"${agents[@]}"} ${revoke[@]+"${revoke[@]}"}; do
  leaf "agent-$agent" "$agent" "DNS:$agent.agents.local"
done
# The CA's revocation list, kept by `openssl ca` in index.txt (its database of revocations).
cat > ca.cnf <<'CNF'
[ca]
default_ca = dev
[dev]
database = index.txt
crlnumber = crlnumber
certificate = ca.pem
private_key = ca.key
default_md = sha256
default_crl_days = 3650
CNF
[[ -f index.txt ]] || : > index.txt
[[ -f crlnumber ]] || echo 01 > crlnumber
[[ -f crl-empty.pem ]] || openssl ca -config ca.cnf -gencrl -out crl-empty.pem 2>/dev/null
for agent in ${revoke[@]+"${revoke[@]}"}; do
  serial=$(openssl x509 -in "agent-$agent.pem" -noout -serial | cut -d= -f2)
  if ! grep -q "^R.*	$serial	" index.txt; then
    openssl ca -config ca.cnf -revoke "agent-$agent.pem" -crl_reason keyCompromise 2>/dev/null
  fi
done
openssl ca -config ca.cnf -gencrl -out crl.pem 2>/dev/null
echo "development certificates in $out (TEST ONLY)"
