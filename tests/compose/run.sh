#!/usr/bin/env bash
# make compose-test: docker-compose.yml really started, in containers (podman and podman-compose,
# from Debian), then tried as a partner and as an attacker would, then taken down:
#   1. the partner client of `make demo` (example/client.sh, its six lines) through the published port,
#      which includes the stolen-token replay with another partner's certificate (401);
#   2. a direct call to the API from inside the compose network with the stolen token: refused in the
#      TLS handshake with no certificate and with the partner's own; the gateway's certificate gets an
#      HTTP answer, and still 401 (no certificate hash from the gateway);
#   3. the API's port is not published on the host.
# No public image can be pulled here: the images are built on a Debian base made with debootstrap
# (tests/compose/Containerfile; local.yml swaps them in). Needs root (podman's networks).
# Environment: FRONT_PORT (a free port), DEBIAN_MIRROR (http://deb.debian.org/debian),
# API_BIN (target/release/certbound-example-api), ENVOY_BIN (the Envoy binary), COMPOSE_TEST_KEEP=1
# (leave the system up).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$repo/tests/compose"
cd "$repo"
export CONTAINERS_CONF="$here/containers.conf" CONTAINERS_STORAGE_CONF="$here/storage.conf"
project=certbound-compose-test
base=localhost/certbound-base:bookworm
image=localhost/certbound-compose-test
certs="$repo/certs/out"
work="$repo/target/compose-test"
started=$SECONDS

