#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer via cargo-fuzz, with AddressSanitizer) of
# the loader (config.json parsing; every checkpoint file) and of C API call
# sequences. Only stable Rust is installed here: RUSTC_BOOTSTRAP=1 lets it
# accept the -Z sanitizer flags cargo-fuzz passes.
#
#   tools/fuzz.sh [seconds per target]      (default 20; CI runs 25 x 3)
#
# New inputs go to a scratch copy of fuzz/corpus/<target>; a crash stops the
# run, and its input is left in fuzz/artifacts/<target>/ (add it to the corpus
# once fixed).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
cargo fuzz build -O
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in config checkpoint c_api; do
  mkdir -p "$scratch/$t"
  cargo fuzz run -O "$t" "$scratch/$t" fuzz/corpus/"$t" -- \
    -max_total_time="$secs" -print_final_stats=1 2>&1 |
    grep -E "^Done|stat::number_of_executed_units|ERROR|panicked|SUMMARY" || true
  # cargo fuzz exits non-zero on a crash; pipefail is off for the grep above,
  # so check the artifacts instead.
  if compgen -G "fuzz/artifacts/$t/*" >/dev/null; then
    echo "fuzz target $t crashed: see fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
