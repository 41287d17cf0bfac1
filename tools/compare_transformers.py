#!/usr/bin/env python3
"""Side by side: transformers' generate(..., assistant_early_exit=E) against our
CLI's self-speculative mode, on the same checkpoint, prompt and token count.
Reports tokens/s for both (and full-depth greedy for both) and checks that the
greedy outputs are identical token for token.

    python tools/compare_transformers.py --model assets/layerskip-pycode-8l \
        --prompt "def fibonacci(n):" --max-new-tokens 128 --exit-layer 4 --draft-len 4

Needs torch + transformers (not run in CI). Both sides use the same thread count.
"""
import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent


def ours(model, ids, n, mode, exit_layer, draft_len, threads):
    cli = ROOT / "target" / "release" / "layerskip"
    cmd = [str(cli), "generate", "--model", model, "--prompt-ids", ",".join(map(str, ids)),
           "--max-new-tokens", str(n), "--ignore-eos", "--greedy", "--json", "--mode", mode,
           "--exit-layer", str(exit_layer), "--draft-len", str(draft_len)]
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
    return out["tokens"], out["stats"]["tokens_per_second"], out["stats"]


def theirs(m, ids, n, exit_layer, draft_len):
    x = torch.tensor([ids])
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False)
    if exit_layer:
        kw.update(assistant_early_exit=exit_layer, num_assistant_tokens=draft_len,
                  num_assistant_tokens_schedule="constant")
    with torch.no_grad():
        m.generate(x, max_new_tokens=4, do_sample=False)  # warm-up
        t = time.perf_counter()
        out = m.generate(x, **kw)
        dt = time.perf_counter() - t
    new = out[0, len(ids):].tolist()
    return new, len(new) / dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "assets/layerskip-pycode-8l"))
    ap.add_argument("--prompt", default="def fibonacci(n):")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--exit-layer", type=int, default=4)
    ap.add_argument("--draft-len", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model)
    ids = tok(a.prompt)["input_ids"]
    m = LlamaForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype)).eval()
    # Stop only at the budget on both sides.
    m.generation_config.eos_token_id = None
    n = a.max_new_tokens

    rows = []
    t_full, tps_t_full = theirs(m, ids, n, 0, 0)
    o_full, tps_o_full, _ = ours(a.model, ids, n, "full", a.exit_layer, a.draft_len, a.threads)
    t_spec, tps_t_spec = theirs(m, ids, n, a.exit_layer, a.draft_len)
    o_spec, tps_o_spec, st = ours(a.model, ids, n, "self-speculative", a.exit_layer, a.draft_len, a.threads)
    rows.append(("transformers full (greedy)", tps_t_full, 1.0))
    rows.append((f"transformers assistant_early_exit={a.exit_layer}, {a.draft_len} drafts", tps_t_spec, tps_t_spec / tps_t_full))
    rows.append(("layerskip full", tps_o_full, 1.0))
    rows.append((f"layerskip self-speculative E={a.exit_layer} d={a.draft_len}", tps_o_spec, tps_o_spec / tps_o_full))
    print(f"model {a.model}, prompt {a.prompt!r}, {n} new tokens, {a.threads} threads, transformers {a.dtype}")
    print(f"| run | tokens/s | speedup over its own full depth |\n|---|---|---|")
    for name, tps, sp in rows:
        print(f"| {name} | {tps:.1f} | {sp:.2f}x |")
    print(f"layerskip self-speculative vs transformers assistant_early_exit: {tps_o_spec / tps_t_spec:.2f}x")
    print(f"layerskip acceptance {100 * st['acceptance_rate']:.1f}%")
    same = t_full == o_full == t_spec == o_spec
    print("greedy outputs identical (transformers full, transformers early-exit assisted, ours full, ours self-speculative):", same)
    if not same:
        for name, seq in [("t_full", t_full), ("o_full", o_full), ("t_spec", t_spec), ("o_spec", o_spec)]:
            print(name, seq[:40])
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
