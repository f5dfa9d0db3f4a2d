#!/usr/bin/env bash
# Speed and memory benchmarks of bgz-harness (design.md §6 "Speed"). Prints the figures;
# it does not judge them. Needs only the Rust toolchain and GNU time (/usr/bin/time).
#
#   bash bench/run.sh            # all benchmarks
#
# 1. start-up: `bgz-harness list` (parses every scenario, phase and target) x 20
# 2. the full embedded run: every phase, both directions, all probes
# 3. 200 concurrent cases: a generated n-op-m phase with 50 counterpart organisations x 4
#    departments of the target, run with --jobs 200
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/bgz-harness
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null 2>"$work/err" || true
  read -r secs kib < "$work/time"
  printf '%-42s wall %6.2f s   peak RSS %7.1f MiB\n' "$label" "$secs" "$(echo "$kib / 1024" | bc -l)"
}

start=$(date +%s%N)
for _ in $(seq 20); do "$bin" list >/dev/null 2>&1; done
end=$(date +%s%N)
printf '%-42s %6.1f ms per start\n' "start-up (bgz-harness list)" "$(echo "($end - $start) / 20 / 1000000" | bc -l)"

measure "full embedded run (all phases)" "$bin" run --progress never --reports "$work/reports-full"
grep -h "passed" "$work/err" | tail -1

# 200 cases at once: a project copy with a wide n-op-m matrix.
mkdir -p "$work/wide/scenarios/phases"
cp -r fixtures "$work/wide/"
cp scenarios/known-patient.yaml "$work/wide/scenarios/"
sed -i 's/^phases: .*/phases: [n-op-m]/' "$work/wide/scenarios/known-patient.yaml"
{
  echo "id: n-op-m"; echo "title: wide"; echo "environment: production"; echo "cases: [K]"
  echo "matrix:"; echo "  counterparts:"
  for i in $(seq 10 59); do
    echo "    - { name: Org $i, ura: \"900001$i\", departments: [a, b] }"
  done
  echo "  target-departments: [cardiologie, longziekten]"
} > "$work/wide/scenarios/phases/n-op-m.yaml"
measure "200 concurrent cases (--jobs 200)" "$bin" --root "$work/wide" run --progress never --jobs 200 --reports "$work/reports-wide"
grep -h "passed" "$work/err" | tail -1
