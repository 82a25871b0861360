#!/usr/bin/env bash
# Makes the example PKI: root CA, intermediate CA, server certificate, client certificates
# (trusted, self-signed and from an untrusted CA). Every certificate is X.509 v3 with
# basicConstraints, keyUsage, extendedKeyUsage and subjectAltName, because rustls-based
# clients (reqwest, oha) reject v1 certificates.
#
# Usage: certs/make-certs.sh [OUT_DIR]   (default: certs/out next to this script)
# Also makes introspect-client.secret, the introspection client's secret of this installation.
# Idempotent: if every output file exists, nothing is done. Otherwise everything is regenerated,
# so the certificates always chain to the keys beside them.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out_dir="${1:-$script_dir/out}"

readonly P12_PASSWORD="Password1"
readonly CA_DAYS=3650
readonly LEAF_DAYS=825

outputs=(
  root.pem root.key
  intermediate.pem intermediate.key
  trust.pem
  example.tls.pem example.tls.key
  example.client.pem example.client.key example.client.p12
  example.client2.pem example.client2.key
  example.gateway.pem example.gateway.key
  example.selfsigned.pem example.selfsigned.key
  untrusted-ca.pem untrusted-ca.key
  untrusted.client.pem untrusted.client.key
)

if ! command -v openssl >/dev/null 2>&1; then
  echo "make-certs: openssl not found; install it (Debian: apt-get install openssl)" >&2
  exit 1
fi

# The introspection client's secret, shared by the identity server and the gateway: made once per
# installation (never committed), kept when the certificates are remade.
secret_file="$out_dir/introspect-client.secret"
if [[ ! -s "$secret_file" ]]; then
  mkdir -p "$out_dir"
  (umask 077 && openssl rand -hex 32 >"$secret_file")
  echo "make-certs: wrote a new introspection client secret to $secret_file"
fi

missing=0
for f in "${outputs[@]}"; do
  [[ -s "$out_dir/$f" ]] || missing=1
done
if [[ $missing -eq 0 ]]; then
  echo "make-certs: all ${#outputs[@]} files already present in $out_dir; nothing to do (delete it to regenerate)"
  exit 0
fi

mkdir -p "$out_dir"
work="$(mktemp -d "${TMPDIR:-/tmp}/certbound-certs.XXXXXX")"
trap 'rm -rf "$work"' EXIT
umask 077

# Extension sections, one per kind of certificate. SAN is appended per certificate.
ext_file() { # ext_file KIND SAN  -> path of an extension file with section [ext]
  local kind="$1" san="$2" path="$work/$1.$RANDOM.ext"
  {
    echo "[ext]"
    case "$kind" in
      root)
        echo "basicConstraints = critical, CA:TRUE"
        echo "keyUsage = critical, keyCertSign, cRLSign"
        echo "extendedKeyUsage = serverAuth, clientAuth"
        ;;
      intermediate)
        echo "basicConstraints = critical, CA:TRUE, pathlen:0"
        echo "keyUsage = critical, keyCertSign, cRLSign"
        echo "extendedKeyUsage = serverAuth, clientAuth"
        echo "authorityKeyIdentifier = keyid:always"
        ;;
      server)
        echo "basicConstraints = critical, CA:FALSE"
        echo "keyUsage = critical, digitalSignature, keyEncipherment"
        echo "extendedKeyUsage = serverAuth"
        echo "authorityKeyIdentifier = keyid:always"
        ;;
      client)
        echo "basicConstraints = critical, CA:FALSE"
        echo "keyUsage = critical, digitalSignature, keyEncipherment"
        echo "extendedKeyUsage = clientAuth"
        echo "authorityKeyIdentifier = keyid:always"
        ;;
      selfsigned-client)
        echo "basicConstraints = critical, CA:FALSE"
        echo "keyUsage = critical, digitalSignature, keyEncipherment"
        echo "extendedKeyUsage = clientAuth"
        ;;
      *) echo "make-certs: unknown kind $kind" >&2; return 1 ;;
    esac
    echo "subjectKeyIdentifier = hash"
    echo "subjectAltName = $san"
  } >"$path"
  echo "$path"
}

# A minimal config so `openssl req` never reads the system openssl.cnf.
req_cnf="$work/req.cnf"
cat >"$req_cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
EOF

new_key() { # new_key NAME
  openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/$1.key"
}

serial() { echo "0x$(openssl rand -hex 16)"; }

