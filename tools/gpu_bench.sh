#!/usr/bin/env bash
# The CUDA engine's check on a GPU machine, most valuable first, in under
# 9 minutes: libraries and device; a smoke test (rerun under
# compute-sanitizer if it fails); every GPU test in its own process (a fault
# cannot poison the next test's context); a batched-sessions check; the
# benchmark on a Llama-3.2-1B-shaped model whose deep layers are zeroed
# (full depth, the speculation ceiling, verify rows against one).
#
# Needs the binaries of tools/gpu_prepare.sh in gpu-carry/, python3 with
# numpy, and an NVIDIA driver; CUDA's NVRTC and cuBLAS from a toolkit or the
# nvidia-* wheels. Without a GPU every GPU step says "no GPU" and the run
# goes on. Writes at most 4 files to $OUT (default /tmp/gpu-out):
# summary.txt, tests.log, bench.txt and details.tar.gz (everything else).
#
#   tools/gpu_prepare.sh && tools/gpu_bench.sh
set -uo pipefail
cd "$(dirname "$0")/.."
# On a GPU machine a GPU test that skips is a failure.
export LAYERSKIP_REQUIRE_GPU=1
export RUST_BACKTRACE=1
BIN=gpu-carry
OUT=${OUT:-/tmp/gpu-out}
MODELS=${MODELS:-/tmp/layerskip-gpu-models}
DETAILS=$(mktemp -d)
mkdir -p "$OUT" "$MODELS"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }

# The plan: step, timeout in seconds (the sum stays under 9 minutes).
PLAN=(
  "libraries-and-device 15"
  "smoke-test 45"
  "smoke-under-compute-sanitizer 60"
  "gpu-tests 180"
  "batched-sessions 45"
  "make-1b-model 60"
  "bench-ceiling 60"
  "bench-criterion 60"
)
total=0
say "step plan (timeouts):"
for p in "${PLAN[@]}"; do
  say "  $p s"
  total=$((total + ${p##* }))
done
say "  total $total s"
limit() { for p in "${PLAN[@]}"; do [ "${p% *}" = "$1" ] && echo "${p##* }"; done; }
step() { echo; say "=== $1 ($(date +%T), at most $(limit "$1") s)"; }
has_gpu() { nvidia-smi -L >/dev/null 2>&1; }

step libraries-and-device
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
    say "lib$lib: $f"
  else
    say "lib$lib: not found"
  fi
done
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The headers NVRTC needs (cuda_fp16.h, cuda_bf16.h).
if [ -z "${LAYERSKIP_CUDA_INCLUDE:-}" ]; then
  h=$(ls /usr/local/cuda/include/cuda_bf16.h /usr/local/cuda/targets/x86_64-linux/include/cuda_bf16.h 2>/dev/null | head -1)
  [ -n "$h" ] || h=$(for s in $SITES; do ls "$s"/nvidia/*/include/cuda_bf16.h 2>/dev/null; done | head -1)
  [ -n "$h" ] && export LAYERSKIP_CUDA_INCLUDE="$(dirname "$h")"
fi
say "CUDA headers: ${LAYERSKIP_CUDA_INCLUDE:-not found}"
# The test binaries read fixtures under the directory they were built in
# (CARGO_MANIFEST_DIR, compiled in): point that path here if it is missing.
built=$(cat "$BIN/manifest-dir" 2>/dev/null)
if [ -n "$built" ] && [ ! -e "$built" ]; then
  mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built" && echo "linked $built -> $PWD"
fi
# The test binaries read fixtures under the directory they were built in
# (CARGO_MANIFEST_DIR, compiled in): point that path here if it is missing.
built=$(cat "$BIN/manifest-dir" 2>/dev/null)
if [ -n "$built" ] && [ ! -e "$built" ]; then
  mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built" && echo "linked $built -> $PWD"
fi
{ timeout 10 nvidia-smi 2>&1 || echo "nvidia-smi: no GPU"; } >"$DETAILS/nvidia-smi.txt"
timeout 5 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$SUMMARY"
has_gpu || say "no GPU: the GPU steps below are skipped"

step smoke-test
smoke() {
  CUDA_LAUNCH_BLOCKING=1 timeout "$1" "${@:2}" "$BIN/layerskip" generate --model tests/fixtures/mha-f32     --device cuda --prompt-ids 5,6,7,8 --max-new-tokens 8 --ignore-eos --greedy --json
}
smoke_ok=no
if ! has_gpu; then
  say "no GPU"
elif smoke "$(limit smoke-test)" >"$DETAILS/smoke.txt" 2>&1; then
  smoke_ok=yes
  say "smoke test: ok ($(tail -c 300 "$DETAILS/smoke.txt" | tr -d '\n'))"
else
  say "smoke test FAILED:"; tail -20 "$DETAILS/smoke.txt" | tee -a "$SUMMARY"
fi

step smoke-under-compute-sanitizer
if [ "$smoke_ok" = yes ] || ! has_gpu; then
  say "not needed"
elif command -v compute-sanitizer >/dev/null 2>&1; then
  smoke "$(limit smoke-under-compute-sanitizer)" compute-sanitizer --tool memcheck >"$DETAILS/sanitizer.txt" 2>&1
  grep -E "ERROR|Invalid|out of bounds|========= " "$DETAILS/sanitizer.txt" | head -30 | tee -a "$SUMMARY"
else
  say "compute-sanitizer is not installed"
fi

step gpu-tests
TESTS_LOG="$OUT/tests.log"
: >"$TESTS_LOG"
if ! has_gpu; then
  say "no GPU"
else
  budget=$(limit gpu-tests)
  start=$SECONDS
  passed=0; failed=0; skipped=0
  for exe in cuda-tests cuda-cublas-tests cuda-split-tests; do
    for t in $("$BIN/$exe" --list 2>/dev/null | sed -n 's/: test$//p'); do
      left=$((budget - (SECONDS - start)))
      if [ "$left" -lt 5 ]; then skipped=$((skipped + 1)); echo "NOT RUN (time) $exe $t" >>"$TESTS_LOG"; continue; fi
      echo "=== $exe $t" >>"$TESTS_LOG"
      if timeout $((left < 60 ? left : 60)) "$BIN/$exe" --exact "$t" --nocapture >>"$TESTS_LOG" 2>&1; then
        passed=$((passed + 1))
      else
        failed=$((failed + 1)); say "FAILED: $exe $t"
      fi
    done
  done
  say "GPU tests: $passed passed, $failed failed, $skipped not run for time"
  grep -E "relative error|bit for bit|identical" "$TESTS_LOG" | head -20 >>"$SUMMARY"
fi

step batched-sessions
if ! has_gpu; then
  say "no GPU"
else
  timeout "$(limit batched-sessions)" "$BIN/layerskip" bench --device cuda --model tests/fixtures/mha-f32 \
    --sessions 1,3 --max-new-tokens 24 2>"$DETAILS/sessions.err" | tee "$DETAILS/sessions.txt" | tee -a "$SUMMARY"
  if grep -q " NO$" "$DETAILS/sessions.txt"; then say "batched sessions: outputs DIFFER from one at a time"
  elif grep -q " yes$" "$DETAILS/sessions.txt"; then say "batched sessions: identical"
  else say "batched sessions: no result"; tail -5 "$DETAILS/sessions.err" | tee -a "$SUMMARY"; fi
fi

BENCH="$OUT/bench.txt"
: >"$BENCH"
step make-1b-model
CEILING="$MODELS/rand1b-ceiling"
if ! has_gpu; then
  say "no GPU"
elif [ -f "$CEILING/config.json" ] || timeout "$(limit make-1b-model)" python3 tools/make_random_model.py \
    --out "$CEILING" --hidden 2048 --intermediate 8192 --layers 16 --heads 32 --kv-heads 8 \
    --vocab 128256 --zero-deep-from 4 >"$DETAILS/make-model.txt" 2>&1; then
  say "1B-shaped model (layers 4.. zeroed): $CEILING"
else
  say "could not make the 1B-shaped model"; tail -5 "$DETAILS/make-model.txt" | tee -a "$SUMMARY"
fi

step bench-ceiling
if ! has_gpu || [ ! -f "$CEILING/config.json" ]; then
  say "no GPU or no model"
else
  timeout "$(limit bench-ceiling)" "$BIN/layerskip" bench --device cuda --model "$CEILING" \
    --prompt-file tools/prompts/code.txt --max-new-tokens 48 --exit-layers 4 --draft-lens 2,4 --no-auto \
    2>"$DETAILS/bench-ceiling.err" | tee -a "$BENCH"
fi

step bench-criterion
if ! has_gpu || [ ! -f "$CEILING/config.json" ]; then
  say "no GPU or no model"
else
  LAYERSKIP_BENCH_MODEL="$CEILING" LAYERSKIP_BENCH_DEVICE=cuda timeout "$(limit bench-criterion)" \
    "$BIN/decode-bench" --bench '^(decode_step_full|verify_deep_pass/(1|5|9))$' --warm-up-time 1 \
    --measurement-time 2 >"$DETAILS/criterion.log" 2>&1
  grep -E "time:|panicked|rror" "$DETAILS/criterion.log" | tee -a "$BENCH"
fi

echo; say "=== done ($(date +%T))"
tar -czf "$OUT/details.tar.gz" -C "$DETAILS" . && rm -rf "$DETAILS"
ls -la "$OUT"