say() { echo "compose-test: $*"; }
die() { say "FAILED: $*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "run as root (podman's bridge networks)"
# podman-compose from PyPI into .venv (Debian's 1.0.3 ignores network aliases): make setup-containers.
podman_compose="${PODMAN_COMPOSE:-$repo/.venv/bin/podman-compose}"
[[ -x "$podman_compose" ]] || die "no $podman_compose (make setup-containers installs it)"
for t in podman debootstrap curl; do
  command -v "$t" >/dev/null || die "$t not found (make setup-containers installs it)"
done
api_bin="${API_BIN:-$repo/target/release/certbound-example-api}"
envoy_bin="${ENVOY_BIN:-$(ls "$repo"/.venv/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n 1)}"
[[ -x "$api_bin" ]] || die "no API binary at $api_bin (make api)"
[[ -x "$envoy_bin" ]] || die "no Envoy binary (make setup)"
[[ -s target/wasm32-wasip1/release/certbound.wasm ]] || die "no certbound.wasm (make build)"
[[ -s "$certs/example.gateway.pem" ]] || die "no certificates (make certs)"

# 1. The Debian base image, made once per machine.
if ! podman image exists "$base"; then
  say "making $base with debootstrap (once)"
  rm -rf "$work/rootfs" && mkdir -p "$work"
  debootstrap --variant=minbase --include=ca-certificates,curl,libstdc++6 bookworm "$work/rootfs" \
    "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 ||
    die "debootstrap failed (see $work/debootstrap.log)"
  tar -C "$work/rootfs" -c . | podman import - "$base" >/dev/null
  rm -rf "$work/rootfs"
fi

# 2. The project's images on it, from what this machine has (rebuilt every run: the binaries change).
ctx="$work/context"
rm -rf "$ctx" && mkdir -p "$ctx"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
cp "$(readlink -f "$(command -v node)")" "$ctx/node"
cp -r "$(dirname "$(readlink -f "$(command -v npm)")")/.." "$ctx/npm"
cp "$envoy_bin" "$ctx/envoy"
cp "$api_bin" "$ctx/certbound-example-api"
podman build -q --target runtime -t "$image:runtime" -f "$here/Containerfile" "$ctx" >/dev/null
podman build -q --target api -t "$image:api" -f "$here/Containerfile" "$ctx" >/dev/null
say "images built ($((SECONDS - started)) s)"

# 3. Up, on a free port.
port="${FRONT_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export FRONT_PORT="$port"
compose=("$podman_compose" -p "$project" -f docker-compose.yml -f "$here/local.yml")
down() {
  if [[ "${COMPOSE_TEST_KEEP:-}" == 1 ]]; then say "left up (COMPOSE_TEST_KEEP=1)"; return; fi
  "${compose[@]}" down -v >"$work/down.log" 2>&1 || true
  podman network rm -f "${project}_default" >/dev/null 2>&1 || true
}
trap down EXIT
"${compose[@]}" down -v >/dev/null 2>&1 || true
"${compose[@]}" up -d --no-build >"$work/up.log" 2>&1 || { cat "$work/up.log"; die "podman-compose up failed"; }

logs() { for s in idsvr api envoy; do echo "--- $s"; podman logs --tail 30 "${project}_${s}_1" 2>&1; done; }
CURL=(curl -sS --max-time 10 --cacert "$certs/root.pem"
  --resolve "login.example.com:$port:127.0.0.1" --resolve "api.example.com:$port:127.0.0.1")
deadline=$((SECONDS + 300))
until [[ "$("${CURL[@]}" -o /dev/null -w '%{http_code}' --cert "$certs/example.client.pem" \
  --key "$certs/example.client.key" "https://api.example.com:$port/api/transactions" 2>/dev/null)" == 401 ]] &&
  "${CURL[@]}" -fsS -o /dev/null "https://login.example.com:$port/oauth/v2/oauth-anonymous/jwks" 2>/dev/null &&
  podman logs "${project}_api_1" 2>&1 | grep -q "signing key(s) from"; do
  ((SECONDS < deadline)) || { logs; die "the system did not come up in 300 s"; }
  sleep 2
done
say "system up on 127.0.0.1:$port ($((SECONDS - started)) s)"

# 4. The partner client, as `make demo` runs it.
out="$(FRONT_PORT="$port" CERTS_DIR="$certs" example/client.sh 2>&1)" || { echo "$out"; logs; die "example/client.sh failed"; }
expected="$(cat tests/client-output.txt)"
[[ "$out" == "$expected" ]] || { echo "$out"; die "example/client.sh printed something else"; }
say "ok: example/client.sh, six lines (the stolen token replayed: 401 invalid_token)"

# 5. Straight at the API from inside the compose network, with a stolen token.
token="$("${CURL[@]}" --cert "$certs/example.client.pem" --key "$certs/example.client.key" \
  -d grant_type=client_credentials -d client_id=partner-client -d scope=transactions \
  "https://login.example.com:$port/oauth/v2/oauth-token-mutual-tls" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')"
[[ -n "$token" ]] || die "no token from the identity server"
direct() { # curl-args...: the HTTP status of a POST to the API from a container, or curl's error
  podman run --rm --network "${project}_default" -v "$certs:/certs:ro" "$image:runtime" \
    curl -sS --max-time 10 --cacert /certs/root.pem --resolve api.example.com:8080:"$api_ip" \
    -o /dev/null -w '%{http_code}\n' -H "Authorization: Bearer $token" -H 'x-certbound-client-id: partner-client' \
    --data '{"amount": 1}' "$@" https://api.example.com:8080/api/transactions 2>&1 || true
}
api_ip="$(podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "${project}_api_1")"
[[ -n "$api_ip" ]] || die "the API container has no address"
for who in none example.client example.selfsigned; do
  args=()
  [[ "$who" != none ]] && args=(--cert "/certs/$who.pem" --key "/certs/$who.key")
  got="$(direct "${args[@]}" | head -n 1)"
  [[ "$got" != [0-9][0-9][0-9]* || "$got" == 000* ]] || die "the API answered HTTP $got to a peer with certificate $who"
  say "ok: the API refused the handshake with certificate $who (${got:0:60})"
done
got="$(direct --cert /certs/example.gateway.pem --key /certs/example.gateway.key | head -n 1)"
[[ "$got" == 401 ]] || die "with the gateway's certificate and no certificate hash the API answered $got, not 401"
say "ok: with the gateway's certificate but no partner certificate hash: 401"

# 6. Only the front proxy's port is published.
published="$(podman port "${project}_api_1" 2>/dev/null || true)"
[[ -z "$published" ]] || die "the API's port is published: $published"
say "ok: only the front proxy is published"
say "passed in $((SECONDS - started)) s"
