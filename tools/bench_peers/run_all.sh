#!/usr/bin/env bash
# Side-by-side full-depth greedy decode tokens/s: layerskip vs its peers, same
# model, same thread count, same number of generated tokens.
#
#   tools/bench_peers/run_all.sh MODEL_DIR [N_TOKENS]
#
# Runs, in order: layerskip (bf16 checkpoint as is, plus `--quantize int8` and
# `--quantize bf16` when the CLI has them), transformers (bf16, f32), candle (bf16, f32),
# llama.cpp (f32, f16, bf16, q8_0); then prints one markdown table. A peer
# that fails is reported as `failed` and the others still run.
#
# Env: THREADS [2], PROMPT_IDS [1,2,3,4], LAYERSKIP [/work/main/target/release/layerskip
# or ../../target/release/layerskip], TORCH_PYTHON [/root/torchvenv/bin/python],
# PEERS_DIR [/tmp/peers], SKIP ["" | e.g. "candle llama.cpp"], plus the knobs
# of llama_cpp.sh and candle.sh.
set -uo pipefail
MODEL_DIR=${1:?usage: run_all.sh MODEL_DIR [N_TOKENS]}
N=${2:-128}
MODEL_DIR=$(cd "$MODEL_DIR" && pwd)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export THREADS=${THREADS:-2}
export PROMPT_IDS=${PROMPT_IDS:-1,2,3,4}
LAYERSKIP=${LAYERSKIP:-$ROOT/target/release/layerskip}
TORCH_PYTHON=${TORCH_PYTHON:-/root/torchvenv/bin/python}
SKIP=${SKIP:-}
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS"' EXIT

skip() { [[ " $SKIP " == *" $1 "* ]]; }
log() { echo "[run_all] $*" >&2; }

# --- layerskip -----------------------------------------------------------------
layerskip_tps() {  # extra args...
    # Into a file, not a pipe: a Python reading the pipe starts up while we
    # decode and takes one of the two cores (a 128-token run of the bundled
    # model measured 1500-1800 instead of 2800-3400 tokens/s that way).
    local out
    out=$(mktemp)
    RAYON_NUM_THREADS=$THREADS "$LAYERSKIP" generate --model "$MODEL_DIR" \
        --prompt-ids "$PROMPT_IDS" --max-new-tokens "$N" --ignore-eos --greedy --json "$@" >"$out" || { rm -f "$out"; return 1; }
    "$TORCH_PYTHON" -c '
import json, sys
s = json.load(open(sys.argv[1]))["stats"]
assert s["generated_tokens"] > 0, s
print("%.2f" % s["tokens_per_second"])' "$out"
    local rc=$?
    rm -f "$out"
    return $rc
}
log "layerskip bf16"
if tps=$(layerskip_tps); then echo "layerskip bf16 $tps" >>"$RESULTS"; else echo "layerskip bf16 failed" >>"$RESULTS"; fi
# `bf16-dot`: bf16 weights and bf16 product inputs, f32 sums (`--quantize
# bf16`), the arithmetic of llama.cpp's bf16 path.
for q in int8 bf16; do
    "$LAYERSKIP" generate --help 2>/dev/null | grep -q "possible values: none.*$q" || continue
    label=$q; [[ $q == bf16 ]] && label=bf16-dot
    log "layerskip $label"
    if tps=$(layerskip_tps --quantize $q); then echo "layerskip $label $tps" >>"$RESULTS"; else echo "layerskip $label failed" >>"$RESULTS"; fi
done

# --- peers -----------------------------------------------------------------------
run_peer() {  # engine-name expected-precisions command...
    local name=$1 precs=$2; shift 2
    if skip "$name"; then return; fi
    log "$name"
    local out
    out=$("$@")
    local rc=$?
    printf '%s\n' "$out" | grep -E "^$name " >>"$RESULTS"
    for p in $precs; do
        grep -qE "^$name $p " "$RESULTS" || echo "$name $p failed (rc $rc)" >>"$RESULTS"
    done
}
run_peer transformers "bf16 f32" "$TORCH_PYTHON" "$HERE/transformers_bench.py" "$MODEL_DIR" "$N" \
    --dtypes bf16,f32 --threads "$THREADS" --prompt-ids "$PROMPT_IDS"
run_peer candle "${DTYPES:-bf16 f32}" "$HERE/candle.sh" "$MODEL_DIR" "$N"
run_peer llama.cpp "${PRECISIONS:-f32 f16 bf16 q8_0}" "$HERE/llama_cpp.sh" "$MODEL_DIR" "$N"

# --- table -------------------------------------------------------------------------
echo
echo "model: $MODEL_DIR, $N new tokens, $THREADS threads, prompt ids $PROMPT_IDS"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo
awk '
    { eng[NR] = $1; prec[NR] = $2; tps[NR] = $3; if ($1 == "layerskip" && $2 == "bf16" && $3 ~ /^[0-9.]+$/) ref = $3 }
    END {
        print "| engine | precision | tok/s | layerskip bf16 / this |"
        print "| --- | --- | ---: | ---: |"
        for (i = 1; i <= NR; i++) {
            ok = tps[i] ~ /^[0-9.]+$/ && tps[i] > 0
            ratio = (ok && ref != "") ? sprintf("%.2f", ref / tps[i]) : "-"
            printf "| %s | %s | %s | %s |\n", eng[i], prec[i], ok ? tps[i] : "failed", ratio
        }
    }' "$RESULTS"
