#!/usr/bin/env python3
"""Side by side from Python: transformers' generate(..., assistant_early_exit=E)
and full depth against layerskip's self-speculative mode and full depth
(through the layerskip package), on the same checkpoint, prompts and token
count, in alternating runs (prompt by prompt, one run of each in turn).

Needs torch, transformers and the layerskip package (`pip install ./python`);
not run in CI:
    python tools/compare_transformers.py [--model DIR] [--prompt TEXT | --prompts FILE]
        [--exit-layer 5] [--draft-len 2] [--max-new-tokens 128] [--repeat 3]
        [--threads 2] [--dtype float32|bfloat16]

All four decode greedily to exactly --max-new-tokens tokens; each row says
how many of its outputs equal layerskip's full depth. Speeds are tokens over
wall time, prompt included.
"""
import argparse
import statistics
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast

import layerskip

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "assets" / "layerskip-pycode-8l"))
    ap.add_argument("--prompt", help="one prompt instead of --prompts")
    ap.add_argument("--prompts", default=str(ROOT / "tools" / "prompts" / "code.txt"))
    ap.add_argument("--exit-layer", type=int, default=5)
    ap.add_argument("--draft-len", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    # One prompt per line, with \n escapes (as `layerskip bench --prompt-file`).
    prompts = [a.prompt] if a.prompt else [
        ln.replace("\\n", "\n") for ln in Path(a.prompts).read_text().splitlines() if ln.strip()]

    try:
        tok = AutoTokenizer.from_pretrained(a.model)
    except (OSError, ValueError):
        tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(a.model) / "tokenizer.json"))
    hf = LlamaForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype)).eval()
    hf.generation_config.eos_token_id = None  # both sides stop at the budget only
    hf.generation_config.num_assistant_tokens = a.draft_len
    hf.generation_config.num_assistant_tokens_schedule = "constant"
    ours = layerskip.Model.load(a.model, threads=a.threads)

    def run_hf(ids, early_exit):
        x = torch.tensor([ids])
        kw = dict(max_new_tokens=a.max_new_tokens, do_sample=False)
        if early_exit:
            kw["assistant_early_exit"] = a.exit_layer
        t = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(x, attention_mask=torch.ones_like(x), **kw)
        return out[0, len(ids):].tolist(), time.perf_counter() - t

    def run_ours(ids, speculative):
        kw = dict(mode="self-speculative", exit_layer=a.exit_layer, draft_len=a.draft_len) if speculative else {}
        t = time.perf_counter()
        out = ours.session().generate(ids, max_new_tokens=a.max_new_tokens, ignore_eos=True, **kw)
        return out.tokens, time.perf_counter() - t

    runners = {
        "transformers full": lambda ids: run_hf(ids, False),
        f"transformers assistant_early_exit={a.exit_layer}": lambda ids: run_hf(ids, True),
        "layerskip full": lambda ids: run_ours(ids, False),
        f"layerskip self-speculative E={a.exit_layer} d={a.draft_len}": lambda ids: run_ours(ids, True),
    }
    encoded = [ours.tokenize(p) for p in prompts]
    for ids in encoded[:1]:  # warm-up
        for r in runners.values():
            r(ids)
    speeds = {name: [] for name in runners}
    outputs = {name: [] for name in runners}
    for _ in range(a.repeat):
        for ids in encoded:
            for name, r in runners.items():  # alternating, prompt by prompt
                toks, sec = r(ids)
                speeds[name].append(len(toks) / sec)
                outputs[name].append(toks)
    base = outputs["layerskip full"]
    print(f"{Path(a.model).name}: {len(encoded)} prompts x {a.repeat}, {a.max_new_tokens} tokens, "
          f"{a.threads} threads, transformers in {a.dtype}, torch {torch.__version__}")
    print(f"{'':48} {'median tok/s':>12}  {'same tokens as layerskip full':>30}")
    for name in runners:
        same = sum(o == b for o, b in zip(outputs[name], base))
        print(f"{name:48} {statistics.median(speeds[name]):12.1f}  {same:>14}/{len(base)}")
    hf_ee = speeds[f"transformers assistant_early_exit={a.exit_layer}"]
    ls_ss = speeds[f"layerskip self-speculative E={a.exit_layer} d={a.draft_len}"]
    ratios = [o / t for o, t in zip(ls_ss, hf_ee)]
    print(f"layerskip self-speculative / transformers early exit, paired median: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
