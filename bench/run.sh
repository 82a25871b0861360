#!/usr/bin/env bash
# The benchmark (make bench): builds the empty wasm filter and the bench tools, then runs
# bench/bench.py, which writes bench/results.md and bench/results.svg.
# Expects Envoy (.venv), the certificates (certs/out) and the filter (make build): `make bench`
# makes them first. Knobs: see bench/bench.py (BENCH_SECONDS=2 BENCH_RUNS=1 for a quick run).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="$PWD/target/bench"
echo "bench: building the empty proxy-wasm filter (bench/wasm-empty)"
cargo build --quiet --release --target wasm32-wasip1 --manifest-path bench/wasm-empty/Cargo.toml
echo "bench: building the load generator and identity-server stub (bench/tools)"
cargo build --quiet --release --manifest-path bench/tools/Cargo.toml

# oha is only the optional cross-check of the load generator (it cannot vary Authorization per
# request, which the certbound scenarios need); installed into .bench-tools when asked for.
if [[ "${BENCH_OHA:-0}" == 1 && ! -x .bench-tools/bin/oha ]]; then
  echo "bench: installing oha into .bench-tools (crates.io)"
  cargo install --quiet --locked --root .bench-tools oha
fi
unset CARGO_TARGET_DIR

# valgrind (callgrind) counts Envoy's instructions per request in the last phase (BENCH_CALLGRIND=0
# skips it); Debian's package is installed when missing and running as root, else the phase is skipped.
if [[ "${BENCH_CALLGRIND:-1}" != 0 ]] && ! command -v callgrind_control >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    echo "bench: installing valgrind (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends valgrind >/dev/null \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends valgrind >/dev/null; }
  else
    echo "bench: valgrind not found: the callgrind phase will be skipped (Debian: apt-get install valgrind)" >&2
  fi
fi

# The orchestrator runs on the load generator's CPU; it starts Envoy on the other one.
exec taskset -c 1 python3 bench/bench.py
