#!/usr/bin/env python3
"""Reference outputs for the published LayerSkip checkpoints' shapes
(tests/fixtures/published-shapes.json), computed by transformers (float32).

Run by a developer, never by CI (it needs torch + transformers):
    python tools/make_shape_fixtures.py

Each checkpoint's config.json keeps every field that shapes the computation
(vocabulary, head_dim, GQA ratio, RoPE theta and scaling, tied or untied
embeddings, max positions, norm epsilon, special ids) at reduced depth and
width: 2 layers, hidden 64 (head_dim stays explicit), the heads cut in the
same ratio, intermediate 128. The weights are not stored: both this script
and tests/published_shapes.rs make them from one formula that gives the
same float32 bits in numpy and in Rust (splitmix64 of the element's index,
scaled by powers of two), rounded to bf16.
"""
import json
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "published-shapes.json"

# name: (hub config fields kept as published, reduced heads / kv heads)
PUBLISHED = {
    "llama2-7B": (dict(vocab_size=32000, head_dim=128, max_position_embeddings=4096, rope_theta=10000.0,
                       rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False), 2, 2),
    "llama2-13B": (dict(vocab_size=32000, head_dim=128, max_position_embeddings=4096, rope_theta=10000.0,
                        rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False), 2, 2),
    "llama2-70B": (dict(vocab_size=32000, head_dim=128, max_position_embeddings=4096, rope_theta=10000.0,
                        rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False), 8, 1),
    "codellama-7B": (dict(vocab_size=32016, head_dim=128, max_position_embeddings=16384, rope_theta=1000000.0,
                          rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False), 2, 2),
    "codellama-34B": (dict(vocab_size=32000, head_dim=128, max_position_embeddings=16384, rope_theta=1000000.0,
                           rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False), 8, 1),
    "llama3-8B": (dict(vocab_size=128256, head_dim=128, max_position_embeddings=8192, rope_theta=500000.0,
                       rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001,
                       tie_word_embeddings=False), 4, 1),
    "llama3.2-1B": (dict(vocab_size=128256, head_dim=64, max_position_embeddings=131072, rope_theta=500000.0,
                         rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=True,
                         rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}), 4, 1),
}
LAYERS, HIDDEN, INTER = 2, 64, 128
M64 = (1 << 64) - 1


def splitmix64(x):
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(M64)
    z = x
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def tensor_values(seed, index, n, scale, offset):
    """float32 values: ((splitmix64(seed << 48 | index << 40 | i) >> 40) / 2^24 - 0.5) * scale + offset."""
    i = np.arange(n, dtype=np.uint64)
    key = (np.uint64(seed) << np.uint64(48)) | (np.uint64(index) << np.uint64(40)) | i
    with np.errstate(over="ignore"):
        r = splitmix64(key)
    u = (r >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)
    return (u - np.float32(0.5)) * np.float32(scale) + np.float32(offset)


def tensors(cfg):
    """(name, shape, scale, offset) of every weight, in the order of their index."""
    h, hd, v = cfg["hidden_size"], cfg["head_dim"], cfg["vocab_size"]
    q, kv, inter = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd, cfg["intermediate_size"]
    t = [("model.embed_tokens.weight", [v, h], 2.0, 0.0), ("model.norm.weight", [h], 0.25, 1.0)]
    if not cfg["tie_word_embeddings"]:
        t.append(("lm_head.weight", [v, h], 0.5, 0.0))
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        t += [(p + "input_layernorm.weight", [h], 0.25, 1.0),
              (p + "post_attention_layernorm.weight", [h], 0.25, 1.0),
              (p + "self_attn.q_proj.weight", [q, h], 0.5, 0.0),
              (p + "self_attn.k_proj.weight", [kv, h], 0.5, 0.0),
              (p + "self_attn.v_proj.weight", [kv, h], 0.5, 0.0),
              (p + "self_attn.o_proj.weight", [h, q], 0.125, 0.0),
              (p + "mlp.gate_proj.weight", [inter, h], 0.5, 0.0),
              (p + "mlp.up_proj.weight", [inter, h], 0.5, 0.0),
              (p + "mlp.down_proj.weight", [h, inter], 0.25, 0.0)]
    return t


@torch.no_grad()
def exit_logits(model, ids):
    out = model(torch.tensor([ids]), output_hidden_states=True)
    hs = out.hidden_states
    L = model.config.num_hidden_layers
    res = {L: out.logits[0]}
    for e in range(1, L):
        res[e] = model.lm_head(model.model.norm(hs[e]))[0]
    return res


def main():
    entries = []
    for seed, (name, (fields, heads, kv_heads)) in enumerate(PUBLISHED.items(), start=1):
        cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
               "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": LAYERS,
               "num_attention_heads": heads, "num_key_value_heads": kv_heads,
               "attention_bias": False, "mlp_bias": False, "torch_dtype": "bfloat16", **fields}
        model = LlamaForCausalLM(LlamaConfig(**cfg)).float().eval()
        state = {}
        for index, (tname, shape, scale, offset) in enumerate(tensors(cfg)):
            vals = tensor_values(seed, index, int(np.prod(shape)), scale, offset).reshape(shape)
            state[tname] = torch.from_numpy(vals).to(torch.bfloat16).float()
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all("lm_head" in m or "rotary" in m for m in missing), (missing, unexpected)
        if cfg["tie_word_embeddings"]:
            model.tie_weights()
        v = cfg["vocab_size"]
        g = torch.Generator().manual_seed(seed)
        prompt = [cfg["bos_token_id"]] + torch.randint(3, v, (9,), generator=g).tolist() + [v - 1]
        exits = {}
        for e, lg in exit_logits(model, prompt).items():
            rows = []
            for pos in range(len(prompt) - 3, len(prompt)):
                row = lg[pos]
                top = torch.topk(row, 8)
                rows.append({"pos": pos, "ids": top.indices.tolist(), "logits": top.values.tolist(),
                             "logsumexp": torch.logsumexp(row, 0).item()})
            exits[str(e)] = rows
        ids, greedy, margin = list(prompt), [], float("inf")
        for _ in range(8):
            row = exit_logits(model, ids)[LAYERS][-1]
            top = torch.topk(row, 2)
            margin = min(margin, (top.values[0] - top.values[1]).item())
            t = int(top.indices[0])
            greedy.append(t)
            ids.append(t)
        entries.append({"name": name, "seed": seed, "config": cfg,
                        "tensors": [{"name": n, "shape": s, "scale": sc, "offset": o}
                                    for n, s, sc, o in tensors(cfg)],
                        "prompt": prompt, "exits": exits, "greedy": greedy, "greedy_min_margin": margin})
        print(f"{name}: vocab {v}, greedy margin {margin:.4f}")
    OUT.write_text(json.dumps({"layers": LAYERS, "checkpoints": entries}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
