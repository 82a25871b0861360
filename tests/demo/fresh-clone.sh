#!/usr/bin/env bash
# make demo-test: `make demo` as a newcomer runs it, on a fresh clone of this repository's HEAD with
# nothing built, no certificates, no .venv and no node_modules. Twice (a newcomer's first and second
# run): each must exit 0, print the partner client's six lines and "system: demo: every step succeeded", and
# leave no pid file, no process and no listening port behind. Then the end state of the race that
# failed a first run once (issue 13: a service that exits while `stop` kills it): stopping a service
# whose process is already gone must exit 0 and remove its pid file.
# Uses the demo's default ports (8443 8444 8080 9901, the sidecar's 8447 8448 8449 9903): they must be free.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
say() { echo "demo-test: $*"; }
die() { say "FAILED: $*" >&2; exit 1; }

parent="$(mktemp -d "${TMPDIR:-/tmp}/certbound-demo.XXXXXX")"
clone="$parent/certbound"
trap '(cd "$clone" 2>/dev/null && example/system.sh down >/dev/null 2>&1); rm -rf "$parent"' EXIT
git clone -q "$repo" "$clone"
cd "$clone"
say "fresh clone of $(git rev-parse --short HEAD) in $clone"

ports=(8443 8444 8080 9901 8447 8448 8449 9903)
listening() { ss -Hltn 2>/dev/null | awk '{print $4}' | grep -Eq ":$1\$"; }
left_behind() {
  local p
  shopt -s nullglob
  local pids=(.run/*.pid)
  ((${#pids[@]} == 0)) || die "pid files left behind: ${pids[*]}"
  for p in "${ports[@]}"; do ! listening "$p" || die "port $p still listening after make demo"; done
  ! pgrep -f "$clone/" >/dev/null || die "processes from the clone still run: $(pgrep -af "$clone/")"
}

mapfile -t lines <tests/client-output.txt
lines+=("system: demo: every step succeeded")
for run in first second; do
  started=$SECONDS
  if ! make demo >"$parent/$run.log" 2>&1; then
    tail -n 40 "$parent/$run.log"
    die "the $run make demo failed"
  fi
  for l in "${lines[@]}"; do
    grep -qxF -- "$l" "$parent/$run.log" || { tail -n 40 "$parent/$run.log"; die "the $run make demo did not print: $l"; }
  done
  left_behind
  say "ok: the $run make demo passed in $((SECONDS - started)) s and left nothing behind"
done

# A service whose process died behind the script's back: stop must succeed and clean up.
CERTS_DIR="$clone/certs/out" example/system.sh start idsvr >/dev/null
read -r pid _ <.run/idsvr.pid
kill -KILL "$pid"
for _ in $(seq 50); do [[ -r "/proc/$pid/stat" ]] || break; sleep 0.1; done
out="$(example/system.sh stop idsvr 2>&1)" || die "stop failed when the process was already gone: $out"
[[ ! -e .run/idsvr.pid ]] || die "stop left the pid file of a process that was gone"
say "ok: stopping a service whose process is gone: exit 0, pid file removed ($out)"
