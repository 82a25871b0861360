#!/usr/bin/env bash
# Smoke test of the example identity server: starts it on a free port with a temporary state
# directory, exercises the token endpoint over mutual TLS and the three introspection forms.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CERTS_DIR="$(cd "${CERTS_DIR:-$HERE/../../certs/out}" 2>/dev/null && pwd)" || {
  echo "certificates not found: set CERTS_DIR or run certs/make-certs.sh" >&2; exit 2; }
for f in root.pem trust.pem example.tls.pem example.tls.key example.client.pem example.client.key \
         example.gateway.pem example.gateway.key \
         example.client2.pem example.client2.key example.selfsigned.pem example.selfsigned.key; do
  [[ -f "$CERTS_DIR/$f" ]] || { echo "missing $CERTS_DIR/$f" >&2; exit 2; }
done
[[ -d "$HERE/node_modules/oidc-provider" ]] || (cd "$HERE" && npm ci --no-audit --no-fund >/dev/null) || exit 2

SECRET="test-introspect-secret"
TTL=120
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
ADMIN_TOKEN="test-admin-token"
STATE="$(mktemp -d)"
LOG="$STATE/server.log"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
  rm -rf "$STATE"
}
trap cleanup EXIT

BASE="https://login.example.com:$PORT"
TOKEN_URL="$BASE/oauth/v2/oauth-token-mutual-tls"
INTROSPECT_URL="$BASE/oauth/v2/oauth-introspect"
JWKS_URL="$BASE/oauth/v2/oauth-anonymous/jwks"
ISSUER="https://login.example.com:8443/oauth/v2/oauth-anonymous"
CURL=(curl -sS --max-time 10 --cacert "$CERTS_DIR/root.pem" --resolve "login.example.com:$PORT:127.0.0.1")

wait_ready() {
  for _ in $(seq 1 50); do
    "${CURL[@]}" -o /dev/null "$JWKS_URL" 2>/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.2
  done
  echo "server did not start:" >&2; cat "$LOG" >&2; exit 1
}

start_server() {
  CERTS_DIR="$CERTS_DIR" IDSVR_PORT="$PORT" IDSVR_HOST=127.0.0.1 IDSVR_STATE_DIR="$STATE/state" \
    IDSVR_ACCESS_TOKEN_TTL="$TTL" INTROSPECT_CLIENT_SECRET="$SECRET" IDSVR_ADMIN_PORT="$ADMIN_PORT" \
    IDSVR_ADMIN_TOKEN="$ADMIN_TOKEN" \
    node "$HERE/server.js" >>"$LOG" 2>&1 &
  SERVER_PID=$!
  wait_ready
}
start_server

