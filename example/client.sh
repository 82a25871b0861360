#!/usr/bin/env bash
# The partner client: gets a certificate-bound access token from the identity server over mutual
# TLS, creates a transaction at the API with it, then plays the attacker who stole the token and
# replays it with another partner's certificate. Every call goes to the one external port of the
# front proxy; --resolve maps the two host names to it, so no hosts-file edit is needed.
# Exits non-zero if any step does not go as expected.
#
# Environment: FRONT_PORT [8443], FRONT_HOST [127.0.0.1], CERTS_DIR [certs/out]
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CERTS_DIR="${CERTS_DIR:-$ROOT/certs/out}"
FRONT_PORT="${FRONT_PORT:-8443}"
FRONT_HOST="${FRONT_HOST:-127.0.0.1}"

TOKEN_URL="https://login.example.com:$FRONT_PORT/oauth/v2/oauth-token-mutual-tls"
API_URL="https://api.example.com:$FRONT_PORT/api/transactions"

command -v curl >/dev/null || { echo "client: curl not found on PATH" >&2; exit 2; }
for f in root.pem example.client.pem example.client.key example.client2.pem example.client2.key; do
  [[ -f "$CERTS_DIR/$f" ]] || { echo "client: $CERTS_DIR/$f is missing (make certs)" >&2; exit 2; }
done

work="$(mktemp -d "${TMPDIR:-/tmp}/certbound-client.XXXXXX")"
trap 'rm -rf "$work"' EXIT

CURL=(curl -sS --max-time 15 --cacert "$CERTS_DIR/root.pem"
  --resolve "login.example.com:$FRONT_PORT:$FRONT_HOST"
  --resolve "api.example.com:$FRONT_PORT:$FRONT_HOST")

fail() {
  echo "client: FAILED: $*" >&2
  if [[ -s "$work/body" ]]; then echo "client: response body: $(head -c 500 "$work/body")" >&2; fi
  exit 1
}

# A string member of a flat JSON object, without jq.
json_string() { sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p" "$2" | head -n 1; }

# The partner's certificate and key.
AS_PARTNER=(--cert "$CERTS_DIR/example.client.pem" --key "$CERTS_DIR/example.client.key")
# Another partner's: what an attacker who stole the token (but not the key) could present.
AS_ATTACKER=(--cert "$CERTS_DIR/example.client2.pem" --key "$CERTS_DIR/example.client2.key")

echo "Client is authenticating with the Identity Server via mutual TLS ..."
status="$("${CURL[@]}" "${AS_PARTNER[@]}" -o "$work/body" -w '%{http_code}' \
  -d grant_type=client_credentials -d client_id=partner-client -d scope=transactions \
  "$TOKEN_URL")" || fail "the token request did not complete (is the system up?)"
[[ "$status" == 200 ]] || fail "the token endpoint answered HTTP $status"
access_token="$(json_string access_token "$work/body")"
[[ -n "$access_token" ]] || fail "no access_token in the token response"
[[ "$access_token" != *.*.* ]] || fail "the access token is a JWT, not an opaque token"
echo "Client successfully authenticated and received an opaque access token"

echo "Client is creating a transaction at the API using mutual TLS and the opaque access token ..."
status="$("${CURL[@]}" "${AS_PARTNER[@]}" -o "$work/body" -w '%{http_code}' \
  -H "Authorization: Bearer $access_token" -H 'Content-Type: application/json' \
  --data '{"amount": 100}' "$API_URL")" || fail "the API request did not complete"
[[ "$status" == 201 ]] || fail "the API answered HTTP $status, expected 201"
[[ "$(json_string client_id "$work/body")" == partner-client ]] || fail "the transaction is not partner-client's"
echo "Client successfully created the API transaction using mutual TLS"

echo "An attacker replays the stolen token with a different client certificate ..."
status="$("${CURL[@]}" "${AS_ATTACKER[@]}" -o "$work/body" -D "$work/headers" -w '%{http_code}' \
  -H "Authorization: Bearer $access_token" -H 'Content-Type: application/json' \
  --data '{"amount": 1000000}' "$API_URL")" || fail "the replayed request did not complete"
error="$(json_string error "$work/body")"
[[ "$status" == 401 && "$error" == invalid_token ]] ||
  fail "the stolen token was not rejected as expected: HTTP $status, error '$error'"
grep -qi '^www-authenticate:.*error="invalid_token"' "$work/headers" ||
  fail "the rejection has no WWW-Authenticate with error=\"invalid_token\""
echo "The API rejected the stolen token: $status $error"
