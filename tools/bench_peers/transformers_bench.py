#!/usr/bin/env python3
"""transformers peer: full-depth greedy decode tokens/s of LlamaForCausalLM.

    /root/torchvenv/bin/python tools/bench_peers/transformers_bench.py MODEL_DIR [N_TOKENS]
        [--dtypes bf16,f32,int8] [--threads 2] [--prompt-ids 1,2,3,4] [--prefill P [--repeat R]]

For each dtype: loads the model (not timed), runs one short warm-up generate,
then a greedy `generate` of N+1 new tokens from the prompt ids with
min_new_tokens so EOS cannot stop it. A streamer timestamps every token; the
decode rate is N / (time of token N+1 - time of token 1), i.e. N single-token
decode steps with the KV cache, prefill excluded. Prints one line per dtype:
`transformers <dtype> <tok/s>`.

`--prefill N` times prompts of N tokens instead (one forward pass with the
cache, after one warm-up pass; the median of `--repeat` passes): prints
`transformers <dtype> prefill <tok/s>`.

dtype `int8` is torch's dynamic quantization of every linear layer
(`torch.ao.quantization.quantize_dynamic`: int8 weights per output channel,
inputs quantized per pass) over the f32 model, torch's own int8 CPU path.
"""
import argparse
import statistics
import sys
import time

import torch
import transformers
from transformers import LlamaForCausalLM


class Clock:
    """A minimal streamer: `put` gets the prompt first, then each new token."""

    def __init__(self):
        self.times = []
        self.seen_prompt = False

    def put(self, value):
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.times.append(time.perf_counter())

    def end(self):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("n", nargs="?", type=int, default=128)
    ap.add_argument("--dtypes", default="bf16,f32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-ids", default="1,2,3,4")
    ap.add_argument("--prefill", type=int, default=0,
                    help="time prompts of this many tokens instead of decoding")
    ap.add_argument("--repeat", type=int, default=3, help="timed prefill passes")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}", file=sys.stderr)
    ids = torch.tensor([[int(t) for t in args.prompt_ids.split(",")]], dtype=torch.long)
    dtypes = {"bf16": torch.bfloat16, "f32": torch.float32, "f16": torch.float16,
              "int8": torch.float32}
    n = args.n

    for name in args.dtypes.split(","):
        model = LlamaForCausalLM.from_pretrained(args.model, dtype=dtypes[name])
        model.eval()
        if name == "int8":
            from torch.ao.quantization import quantize_dynamic
            model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        if args.prefill:
            print(f"transformers {name} prefill {prefill_rate(model, args):.2f}", flush=True)
            del model
            continue
        gen = dict(do_sample=False, num_beams=1, use_cache=True,
                   pad_token_id=model.config.eos_token_id)
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=4, min_new_tokens=4, **gen)  # warm-up
            clock = Clock()
            out = model.generate(ids, max_new_tokens=n + 1, min_new_tokens=n + 1,
                                 streamer=clock, **gen)
        got = out.shape[1] - ids.shape[1]
        assert got == n + 1 and len(clock.times) == n + 1, (got, len(clock.times))
        secs = clock.times[-1] - clock.times[0]
        print(f"transformers: first new tokens {out[0, ids.shape[1]:ids.shape[1] + 8].tolist()}",
              file=sys.stderr)
        print(f"transformers {name} {n / secs:.2f}", flush=True)
        del model


def prefill_rate(model, args):
    """Tokens/s of one forward pass over `args.prefill` token ids (a fresh
    cache each time), the median of `args.repeat` passes after a warm-up."""
    ids = torch.arange(2, 2 + args.prefill, dtype=torch.long).remainder(
        model.config.vocab_size).unsqueeze(0)
    times = []
    with torch.inference_mode():
        for i in range(args.repeat + 1):
            t = time.perf_counter()
            model(ids, use_cache=True, logits_to_keep=1)
            if i:
                times.append(time.perf_counter() - t)
    return args.prefill / statistics.median(times)


if __name__ == "__main__":
    main()
