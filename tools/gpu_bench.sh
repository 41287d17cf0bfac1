#!/usr/bin/env bash
# The CUDA engine's GPU check, as one script: tests (parity with the CPU
# engine, batch invariance, lossless self-speculation), the same CLI command
# on the CPU and the GPU, and the benchmark on a Llama-3.2-1B-shaped random
# bf16 model: full-depth tokens/s against the HBM roofline, the speedup
# ceiling of self-speculation (deep layers zeroed: every draft accepted) for
# E in {4, 8} and d in {2, 4, 6}, and a verify pass of d + 1 rows against one.
#
# Needs the binaries of tools/gpu_prepare.sh in gpu-carry/ and python3 with
# numpy (for tools/make_random_model.py). Writes logs under $OUT (default
# /tmp/gpu-out).
#
#   tools/gpu_prepare.sh                     # here, without a GPU
#   tools/gpu_bench.sh                       # there
set -uo pipefail
cd "$(dirname "$0")/.."
# On a GPU machine a GPU test that skips is a failure.
export LAYERSKIP_REQUIRE_GPU=1
BIN=gpu-carry
OUT=${OUT:-/tmp/gpu-out}
MODELS=${MODELS:-/tmp/layerskip-gpu-models}
mkdir -p "$OUT" "$MODELS"
# NVRTC and cuBLAS: cudarc (CUDA 12.9 bindings, loaded by symbol) tries
# libnvrtc.so / libcublas.so first, so link whatever version is installed
# (a toolkit under /usr/local/cuda, or the nvidia-* Python wheels) under
# those names, and put its folder on the path for the libraries it needs.
LIBS=/tmp/layerskip-cuda-libs
mkdir -p "$LIBS"
SITES=$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null)
candidates() {
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
    ls "$d"/lib$1.so* 2>/dev/null
  done
  for s in $SITES; do ls "$s"/nvidia/*/lib/lib$1.so* "$s"/nvidia/lib/lib$1.so* 2>/dev/null; done
}
for lib in nvrtc cublas cublasLt; do
  f=$(candidates $lib | grep -v -e builtins -e alt | head -1)
  if [ -n "$f" ]; then
    ln -sf "$f" "$LIBS/lib$lib.so"
    LD_LIBRARY_PATH="$(dirname "$f")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "lib$lib: $f"
  else
    echo "lib$lib: not found"
  fi
done
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The headers NVRTC needs (cuda_fp16.h, cuda_bf16.h).
if [ -z "${LAYERSKIP_CUDA_INCLUDE:-}" ]; then
  h=$(ls /usr/local/cuda/include/cuda_bf16.h /usr/local/cuda/targets/x86_64-linux/include/cuda_bf16.h 2>/dev/null | head -1)
  [ -n "$h" ] || h=$(for s in $SITES; do ls "$s"/nvidia/*/include/cuda_bf16.h 2>/dev/null; done | head -1)
  [ -n "$h" ] && export LAYERSKIP_CUDA_INCLUDE="$(dirname "$h")"
fi
echo "CUDA headers: ${LAYERSKIP_CUDA_INCLUDE:-not found}"
# The test binaries read fixtures under the directory they were built in
# (CARGO_MANIFEST_DIR, compiled in): point that path here if it is missing.
built=$(cat "$BIN/manifest-dir" 2>/dev/null)
if [ -n "$built" ] && [ ! -e "$built" ]; then
  mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built" && echo "linked $built -> $PWD"
fi
export RUST_BACKTRACE=1
step() { echo; echo "=== $* ($(date +%T))"; }
# A bench's table on stdout; its progress bar and any error in $OUT/NAME.err.
bench() {
  local name=$1; shift
  timeout 400 "$BIN/layerskip" bench --device cuda "$@" 2>"$OUT/$name.err" | tee "$OUT/$name.txt" ||
    tail -c 2000 "$OUT/$name.err"
}

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv 2>&1 | tee "$OUT/device.txt"

step "smoke test: load a fixture on the GPU and decode (stops here on failure, to save device time)"
if ! timeout 120 "$BIN/layerskip" generate --model tests/fixtures/mha-f32 --device cuda \
    --prompt-ids 5,6,7,8 --max-new-tokens 8 --ignore-eos --greedy --json 2>&1 | tee "$OUT/smoke.txt"; then
  echo "smoke test failed: see above"; exit 1
fi

step "tests: kernel compile, parity with the CPU engine, batch invariance, lossless speculation"
timeout 300 "$BIN/cuda-tests" --nocapture --test-threads 1 2>&1 | tee "$OUT/tests.log"
timeout 120 "$BIN/cuda-cublas-tests" --nocapture 2>&1 | tee -a "$OUT/tests.log"
timeout 120 "$BIN/cuda-split-tests" --nocapture 2>&1 | tee -a "$OUT/tests.log"

step "the same CLI command on the CPU and on the GPU (f32 fixture, greedy)"
for d in cpu cuda; do
  timeout 60 "$BIN/layerskip" generate --model tests/fixtures/mha-f32 --device $d \
    --prompt-ids 5,6,7,8 --max-new-tokens 24 --ignore-eos --greedy --json >"$OUT/cli-$d.json" || tail -3 "$OUT/cli-$d.json"
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tokens"])' "$OUT/cli-$d.json" 2>/dev/null |
    tee "$OUT/cli-$d.txt"
done
cmp -s "$OUT/cli-cpu.txt" "$OUT/cli-cuda.txt" && echo "same greedy tokens: yes" || echo "same greedy tokens: NO"

step "Llama-3.2-1B-shaped random bf16 models"
shape="--hidden 2048 --intermediate 8192 --layers 16 --heads 32 --kv-heads 8 --vocab 128256"
[ -f "$MODELS/rand1b/config.json" ] || timeout 300 python3 tools/make_random_model.py --out "$MODELS/rand1b" $shape
[ -f "$MODELS/rand1b-ceiling/config.json" ] || timeout 300 python3 tools/make_random_model.py --out "$MODELS/rand1b-ceiling" $shape --zero-deep-from 4

step "full depth and the speedup ceiling (E in {4, 8}, d in {2, 4, 6})"
bench bench-ceiling --model "$MODELS/rand1b-ceiling" --prompt-file tools/prompts/code.txt \
  --max-new-tokens 64 --exit-layers 4,8 --draft-lens 2,4,6 --no-auto
bench bench-plain --model "$MODELS/rand1b" --prompt-file tools/prompts/code.txt \
  --max-new-tokens 64 --exit-layers 8 --draft-lens 2 --no-auto

step "verify pass of d + 1 rows against one row (criterion)"
LAYERSKIP_BENCH_MODEL="$MODELS/rand1b" LAYERSKIP_BENCH_DEVICE=cuda timeout 300 \
  "$BIN/decode-bench" --bench --warm-up-time 1 --measurement-time 3 >"$OUT/verify.log" 2>&1
grep -E "time:|panicked|rror" "$OUT/verify.log" | tee "$OUT/verify.txt"
step "done"