passed=0 failed=0
check() { # name, then a command that must succeed
  local name="$1"; shift
  if "$@"; then echo "ok   $name"; passed=$((passed + 1)); else echo "FAIL $name"; failed=$((failed + 1)); fi
}
json() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const v=new Function("j","return j"+process.argv[1])(JSON.parse(s));console.log(typeof v==="object"?JSON.stringify(v):v)})' "$1"; }
thumbprint() { openssl x509 -in "$1" -outform DER | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '='; }
token_request() { # cert-basename client_id scope -> body in $STATE/out, echoes HTTP status
  "${CURL[@]}" -o "$STATE/out" -w '%{http_code}' --cert "$CERTS_DIR/$1.pem" --key "$CERTS_DIR/$1.key" \
    -d grant_type=client_credentials -d "client_id=$2" -d "scope=$3" "$TOKEN_URL"
}
introspect() { # token accept -> body in $STATE/out, headers in $STATE/hdr, echoes status
  "${CURL[@]}" -o "$STATE/out" -D "$STATE/hdr" -w '%{http_code}' -u "introspect-client:$SECRET" \
    -H "Accept: $2" --data-urlencode "token=$1" "$INTROSPECT_URL"
}
content_type() { grep -i '^content-type:' "$STATE/hdr" | cut -d: -f2- | tr -d ' \r'; }
eq() { [[ "$1" == "$2" ]] || { echo "     expected [$2] got [$1]" >&2; return 1; }; }
# Verifies a compact JWS against the server's JWKS (fetched with curl); prints "<typ> <payload JSON>".
verify_jwt() {
  "${CURL[@]}" -o "$STATE/jwks.json" "$JWKS_URL" || return 1
  (cd "$HERE" && node --input-type=module -e '
    import { readFileSync } from "node:fs";
    import { createLocalJWKSet, jwtVerify } from "jose";
    const [jwt, jwksFile, typ] = process.argv.slice(1);
    const keys = createLocalJWKSet(JSON.parse(readFileSync(jwksFile, "utf8")));
    const { payload, protectedHeader } = await jwtVerify(jwt, keys, { algorithms: ["PS256"], typ });
    console.log(protectedHeader.typ, JSON.stringify(payload));
  ' "$1" "$STATE/jwks.json" "$2")
}

# 1. partner-client gets a certificate-bound token over mutual TLS.
status="$(token_request example.client partner-client transactions)"
check "partner-client token: HTTP 200" eq "$status" 200
AT="$(json .access_token <"$STATE/out")"
check "partner-client token is opaque (not a JWT)" eq "$(grep -c '\.' <<<"$AT")" 0
check "expires_in follows IDSVR_ACCESS_TOKEN_TTL" eq "$(json .expires_in <"$STATE/out")" "$TTL"
X5T="$(thumbprint "$CERTS_DIR/example.client.pem")"

# 2. RFC 7662 JSON.
status="$(introspect "$AT" application/json)"
check "introspection JSON: HTTP 200" eq "$status" 200
check "introspection JSON: content type" eq "$(content_type)" "application/json;charset=utf-8"
body="$(cat "$STATE/out")"
check "introspection JSON: active" eq "$(json .active <<<"$body")" true
check "introspection JSON: cnf.x5t#S256 = thumbprint of example.client.pem" eq "$(json '.cnf["x5t#S256"]' <<<"$body")" "$X5T"
check "introspection JSON: scope" eq "$(json .scope <<<"$body")" transactions
check "introspection JSON: client_id" eq "$(json .client_id <<<"$body")" partner-client
check "introspection JSON: iss" eq "$(json .iss <<<"$body")" "$ISSUER"
# RFC 8707: issued for the API's resource indicator, so its aud is the API's.
check "introspection JSON: aud is the API" eq "$(json .aud <<<"$body")" api.example.com
check "introspection JSON: exp present" test -n "$(json .exp <<<"$body" | grep -E '^[0-9]+$')"

# 3. RFC 9701 signed introspection response.
status="$(introspect "$AT" application/token-introspection+jwt)"
check "introspection RFC 9701: HTTP 200" eq "$status" 200
check "introspection RFC 9701: content type" eq "$(content_type)" "application/token-introspection+jwt;charset=utf-8"
out="$(verify_jwt "$(cat "$STATE/out")" token-introspection+jwt)"
check "introspection RFC 9701: signature verifies, typ token-introspection+jwt" test -n "$out"
payload="${out#* }"
check "introspection RFC 9701: aud is the introspecting client" eq "$(json .aud <<<"$payload")" introspect-client
check "introspection RFC 9701: token_introspection.cnf.x5t#S256" eq "$(json '.token_introspection.cnf["x5t#S256"]' <<<"$payload")" "$X5T"

# 4. Phantom token: Accept: application/jwt.
status="$(introspect "$AT" application/jwt)"
check "introspection phantom: HTTP 200" eq "$status" 200
check "introspection phantom: content type" eq "$(content_type)" "application/jwt"
out="$(verify_jwt "$(cat "$STATE/out")" at+jwt)"
check "introspection phantom: signature verifies, typ at+jwt" test -n "$out"
payload="${out#* }"
check "introspection phantom: iss" eq "$(json .iss <<<"$payload")" "$ISSUER"
check "introspection phantom: aud" eq "$(json .aud <<<"$payload")" api.example.com
check "introspection phantom: sub" eq "$(json .sub <<<"$payload")" partner-client
check "introspection phantom: client_id" eq "$(json .client_id <<<"$payload")" partner-client
check "introspection phantom: scope" eq "$(json .scope <<<"$payload")" transactions
check "introspection phantom: cnf.x5t#S256" eq "$(json '.cnf["x5t#S256"]' <<<"$payload")" "$X5T"
check "introspection phantom: jti is not the token" test "$(json .jti <<<"$payload")" != "$AT"
check "introspection phantom: exp/iat present" test -n "$(json '.exp + j.iat' <<<"$payload" | grep -E '^[0-9]+$')"

# 5. Introspection needs the introspecting client's secret.
status="$("${CURL[@]}" -o /dev/null -w '%{http_code}' -u introspect-client:wrong -H 'Accept: application/jwt' \
  --data-urlencode "token=$AT" "$INTROSPECT_URL")"
check "introspection with a wrong secret: HTTP 401" eq "$status" 401

# 5b. certbound's own introspection client authenticates with the gateway's certificate
# (tls_client_auth): no secret; another certificate, or none, is refused.
introspect_tls() { # cert-basename-or-empty -> echoes HTTP status:active
  local cert=()
  [[ -n "$1" ]] && cert=(--cert "$CERTS_DIR/$1.pem" --key "$CERTS_DIR/$1.key")
  "${CURL[@]}" -o "$STATE/out" -w '%{http_code}' "${cert[@]}" -H 'Accept: application/json' \
    -d client_id=certbound-gateway --data-urlencode "token=$AT" "$INTROSPECT_URL"
}
status="$(introspect_tls example.gateway)"
check "introspection as certbound-gateway with its certificate: HTTP 200, active" \
  eq "$status:$(json .active <"$STATE/out")" 200:true
check "introspection as certbound-gateway with a partner's certificate: HTTP 401" \
  eq "$(introspect_tls example.client)" 401
check "introspection as certbound-gateway without a certificate: HTTP 401" eq "$(introspect_tls '')" 401

# 6. Self-signed client.
status="$(token_request example.selfsigned partner-selfsigned transactions)"
check "partner-selfsigned token: HTTP 200" eq "$status" 200
SS_AT="$(json .access_token <"$STATE/out")"
introspect "$SS_AT" application/json >/dev/null
check "partner-selfsigned token bound to its certificate" \
  eq "$(json '.cnf["x5t#S256"]' <"$STATE/out")" "$(thumbprint "$CERTS_DIR/example.selfsigned.pem")"

# 7. Wrong certificates are refused.
status="$(token_request example.client2 partner-client transactions)"
check "example.client2 asking as partner-client: HTTP 401" eq "$status" 401
check "... error invalid_client" eq "$(json .error <"$STATE/out")" invalid_client
status="$(token_request example.selfsigned partner-client transactions)"
check "self-signed certificate asking as tls_client_auth partner-client: HTTP 401" eq "$status" 401
status="$(token_request example.client partner-selfsigned transactions)"
check "example.client asking as partner-selfsigned: HTTP 401" eq "$status" 401
status="$("${CURL[@]}" -o /dev/null -w '%{http_code}' -d grant_type=client_credentials -d client_id=partner-client "$TOKEN_URL")"
check "no client certificate: HTTP 401" eq "$status" 401

# 8. Scopes: partner-client-2 may get "other", partner-client may not.
status="$(token_request example.client2 partner-client-2 other)"
check "partner-client-2 scope other: HTTP 200" eq "$status" 200
check "... scope other granted" eq "$(json .scope <"$STATE/out")" other
status="$(token_request example.client partner-client other)"
check "partner-client scope other: HTTP 400 invalid_scope" eq "$status:$(json .error <"$STATE/out")" 400:invalid_scope

# 9. Garbage token is inactive.
status="$(introspect not-a-real-token application/json)"
check "garbage token JSON: active false" eq "$status:$(cat "$STATE/out")" '200:{"active":false}'
status="$(introspect not-a-real-token application/jwt)"
check "garbage token phantom: HTTP 204, empty body" eq "$status:$(wc -c <"$STATE/out" | tr -d ' ')" 204:0

# 10. The signing key is kept in the state directory and reused at the next start.
check "signing key stored in state/jwks.json" test -s "$STATE/state/jwks.json"
KID_BEFORE="$("${CURL[@]}" "$JWKS_URL" | json '.keys[0].kid')"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null
start_server
KID_AFTER="$("${CURL[@]}" "$JWKS_URL" | json '.keys[0].kid')"
check "same signing key (kid) after a restart" eq "$KID_AFTER" "$KID_BEFORE"

# 11. RFC 7009 revocation by the partner, and the signed event the gateway reads from the feed.
REVOKE_URL="$BASE/oauth/v2/oauth-revoke"
EVENTS_URL="$BASE/oauth/v2/oauth-revocation-events"
token_hash() { printf %s "$1" | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '=' | cut -c1-32; }
revoke() { # cert-basename client_id token -> echoes HTTP status
  "${CURL[@]}" -o "$STATE/out" -w '%{http_code}' --cert "$CERTS_DIR/$1.pem" --key "$CERTS_DIR/$1.key" \
    -d "client_id=$2" --data-urlencode "token=$3" "$REVOKE_URL"
}
events() { # cert-basename-or-empty after -> body in $STATE/out, echoes HTTP status
  local cert=()
  [[ -n "$1" ]] && cert=(--cert "$CERTS_DIR/$1.pem" --key "$CERTS_DIR/$1.key")
  local after=()
  [[ -n "$2" ]] && after=(--data-urlencode "after=$2")
  "${CURL[@]}" -o "$STATE/out" -w '%{http_code}' "${cert[@]}" -G "${after[@]}" "$EVENTS_URL"
}
token_request example.client partner-client transactions >/dev/null
R1="$(json .access_token <"$STATE/out")"
token_request example.client partner-client transactions >/dev/null
R2="$(json .access_token <"$STATE/out")"
check "another partner cannot revoke partner-client's token: HTTP 400" eq "$(revoke example.client2 partner-client-2 "$R1")" 400
introspect "$R1" application/json >/dev/null
check "the token stays active" eq "$(json .active <"$STATE/out")" true
check "partner-client revokes its token: HTTP 200" eq "$(revoke example.client partner-client "$R1")" 200
introspect "$R1" application/json >/dev/null
check "a revoked token is inactive" eq "$(json .active <"$STATE/out")" false
introspect "$R2" application/json >/dev/null
check "its other token is still active" eq "$(json .active <"$STATE/out")" true
check "the event feed without a certificate: HTTP 403" eq "$(events '' '')" 403
check "the event feed for a partner: HTTP 403" eq "$(events example.client '')" 403
check "the event feed for a self-signed certificate: HTTP 403" eq "$(events example.selfsigned '')" 403
check "a malformed cursor: HTTP 400" eq "$(events example.gateway abc)" 400
check "the event feed for the gateway: HTTP 200" eq "$(events example.gateway '')" 200
feed="$(cat "$STATE/out")"
NEXT="$(json .next <<<"$feed")"
out="$(verify_jwt "$(json '.events[0]' <<<"$feed")" secevent+jwt)"
check "the revocation event is a SET signed with the JWKS (typ secevent+jwt)" test -n "$out"
payload="${out#* }"
check "the event names the token by its hash" eq "$(json '.events["https://certbound.example/secevent/token-revoked"].token_hash' <<<"$payload")" "$(token_hash "$R1")"
check "the event is for the gateway" eq "$(json .aud <<<"$payload")" certbound-gateway
events example.gateway "$NEXT" >/dev/null
check "nothing after the cursor" eq "$(json '.events.length' <"$STATE/out")" 0
paged() { # limit -> body in $STATE/out, echoes HTTP status
  "${CURL[@]}" -o "$STATE/out" -w '%{http_code}' --cert "$CERTS_DIR/example.gateway.pem" \
    --key "$CERTS_DIR/example.gateway.key" -G --data-urlencode "limit=$1" "$EVENTS_URL"
}
check "a page of one event: HTTP 200" eq "$(paged 1)" 200
check "a page holds at most limit events, its next the last one's" eq "$(json '.events.length' <"$STATE/out") $(json .next <"$STATE/out")" "1 $NEXT"
check "a limit of 0: HTTP 400" eq "$(paged 0)" 400
check "a limit that is no number: HTTP 400" eq "$(paged x)" 400

# 12. Offboarding a partner: all its tokens are destroyed, one event; other partners unaffected.
token_request example.client2 partner-client-2 transactions >/dev/null
O1="$(json .access_token <"$STATE/out")"
offboard() { # client_id [token] -> echoes HTTP status
  curl -sS --max-time 5 -o "$STATE/out" -w '%{http_code}' -H "Authorization: Bearer ${2-$ADMIN_TOKEN}" \
    -d "client_id=$1" "http://127.0.0.1:$ADMIN_PORT/admin/offboard"
}
check "offboarding without the admin token: HTTP 401" eq "$(offboard partner-client-2 wrong)" 401
check "offboarding partner-client-2: HTTP 200" eq "$(offboard partner-client-2)" 200
introspect "$O1" application/json >/dev/null
check "the offboarded partner's token is inactive" eq "$(json .active <"$STATE/out")" false
introspect "$R2" application/json >/dev/null
check "another partner's token is still active" eq "$(json .active <"$STATE/out")" true
events example.gateway "$NEXT" >/dev/null
out="$(verify_jwt "$(json '.events[0]' <"$STATE/out")" secevent+jwt)"
payload="${out#* }"
check "the offboarding event names the client" eq "$(json '.events["https://certbound.example/secevent/client-offboarded"].client_id' <<<"$payload")" partner-client-2
check "offboarding an unknown client: HTTP 400" eq "$(offboard nobody)" 400
status="$(token_request example.client2 partner-client-2 transactions)"
check "an offboarded partner gets no new token: HTTP 400 invalid_client" eq "$status:$(json .error <"$STATE/out")" 400:invalid_client

if (( failed > 0 )); then echo "--- server log" >&2; cat "$LOG" >&2; fi
echo "$passed passed, $failed failed"
(( failed == 0 ))
