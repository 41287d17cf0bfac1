#!/usr/bin/env python3
"""Write a random-weight, Llama-shaped checkpoint for timing (not committed).

    python tools/make_random_model.py --out /tmp/rand100m            # ~100M params, bf16
    python tools/make_random_model.py --out /tmp/rand100m-ceiling --zero-deep-from 4
    python tools/make_random_model.py --out /tmp/rand100m-hopeless --branch-scale 16

--zero-deep-from E zeroes o_proj and down_proj of layers E..L, so those layers
add nothing to the residual stream: early exit at E equals the full model and
self-speculation accepts every draft (the ceiling of its speedup).
Needs only numpy (bf16 is written by hand) and the tokenizer of a fixture.
"""
import argparse
import json
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def bf16_bytes(a: np.ndarray) -> bytes:
    """Round-to-nearest-even f32 -> bf16."""
    u = a.astype(np.float32).view(np.uint32)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return u.tobytes()


def write_safetensors(path: Path, tensors):
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        b = bf16_bytes(arr)
        header[name] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--zero-deep-from", type=int, default=None)
    ap.add_argument("--branch-scale", type=float, default=0.5,
                    help="scale of o_proj/down_proj; large values make every layer change the "
                         "prediction (early exits then almost never agree with the full model)")
    ap.add_argument("--tokenizer", default=str(ROOT / "tests/fixtures/mha-f32/tokenizer.json"))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    h, hd = a.hidden, a.hidden // a.heads

    def w(rows, cols, scale=1.0):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * (scale / np.sqrt(cols))).astype(np.float32)

    t = {"model.embed_tokens.weight": rng.standard_normal((a.vocab, h), dtype=np.float32),
         "model.norm.weight": np.ones(h, np.float32)}
    for i in range(a.layers):
        p = f"model.layers.{i}."
        zero = a.zero_deep_from is not None and i >= a.zero_deep_from
        t[p + "input_layernorm.weight"] = np.ones(h, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(h, np.float32)
        t[p + "self_attn.q_proj.weight"] = w(a.heads * hd, h)
        t[p + "self_attn.k_proj.weight"] = w(a.kv_heads * hd, h)
        t[p + "self_attn.v_proj.weight"] = w(a.kv_heads * hd, h)
        t[p + "self_attn.o_proj.weight"] = w(h, a.heads * hd, a.branch_scale) * (0 if zero else 1)
        t[p + "mlp.gate_proj.weight"] = w(a.intermediate, h)
        t[p + "mlp.up_proj.weight"] = w(a.intermediate, h)
        t[p + "mlp.down_proj.weight"] = w(h, a.intermediate, a.branch_scale) * (0 if zero else 1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(out / "model.safetensors", t)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
           "intermediate_size": a.intermediate, "num_hidden_layers": a.layers,
           "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads, "hidden_act": "silu",
           "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "vocab_size": a.vocab, "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 1,
           "torch_dtype": "bfloat16"}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    shutil.copy(a.tokenizer, out / "tokenizer.json")
    n = sum(v.size for v in t.values())
    print(f"{out}: {n / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main()
