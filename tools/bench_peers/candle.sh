#!/usr/bin/env bash
# candle peer: builds tools/bench_peers/candle (outside the main workspace,
# target dir $PEERS_DIR/candle-target) and prints `candle <dtype> <tok/s>`
# (decode phase only) for each dtype.
#
#   tools/bench_peers/candle.sh MODEL_DIR [N_TOKENS]
#
# Env: PEERS_DIR [/tmp/peers], THREADS [2], DTYPES ["bf16 f32"],
#      PROMPT_IDS [1,2,3,4], CANDLE_RUSTFLAGS [-C target-cpu=native]
set -euo pipefail
MODEL_DIR=${1:?usage: candle.sh MODEL_DIR [N_TOKENS]}
N=${2:-128}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PEERS=${PEERS_DIR:-/tmp/peers}
export CARGO_TARGET_DIR=$PEERS/candle-target
BIN=$CARGO_TARGET_DIR/release/candle-bench
# Same CPU features as llama.cpp's GGML_NATIVE=ON build.
export RUSTFLAGS=${CANDLE_RUSTFLAGS:--C target-cpu=native}
# cargo itself skips the build when nothing changed.
nice -n 19 cargo build --release --locked -j "${BUILD_JOBS:-2}" --manifest-path "$HERE/candle/Cargo.toml" >&2
export RAYON_NUM_THREADS=${THREADS:-2}
for d in ${DTYPES:-bf16 f32}; do
    "$BIN" --model "$MODEL_DIR" --dtype "$d" --n "$N" --prompt-ids "${PROMPT_IDS:-1,2,3,4}"
done
