#!/usr/bin/env python3
"""Per-exit-layer quality of a checkpoint on the held-out split of the training
corpus: top-1 accuracy of next-token prediction at every exit E (the hidden
state leaving layer E-1 through the model's own final norm + LM head), and
agreement of that argmax with the full model's argmax. Prints a markdown
table and writes JSON next to the checkpoint.

    python tools/train/eval_exits.py --model assets/layerskip-pycode-8l
"""
import argparse
import json
import sys
import sysconfig
from pathlib import Path

import torch
from transformers import LlamaForCausalLM
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import corpus_files, encode_files  # noqa: E402  (same split as training)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="assets/layerskip-pycode-8l")
    ap.add_argument("--corpus", default=sysconfig.get_paths()["stdlib"])
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--windows", type=int, default=96)
    a = ap.parse_args()
    torch.set_num_threads(2)
    tok = Tokenizer.from_file(str(Path(a.model) / "tokenizer.json"))
    _, held_files = corpus_files(Path(a.corpus))
    held = encode_files(tok, held_files)
    m = LlamaForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    L = m.config.num_hidden_layers
    n = min(a.windows, (len(held) - 1) // a.seq)
    correct = torch.zeros(L + 1)
    agree = torch.zeros(L + 1)
    nll = torch.zeros(L + 1)
    total = 0
    for w in range(n):
        chunk = held[w * a.seq : (w + 1) * a.seq + 1]
        x, y = chunk[:-1].unsqueeze(0), chunk[1:]
        out = m(x, output_hidden_states=True)
        full = out.logits[0]
        full_arg = full.argmax(-1)
        for e in range(1, L + 1):
            lg = full if e == L else m.lm_head(m.model.norm(out.hidden_states[e]))[0]
            arg = lg.argmax(-1)
            correct[e] += (arg == y).sum()
            agree[e] += (arg == full_arg).sum()
            nll[e] += torch.nn.functional.cross_entropy(lg, y, reduction="sum")
        total += len(y)
    rows = []
    print(f"held-out: {len(held_files)} files, {len(held)} tokens; evaluated {total} positions\n")
    print("| exit E | layers used | top-1 accuracy | agreement with full model | loss |")
    print("|---|---|---|---|---|")
    for e in range(1, L + 1):
        r = {"exit": e, "top1": (correct[e] / total).item(), "agreement": (agree[e] / total).item(),
             "loss": (nll[e] / total).item()}
        rows.append(r)
        print(f"| {e}{' (full)' if e == L else ''} | {e}/{L} | {100 * r['top1']:.1f}% | {100 * r['agreement']:.1f}% | {r['loss']:.3f} |")
    (Path(a.model) / "eval_exits.json").write_text(json.dumps({"positions": total, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