# self_signed NAME SUBJECT DAYS KIND SAN
self_signed() {
  local name="$1" subject="$2" days="$3" kind="$4" san="$5" ext
  ext="$(ext_file "$kind" "$san")"
  new_key "$name"
  openssl req -new -config "$req_cnf" -key "$work/$name.key" -subj "$subject" -out "$work/$name.csr"
  openssl x509 -req -sha256 -in "$work/$name.csr" -signkey "$work/$name.key" -days "$days" \
    -set_serial "$(serial)" -extfile "$ext" -extensions ext -out "$work/$name.pem" 2>/dev/null
}

# issue NAME SUBJECT DAYS KIND SAN ISSUER
issue() {
  local name="$1" subject="$2" days="$3" kind="$4" san="$5" issuer="$6" ext
  ext="$(ext_file "$kind" "$san")"
  new_key "$name"
  openssl req -new -config "$req_cnf" -key "$work/$name.key" -subj "$subject" -out "$work/$name.csr"
  openssl x509 -req -sha256 -in "$work/$name.csr" -CA "$work/$issuer.pem" -CAkey "$work/$issuer.key" \
    -days "$days" -set_serial "$(serial)" -extfile "$ext" -extensions ext -out "$work/$name.pem" 2>/dev/null
}

echo "make-certs: generating into $out_dir"

self_signed root "/CN=certbound example root CA" "$CA_DAYS" root \
  "DNS:certbound-example-root-ca"
issue intermediate "/CN=certbound example intermediate CA" "$CA_DAYS" intermediate \
  "DNS:certbound-example-intermediate-ca" root
cat "$work/intermediate.pem" "$work/root.pem" >"$work/trust.pem"

issue example.tls "/CN=*.example.com" "$LEAF_DAYS" server \
  "DNS:*.example.com, DNS:example.com, DNS:localhost, IP:127.0.0.1" root

# Every SAN kind, for the routes' certificate rules (allowed_certificates) in tests/.
issue example.client "/O=Partner One/CN=partner-client" "$LEAF_DAYS" client \
  "DNS:partner-client, URI:spiffe://partners.example/partner-one, IP:192.0.2.1, email:ops@partner-one.example" intermediate
issue example.client2 "/O=Partner Two/CN=partner-client-2" "$LEAF_DAYS" client \
  "DNS:partner-client-2" intermediate
# The gateway's own certificate: Envoy presents it to the identity server, which authenticates
# certbound's introspection client by it (tls_client_auth).
# It is also the front proxy's identity towards the inner proxy (the sidecar), which trusts
# its certificate headers (SPIFFE-style URI SAN, as Istio's gateways have).
issue example.gateway "/O=Example Bank/CN=certbound-gateway" "$LEAF_DAYS" client \
  "DNS:certbound-gateway, URI:spiffe://example.bank/ns/edge/sa/gateway" intermediate
self_signed example.selfsigned "/O=Partner Self/CN=partner-selfsigned" "$LEAF_DAYS" selfsigned-client \
  "DNS:partner-selfsigned"

self_signed untrusted-ca "/CN=certbound untrusted CA" "$CA_DAYS" root "DNS:certbound-untrusted-ca"
issue untrusted.client "/O=Intruders/CN=intruder" "$LEAF_DAYS" client "DNS:intruder" untrusted-ca

# PKCS#12 for curl and browsers: leaf, key and the intermediate. OpenSSL 3 defaults to
# AES-256-CBC/PBKDF2, which curl built on OpenSSL 3 reads; -legacy is only for old consumers.
openssl pkcs12 -export -in "$work/example.client.pem" -inkey "$work/example.client.key" \
  -certfile "$work/intermediate.pem" -name partner-client \
  -passout "pass:$P12_PASSWORD" -out "$work/example.client.p12"

# Check the chains before anything is put in place.
openssl verify -CAfile "$work/trust.pem" "$work/example.client.pem" "$work/example.client2.pem" \
  "$work/example.gateway.pem" >/dev/null
openssl verify -CAfile "$work/root.pem" "$work/intermediate.pem" "$work/example.tls.pem" >/dev/null
openssl verify -CAfile "$work/untrusted-ca.pem" "$work/untrusted.client.pem" >/dev/null
if openssl verify -CAfile "$work/trust.pem" "$work/untrusted.client.pem" >/dev/null 2>&1; then
  echo "make-certs: untrusted.client.pem unexpectedly verifies against trust.pem" >&2
  exit 1
fi

for f in "${outputs[@]}"; do
  mv -f "$work/$f" "$out_dir/$f"
done
chmod 600 "$out_dir"/*.key "$out_dir"/*.p12
chmod 644 "$out_dir"/*.pem
echo "make-certs: wrote ${#outputs[@]} files to $out_dir"
