#!/usr/bin/env bash
# Runs the example system on this machine: the identity server (Node), the example API (Rust) and
# Envoy with certbound (PROXY=nginx: NGINX with ngx_wasm_module and certbound, behind an NGINX stream
# front, nginx/), each in the background with its log and pid under the run directory.
# One script for `make demo|up|down|logs` and for the end-to-end tests (tests/e2e.rs).
#
# Usage: example/system.sh up | down | demo | status | logs [-f] | check-ports
#        example/system.sh start | stop | wait SERVICE
#                                  SERVICE: idsvr api sidecar envoy envoy-formats nginx-gateway nginx-front
#
#   up       check tools and ports, start idsvr, api, sidecar, envoy in that order, each waited for
#            (PROXY=nginx: idsvr, api, nginx-gateway, nginx-front)
#   down     stop every service started from the run directory
#   demo     up, run example/client.sh, down (also on failure); exit 0 only if all succeeded
#   logs     the last lines of every log (-f: follow them)
#
# Environment [default]:
#   PROXY [envoy]      envoy, or nginx: the gateway is nginx/gateway.conf in NGINX with ngx_wasm_module
#                      (NGINX_WASM [target/nginx-wasm/nginx], `make nginx-wasm`) behind nginx/front.conf
#                      in Debian's nginx with its stream module (NGINX_BIN [nginx])
#   NGINX_GATEWAY_PORT [8450]  NGINX_EGRESS_PORT [8451]   (PROXY=nginx: the gateway, its loopback hop)
#   CERTBOUND_RUN_DIR [.run]   logs, pids and the Envoy configurations as run (ports mapped)
#   FRONT_PORT [8443]  IDSVR_PORT [8444]  API_PORT [8080]  ADMIN_PORT [9901]
#   FORMATS_PORT [8445]  FORMATS_ADMIN_PORT [9902]   (envoy-formats, used by the tests)
#   SIDECAR_PORT [8447]  SIDECAR_HAPROXY_PORT [8448]  SIDECAR_NGINX_PORT [8449]
#   SIDECAR_ADMIN_PORT [9903]   (the inner proxy, envoy/envoy-sidecar.yaml)
#   ENVOY_BIN [.venv/bin/envoy]  API_BIN [target/release/certbound-example-api]  NODE [node]
#   ENVOY_CONFIG_BIN [target/debug/envoy-config]   the Envoy configuration generator (make envoy-config)
#   CERTS_DIR [certs/out]  READY_TIMEOUT [90] seconds per service
#   ENVOY_CONCURRENCY [2]      Envoy's workers (each runs its own certbound VM)
#   CERTBOUND_PARENT_PID       if set, everything is stopped when that process exits (tests)
#   IDSVR_ACCESS_TOKEN_TTL, IDSVR_STATE_DIR, INTROSPECT_CLIENT_SECRET   passed to the identity server
#   IDSVR_ADMIN_PORT, IDSVR_ADMIN_TOKEN   the identity server's offboarding endpoint (off without both)
#   API_ADMIN_PORT             passed to the API (GET /stats on that port)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

