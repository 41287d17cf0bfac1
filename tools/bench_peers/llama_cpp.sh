#!/usr/bin/env bash
# llama.cpp peer: full-depth greedy decode tokens/s with llama-bench.
#
#   tools/bench_peers/llama_cpp.sh MODEL_DIR [N_TOKENS]
#
# 1. downloads the llama-cpp-python sdist from PyPI (it vendors llama.cpp),
# 2. builds only libllama + llama-bench from vendor/llama.cpp (CPU, Release,
#    GGML_NATIVE=ON, no CUDA, no curl/openssl),
# 3. makes a venv with gguf + what convert_hf_to_gguf.py needs (torch is taken
#    from /root/torchvenv through a .pth file, not reinstalled),
# 4. converts MODEL_DIR to GGUF at f32, f16, bf16 and q8_0,
# 5. runs `llama-bench -m X.gguf -p 0 -n N -t THREADS` for each and prints
#    one line per precision: `llama.cpp <precision> <tok/s>`.
# Every step is skipped when its output already exists (delete it to redo).
#
# Environment knobs (defaults in brackets):
#   PEERS_DIR [/tmp/peers]          where everything is downloaded/built
#   LLAMA_CPP_PYTHON_VERSION [0.3.36]
#   THREADS [2]   REPS [3]          llama-bench -t / -r
#   PRECISIONS ["f32 f16 bf16 q8_0"]
#   TORCH_PYTHON [/root/torchvenv/bin/python]  (supplies torch for convert)
#   BUILD_JOBS [2]
#   CONVERT_ONLY [unset]  set to stop after download/build/convert
set -euo pipefail

MODEL_DIR=${1:?usage: llama_cpp.sh MODEL_DIR [N_TOKENS]}
N=${2:-128}
MODEL_DIR=$(cd "$MODEL_DIR" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

PEERS=${PEERS_DIR:-/tmp/peers}
VER=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
THREADS=${THREADS:-2}
REPS=${REPS:-3}
PRECISIONS=${PRECISIONS:-"f32 f16 bf16 q8_0"}
TORCH_PYTHON=${TORCH_PYTHON:-/root/torchvenv/bin/python}
JOBS=${BUILD_JOBS:-2}

SRC=$PEERS/llama_cpp_python-$VER
LCPP=$SRC/vendor/llama.cpp
BUILD=$PEERS/llama.cpp-build-$VER
BENCH=$BUILD/bin/llama-bench
VENV=$PEERS/venv-gguf
GGUF_DIR=$PEERS/gguf
log() { echo "[llama_cpp.sh] $*" >&2; }

mkdir -p "$PEERS" "$GGUF_DIR"

# --- 1. source -------------------------------------------------------------
if [ ! -f "$LCPP/CMakeLists.txt" ]; then
    if [ ! -f "$PEERS/llama_cpp_python-$VER.tar.gz" ]; then
        log "downloading llama-cpp-python==$VER sdist"
        "$TORCH_PYTHON" -m pip download --no-binary :all: --no-deps \
            "llama-cpp-python==$VER" -d "$PEERS" >&2
    fi
    log "unpacking"
    tar -xzf "$PEERS/llama_cpp_python-$VER.tar.gz" -C "$PEERS"
fi

# --- 2. build llama-bench --------------------------------------------------
if [ ! -x "$BENCH" ]; then
    log "configuring llama.cpp in $BUILD"
    # The sdist has no .git; its CHANGELOG names the vendored llama.cpp commit.
    COMMIT=$(grep -m1 -o 'llama.cpp@[0-9a-f]*' "$SRC/CHANGELOG.md" | cut -d@ -f2 || true)
    nice -n 19 cmake -S "$LCPP" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_COMMIT="${COMMIT:-unknown}" >&2
    log "building llama-bench (-j$JOBS)"
    nice -n 19 cmake --build "$BUILD" --config Release --target llama-bench -j"$JOBS" >&2
fi

# --- 3. converter venv -----------------------------------------------------
if [ ! -f "$VENV/.ok" ]; then
    log "creating $VENV"
    BASE_PY=$("$TORCH_PYTHON" -c 'import sys; print(sys._base_executable)')
    "$BASE_PY" -m venv "$VENV"
    # torch from the existing venv (PyPI's default torch wheel drags in GBs of CUDA);
    # a .pth entry is appended after the venv's own site-packages, so the
    # versions pinned below win over the torch venv's copies.
    TORCH_SITE=$("$TORCH_PYTHON" -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))')
    SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$TORCH_SITE" > "$SITE/zz_torchvenv.pth"
    # requirements/requirements-convert_hf_to_gguf.txt minus torch; gguf from the vendored tree
    "$VENV/bin/pip" install -q "numpy~=2.2.6" "sentencepiece>=0.1.98,<0.3.0" \
        "transformers==4.57.6" "protobuf>=4.21.0,<5.0.0" "$LCPP/gguf-py" >&2
    "$VENV/bin/python" -c 'import torch, gguf, transformers, numpy' >&2
    touch "$VENV/.ok"
fi

# --- 4. convert --------------------------------------------------------------
NAME=$(basename "$MODEL_DIR")
for p in $PRECISIONS; do
    out=$GGUF_DIR/$NAME-$p.gguf
    if [ ! -s "$out" ]; then
        log "converting $MODEL_DIR -> $out"
        nice -n 19 "$VENV/bin/python" "$HERE/convert_gguf.py" "$LCPP" "$MODEL_DIR" \
            --outtype "$p" --outfile "$out.tmp" >&2
        mv "$out.tmp" "$out"
    fi
done

# --- 5. bench ----------------------------------------------------------------
[ -n "${CONVERT_ONLY:-}" ] && { log "CONVERT_ONLY set: GGUF files are in $GGUF_DIR"; exit 0; }
for p in $PRECISIONS; do
    out=$GGUF_DIR/$NAME-$p.gguf
    json=$("$BENCH" -m "$out" -p 0 -n "$N" -t "$THREADS" -r "$REPS" -o json 2>/dev/null)
    tps=$(printf '%s' "$json" | "$VENV/bin/python" -c 'import json,sys; print("%.2f" % json.load(sys.stdin)[0]["avg_ts"])')
    echo "llama.cpp $p $tps"
done
