#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each, from its corpus in fuzz/corpus/<target>
# (seeded by examples/seeds.rs from the tests' inputs), and prints executions per target. A crash
# stops the run with libFuzzer's report and the input in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh SECONDS [TARGET...]        (make fuzz, make fuzz-smoke)
#
# FUZZ_SANITIZER (default none): the targets are safe Rust (the only unsafe code, the host ABI,
# is not reachable from them), so libFuzzer runs them without AddressSanitizer, 2 to 10 times
# faster; FUZZ_SANITIZER=address builds them with it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=${1:?usage: run.sh SECONDS [TARGET...]}
shift
sanitizer=${FUZZ_SANITIZER:-none}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
# One build of every target (cargo fuzz build takes one target name or none); a compile error shows.
cargo +nightly fuzz build -s "$sanitizer"
cargo +nightly run -q --example seeds -- corpus ../certs/out >/dev/null
printf '%-22s %14s %10s %8s\n' target executions exec/s coverage
for t in "${targets[@]}"; do
  log=$(mktemp)
  mkdir -p "corpus/$t"
  if ! cargo +nightly fuzz run -s "$sanitizer" "$t" "corpus/$t" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $t failed: the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
  printf '%-22s %14s %10s %8s\n' "$t" "$runs" "$rate" "$cov"
  rm -f "$log"
done