abs() { case "$1" in /*) echo "$1" ;; *) echo "$ROOT/$1" ;; esac; }

RUN_DIR="$(abs "${CERTBOUND_RUN_DIR:-.run}")"
FRONT_PORT="${FRONT_PORT:-8443}"
IDSVR_PORT="${IDSVR_PORT:-8444}"
API_PORT="${API_PORT:-8080}"
ADMIN_PORT="${ADMIN_PORT:-9901}"
FORMATS_PORT="${FORMATS_PORT:-8445}"
FORMATS_ADMIN_PORT="${FORMATS_ADMIN_PORT:-9902}"
SIDECAR_PORT="${SIDECAR_PORT:-8447}"
SIDECAR_HAPROXY_PORT="${SIDECAR_HAPROXY_PORT:-8448}"
SIDECAR_NGINX_PORT="${SIDECAR_NGINX_PORT:-8449}"
SIDECAR_ADMIN_PORT="${SIDECAR_ADMIN_PORT:-9903}"
ENVOY_BIN="$(abs "${ENVOY_BIN:-.venv/bin/envoy}")"
API_BIN="$(abs "${API_BIN:-target/release/certbound-example-api}")"
ENVOY_CONFIG_BIN="$(abs "${ENVOY_CONFIG_BIN:-target/debug/envoy-config}")"
NODE="${NODE:-node}"
CERTS_DIR="$(abs "${CERTS_DIR:-certs/out}")"
READY_TIMEOUT="${READY_TIMEOUT:-90}"
ENVOY_CONCURRENCY="${ENVOY_CONCURRENCY:-2}"
PROXY="${PROXY:-envoy}"
NGINX_GATEWAY_PORT="${NGINX_GATEWAY_PORT:-8450}"
NGINX_EGRESS_PORT="${NGINX_EGRESS_PORT:-8451}"
NGINX_BIN="${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}"
NGINX_WASM="$(abs "${NGINX_WASM:-target/nginx-wasm/nginx}")"
NGINX_STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so
SERVICES=(idsvr api sidecar envoy envoy-formats nginx-gateway nginx-front)
# What `up` starts, in order.
case "$PROXY" in
  envoy) SYSTEM=(idsvr api sidecar envoy) ;;
  nginx) SYSTEM=(idsvr api nginx-gateway nginx-front) ;;
  *) echo "system: error: PROXY must be envoy or nginx, not '$PROXY'" >&2; exit 2 ;;
esac

say() { echo "system: $*"; }
die() { echo "system: error: $*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

pid_file() { echo "$RUN_DIR/$1.pid"; }
log_file() { echo "$RUN_DIR/$1.log"; }

# A process's start time (clock ticks since boot): with the pid, it names one process for good.
start_time() { sed -E 's/^.*\) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }

# Whether a process still runs (a zombie waiting for its reaper does not).
alive() { [[ -r "/proc/$1/stat" ]] && [[ "$(sed -E 's/^.*\) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]]; }

# The pid of a service we started and that still runs. The pid file holds the pid and the process's
# start time, so a pid reused by another process is never taken for ours.
running_pid() {
  local f pid started
  f="$(pid_file "$1")"
  [[ -s "$f" ]] || return 1
  read -r pid started <"$f" || return 1
  [[ "$pid" =~ ^[0-9]+$ && -n "$started" ]] || return 1
  [[ "$(start_time "$pid")" == "$started" ]] && alive "$pid" || return 1
  echo "$pid"
}

service_port() {
  case "$1" in
    idsvr) echo "$IDSVR_PORT" ;;
    api) echo "$API_PORT" ;;
    envoy) echo "$FRONT_PORT $ADMIN_PORT" ;;
    sidecar) echo "$SIDECAR_PORT $SIDECAR_HAPROXY_PORT $SIDECAR_NGINX_PORT $SIDECAR_ADMIN_PORT" ;;
    envoy-formats) echo "$FORMATS_PORT $FORMATS_ADMIN_PORT" ;;
    nginx-gateway) echo "$NGINX_GATEWAY_PORT $NGINX_EGRESS_PORT" ;;
    nginx-front) echo "$FRONT_PORT" ;;
  esac
}

known_service() {
  local s
  for s in "${SERVICES[@]}"; do [[ "$s" == "$1" ]] && return 0; done
  die "unknown service '$1' (one of: ${SERVICES[*]})"
}

port_in_use() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

check_ports() { # services...
  local s p busy=()
  for s in "$@"; do
    running_pid "$s" >/dev/null && continue
    for p in $(service_port "$s"); do
      port_in_use "$p" && busy+=("127.0.0.1:$p ($s)")
    done
  done
  if ((${#busy[@]})); then
    echo "system: error: already in use: ${busy[*]}" >&2
    echo "system: stop what listens there (a running 'make up'? then 'make down'), or choose other ports" \
      "(FRONT_PORT, IDSVR_PORT, API_PORT, ADMIN_PORT)" >&2
    exit 1
  fi
}

require_tools() { # services...
  local s
  command -v curl >/dev/null || die "curl not found on PATH (Debian: apt-get install curl)"
  for s in "$@"; do
    case "$s" in
      idsvr)
        command -v "$NODE" >/dev/null || die "node not found on PATH: install Node.js 20 or later (Debian: apt-get install nodejs npm)"
        [[ -d example/idsvr/node_modules/oidc-provider ]] ||
          die "example/idsvr/node_modules is missing: run 'npm ci' in example/idsvr (make demo does it)"
        ;;
      api) [[ -x "$API_BIN" ]] || die "the API binary $API_BIN is missing: run 'cargo build --release -p certbound-example-api' (make demo does it)" ;;
      envoy | envoy-formats | sidecar)
        [[ -x "$ENVOY_BIN" ]] || die "Envoy not found at $ENVOY_BIN: run 'make setup'"
        [[ -x "$ENVOY_CONFIG_BIN" ]] || die "the Envoy configuration generator is not built at $ENVOY_CONFIG_BIN: run 'make envoy-config'"
        [[ -f target/wasm32-wasip1/release/certbound.wasm ]] || die "the filter is not built: run 'make build'"
        ;;
    nginx-gateway)
        [[ -x "$NGINX_WASM" ]] || die "NGINX with ngx_wasm_module not found at $NGINX_WASM: run 'make nginx-wasm' (or set NGINX_WASM)"
        [[ -f target/wasm32-wasip1/release/certbound.wasm ]] || die "the filter is not built: run 'make build'"
        ;;
    nginx-front)
        [[ -x "$NGINX_BIN" ]] || die "nginx not found: run 'make setup-nginx-front' (Debian: apt-get install nginx-light libnginx-mod-stream)"
        [[ -f "$NGINX_STREAM_MODULE" ]] || die "$NGINX_STREAM_MODULE is missing: run 'make setup-nginx-front' (Debian: apt-get install libnginx-mod-stream)"
        ;;
    esac
  done
  for f in root.pem trust.pem example.tls.pem example.tls.key; do
    [[ -f "$CERTS_DIR/$f" ]] || die "$CERTS_DIR/$f is missing: run 'make certs'"
  done
}

# Envoy's configuration with this run's ports (the files in envoy/ use the default ports), rendered by
# the one generator of Envoy configurations (tools/envoy-config).
render_envoy() { # source destination
  "$ENVOY_CONFIG_BIN" front-proxy "$1" \
    --port "8443=$FRONT_PORT" --port "8444=$IDSVR_PORT" --port "8080=$API_PORT" \
    --port "9901=$ADMIN_PORT" --port "8445=$FORMATS_PORT" --port "9902=$FORMATS_ADMIN_PORT" \
    --port "8447=$SIDECAR_PORT" --port "8448=$SIDECAR_HAPROXY_PORT" --port "8449=$SIDECAR_NGINX_PORT" \
    --port "9903=$SIDECAR_ADMIN_PORT" >"$2"
}

# An NGINX configuration of nginx/ with this run's ports and run directory (the files use the
# defaults: 8443 front, 8444 identity server, 8080 API, 8450 gateway, 8451 its loopback hop).
render_nginx() { # source destination
  sed -e "s#127\.0\.0\.1:8443\b#127.0.0.1:$FRONT_PORT#g" -e "s#127\.0\.0\.1:8444\b#127.0.0.1:$IDSVR_PORT#g" \
    -e "s#127\.0\.0\.1:8080\b#127.0.0.1:$API_PORT#g" -e "s#127\.0\.0\.1:8450\b#127.0.0.1:$NGINX_GATEWAY_PORT#g" \
    -e "s#127\.0\.0\.1:8451\b#127.0.0.1:$NGINX_EGRESS_PORT#g" -e "s#certs/out/#$CERTS_DIR/#g" \
    -e "s# \.run/# $RUN_DIR/#g" "$1" >"$2"
}

# This installation's introspection client secret: INTROSPECT_CLIENT_SECRET if set, else the one
# certs/make-certs.sh made. The identity server and the API read the same.
introspect_secret() {
  if [[ -n "${INTROSPECT_CLIENT_SECRET:-}" ]]; then
    echo "$INTROSPECT_CLIENT_SECRET"
  else
    cat "$CERTS_DIR/introspect-client.secret" 2>/dev/null || die "no $CERTS_DIR/introspect-client.secret: run certs/make-certs.sh"
  fi
}

launch() { # service
  local s="$1" log
  log="$(log_file "$s")"
  : >"$log"
  case "$s" in
    idsvr)
      (
        cd example/idsvr
        CERTS_DIR="$CERTS_DIR" IDSVR_PORT="$IDSVR_PORT" IDSVR_HOST=127.0.0.1 exec "$NODE" server.js
      ) >>"$log" 2>&1 </dev/null &
      ;;
    api)
      (
        # HTTPS for the gateway only: its certificate, the example CA's, the subject below.
        API_HOST=127.0.0.1 API_PORT="$API_PORT" API_CA_FILE="$CERTS_DIR/root.pem" \
          API_CERT_FILE="$CERTS_DIR/example.tls.pem" API_KEY_FILE="$CERTS_DIR/example.tls.key" \
          API_CLIENT_CA_FILE="$CERTS_DIR/trust.pem" API_GATEWAY_SUBJECT="CN=certbound-gateway,O=Example Bank" \
          API_JWKS_URL="https://127.0.0.1:$IDSVR_PORT/oauth/v2/oauth-anonymous/jwks" \
          exec "$API_BIN"
      ) >>"$log" 2>&1 </dev/null &
      ;;
    envoy | envoy-formats | sidecar)
      local src="envoy/envoy.yaml" admin="$ADMIN_PORT"
      [[ "$s" == envoy-formats ]] && src="envoy/envoy-formats.yaml" admin="$FORMATS_ADMIN_PORT"
      [[ "$s" == sidecar ]] && src="envoy/envoy-sidecar.yaml" admin="$SIDECAR_ADMIN_PORT"
      render_envoy "$src" "$RUN_DIR/$s.yaml" || die "cannot render $src (the generator said why, above)"
      (
        # The filter reads the introspection client's secret from its VM's environment
        # (vm_config.environment_variables.host_env_keys), which Envoy passes from its own.
        CERTBOUND_INTROSPECT_SECRET="$(introspect_secret)" \
          exec "$ENVOY_BIN" -c "$RUN_DIR/$s.yaml" --disable-hot-restart --base-id "$admin" \
          --concurrency "$ENVOY_CONCURRENCY" \
          --log-level warn --component-log-level wasm:info
      ) >>"$log" 2>&1 </dev/null &
      ;;
    nginx-gateway | nginx-front)
      local bin="$NGINX_WASM"
      [[ "$s" == nginx-front ]] && bin="$NGINX_BIN"
      render_nginx "nginx/${s#nginx-}.conf" "$RUN_DIR/$s.conf"
      # The repository root is the prefix: the module's and the certificates' relative paths.
      "$bin" -t -q -e "$log" -p "$ROOT/" -c "$RUN_DIR/$s.conf" >>"$log" 2>&1 ||
        die "$s: nginx -t refused $RUN_DIR/$s.conf (see $log)"
      (exec "$bin" -e "$log" -p "$ROOT/" -c "$RUN_DIR/$s.conf") >>"$log" 2>&1 </dev/null &
      ;;
  esac
  echo "$! $(start_time $!)" >"$(pid_file "$s")"
}

is_ready() { # service
  case "$1" in
    idsvr)
      curl -fsS -o /dev/null --max-time 2 --cacert "$CERTS_DIR/root.pem" \
        "https://127.0.0.1:$IDSVR_PORT/oauth/v2/oauth-anonymous/jwks" 2>/dev/null
      ;;
    api)
      # Any HTTP answer will do (it is 401 without a token); only the gateway's certificate gets one.
      [[ "$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$CERTS_DIR/root.pem" \
        --cert "$CERTS_DIR/example.gateway.pem" --key "$CERTS_DIR/example.gateway.key" \
        "https://127.0.0.1:$API_PORT/api/transactions" 2>/dev/null)" != 000 ]]
      ;;
    envoy) [[ "$(curl -sS --max-time 2 "http://127.0.0.1:$ADMIN_PORT/ready" 2>/dev/null)" == LIVE ]] ;;
    envoy-formats) [[ "$(curl -sS --max-time 2 "http://127.0.0.1:$FORMATS_ADMIN_PORT/ready" 2>/dev/null)" == LIVE ]] ;;
    sidecar) [[ "$(curl -sS --max-time 2 "http://127.0.0.1:$SIDECAR_ADMIN_PORT/ready" 2>/dev/null)" == LIVE ]] ;;
    # certbound's own 401 for a request without a token: its workers are configured.
    nginx-gateway)
      [[ "$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$CERTS_DIR/root.pem" \
        --cert "$CERTS_DIR/example.client.pem" --key "$CERTS_DIR/example.client.key" \
        --resolve "api.example.com:$NGINX_GATEWAY_PORT:127.0.0.1" \
        "https://api.example.com:$NGINX_GATEWAY_PORT/api/transactions" 2>/dev/null)" == 401 ]]
      ;;
    nginx-front) port_in_use "$FRONT_PORT" ;;
  esac
}

wait_ready() { # service
  local s="$1" deadline=$((SECONDS + READY_TIMEOUT))
  while ! is_ready "$s"; do
    if ! running_pid "$s" >/dev/null; then
      echo "system: error: $s exited while starting; the end of $(log_file "$s"):" >&2
      tail -n 30 "$(log_file "$s")" >&2 || true
      return 1
    fi
    if ((SECONDS >= deadline)); then
      echo "system: error: $s not ready after ${READY_TIMEOUT}s; the end of $(log_file "$s"):" >&2
      tail -n 30 "$(log_file "$s")" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

# Stops everything when the given process exits (the tests pass their own pid).
watch_parent() {
  [[ -n "${CERTBOUND_PARENT_PID:-}" ]] || return 0
  running_pid watchdog >/dev/null && return 0
  (
    trap '' HUP INT
    while kill -0 "$CERTBOUND_PARENT_PID" 2>/dev/null; do sleep 1; done
    "$ROOT/example/system.sh" down >/dev/null 2>&1
  ) </dev/null >/dev/null 2>&1 &
  echo "$! $(start_time $!)" >"$(pid_file watchdog)"
}

start() { # service
  local s="$1" pid
  known_service "$s"
  mkdir -p "$RUN_DIR"
  if pid="$(running_pid "$s")"; then
    say "$s already running (pid $pid)"
    return 0
  fi
  require_tools "$s"
  check_ports "$s"
  watch_parent
  launch "$s"
  wait_ready "$s" || { stop "$s" >/dev/null; return 1; }
  say "$s ready (pid $(running_pid "$s"), log $(log_file "$s"))"
}

stop() { # service
  local s="$1" pid i
  known_service "$s"
  if pid="$(running_pid "$s")"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      alive "$pid" || break
      sleep 0.05
    done
    # It may exit between the check and the kill: neither is a failure (under set -e, a bare
    # `alive && kill` was, and left the pid file behind).
    if alive "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 40; i++)); do
        alive "$pid" || break
        sleep 0.05
      done
    fi
    say "$s stopped"
  fi
  rm -f "$(pid_file "$s")"
}

up() {
  mkdir -p "$RUN_DIR"
  require_tools "${SYSTEM[@]}"
  check_ports "${SYSTEM[@]}"
  local s
  for s in "${SYSTEM[@]}"; do
    start "$s" || { down; die "the system did not start (see above)"; }
  done
  if [[ "$PROXY" == nginx ]]; then
    say "up (NGINX): https://login.example.com:$FRONT_PORT and https://api.example.com:$FRONT_PORT on" \
      "127.0.0.1; logs in $RUN_DIR"
  else
    say "up: https://login.example.com:$FRONT_PORT and https://api.example.com:$FRONT_PORT on 127.0.0.1;" \
      "Envoy admin http://127.0.0.1:$ADMIN_PORT; logs in $RUN_DIR"
  fi
}

down() {
  local i
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do stop "${SERVICES[i]}"; done
  local w
  if w="$(running_pid watchdog)"; then kill "$w" 2>/dev/null || true; fi
  rm -f "$(pid_file watchdog)"
}

status() {
  local s pid
  for s in "${SERVICES[@]}"; do
    if pid="$(running_pid "$s")"; then echo "$s: running (pid $pid)"; else echo "$s: stopped"; fi
  done
}

logs() {
  shopt -s nullglob
  local files=("$RUN_DIR"/*.log)
  ((${#files[@]})) || die "no logs in $RUN_DIR (start the system with 'make up')"
  if [[ "${1:-}" == -f ]]; then exec tail -n 40 -F "${files[@]}"; fi
  tail -n 40 "${files[@]}"
}

# demo starts and stops its own system: it must not take over (and then stop) one left by `up`.
nothing_running() {
  local s pid
  for s in "${SERVICES[@]}"; do
    if pid="$(running_pid "$s")"; then
      die "$s is already running (pid $pid, from $RUN_DIR): stop the system first ('make down')"
    fi
  done
}

demo() {
  nothing_running
  check_ports "${SYSTEM[@]}"
  trap 'down' EXIT
  trap 'exit 130' INT TERM
  up
  echo
  FRONT_PORT="$FRONT_PORT" CERTS_DIR="$CERTS_DIR" "$ROOT/example/client.sh"
  echo
  say "demo: every step succeeded"
}

cmd="${1:-}"
case "$cmd" in
  up) up ;;
  down) down ;;
  demo) demo ;;
  status) status ;;
  logs) logs "${2:-}" ;;
  check-ports) nothing_running && check_ports "${SYSTEM[@]}" ;;
  start | stop | wait)
    [[ $# -eq 2 ]] || usage
    case "$cmd" in
      start) start "$2" ;;
      stop) stop "$2" ;;
      wait) known_service "$2" && wait_ready "$2" ;;
    esac
    ;;
  *) usage ;;
esac
