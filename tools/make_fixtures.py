#!/usr/bin/env python3
"""Build the small random-weight Llama checkpoints in tests/fixtures/ and the
reference outputs transformers computes for them (float32).

Run by a developer, never by CI (it needs torch + transformers):
    python tools/make_fixtures.py                  # writes tests/fixtures/*
    python tools/make_fixtures.py --only-bundled   # just the bundled model's reference

Each fixture directory holds a Hugging Face checkpoint (config.json written in
the hub's classic format, safetensors, tokenizer.json) and:
  reference.safetensors  logits_full_p{i} / logits_exit{E}_p{i}: f32 [positions, vocab]
  reference.json         prompts, greedy continuations (full and every exit),
                         tokenizer encode/decode cases, minimum argmax margins
"""
import json
import zlib
import shutil
import sysconfig
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

FIXTURES = [
    # Multi-head attention, f32, untied head, default RoPE.
    dict(name="mha-f32", dtype=torch.float32, hidden=64, inter=128, layers=4, heads=4, kv_heads=4,
         vocab=320, tie=False, rope_theta=10000.0, rope_scaling=None, shards=1, head_dim=None,
         eos=2, bos_template=True, init=0.25),
    # Grouped-query attention, tied embeddings, llama3 RoPE scaling, bf16, 2 shards + index.
    dict(name="gqa-bf16-tied-llama3-sharded", dtype=torch.bfloat16, hidden=64, inter=160, layers=5,
         heads=8, kv_heads=2, vocab=384, tie=True, rope_theta=500000.0,
         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
         shards=2, head_dim=None, eos=[2, 3], bos_template=True, init=0.25),
    # Multi-query attention, f16, linear RoPE scaling, explicit head_dim != hidden/heads.
    dict(name="mqa-f16-linear", dtype=torch.float16, hidden=48, inter=96, layers=3, heads=4,
         kv_heads=1, vocab=288, tie=False, rope_theta=10000.0,
         rope_scaling={"type": "linear", "factor": 2.0}, shards=1, head_dim=16, eos=2,
         bos_template=False, init=0.25),
]

TOKENIZER_CASES = [
    "def fibonacci(n):\n    return n",
    "Hello, world!",
    "  leading spaces and\ttabs\n\n",
    "unicode: héllo wörld — ✓ 日本語 🙂",
    "",
    "x = [i ** 2 for i in range(10)]",
]


def corpus():
    std = Path(sysconfig.get_paths()["stdlib"])
    texts = [(std / f).read_text(encoding="utf-8") for f in ("textwrap.py", "this.py", "bisect.py")]
    return texts + TOKENIZER_CASES * 3


def make_tokenizer(vocab, bos_template):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "</s>", "<eot>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    if bos_template:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    assert tok.get_vocab_size() <= vocab, tok.get_vocab_size()
    return tok


def config_json(f):
    c = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": f["hidden"], "intermediate_size": f["inter"],
        "num_hidden_layers": f["layers"], "num_attention_heads": f["heads"],
        "num_key_value_heads": f["kv_heads"], "hidden_act": "silu",
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
        "rope_theta": f["rope_theta"], "rope_scaling": f["rope_scaling"],
        "vocab_size": f["vocab"], "tie_word_embeddings": f["tie"],
        "attention_bias": False, "mlp_bias": False,
        "bos_token_id": 0, "eos_token_id": f["eos"],
        "torch_dtype": str(f["dtype"]).replace("torch.", ""),
    }
    if f["head_dim"]:
        c["head_dim"] = f["head_dim"]
    return c


def random_weights(f, cfg):
    g = torch.Generator().manual_seed(zlib.crc32(f["name"].encode()))
    h, hd = f["hidden"], f["head_dim"] or f["hidden"] // f["heads"]
    s = f["init"]

    def w(*shape, scale=1.0):
        fan_in = shape[-1]
        return torch.randn(*shape, generator=g) * (s * scale / fan_in ** 0.5) * 4

    t = {"model.embed_tokens.weight": torch.randn(f["vocab"], h, generator=g),
         "model.norm.weight": 1 + 0.1 * torch.randn(h, generator=g)}
    if not f["tie"]:
        t["lm_head.weight"] = w(f["vocab"], h, scale=4.0)
    for i in range(f["layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
        t[p + "post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
        t[p + "self_attn.q_proj.weight"] = w(f["heads"] * hd, h)
        t[p + "self_attn.k_proj.weight"] = w(f["kv_heads"] * hd, h)
        t[p + "self_attn.v_proj.weight"] = w(f["kv_heads"] * hd, h)
        t[p + "self_attn.o_proj.weight"] = w(h, f["heads"] * hd, scale=0.5)
        t[p + "mlp.gate_proj.weight"] = w(f["inter"], h)
        t[p + "mlp.up_proj.weight"] = w(f["inter"], h)
        t[p + "mlp.down_proj.weight"] = w(h, f["inter"], scale=0.5)
    return {k: v.to(f["dtype"]).contiguous() for k, v in t.items()}


def save_weights(d: Path, tensors, shards):
    if shards == 1:
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
        return
    names = sorted(tensors)
    per = (len(names) + shards - 1) // shards
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s * per:(s + 1) * per]}
        save_file(part, str(d / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")


@torch.no_grad()
def exit_logits(model, ids):
    """Logits of the full model and of every exit E (hidden state leaving layer
    E-1 through the model's own final norm + LM head)."""
    out = model(torch.tensor([ids]), output_hidden_states=True)
    hs = out.hidden_states  # [embeddings, layer0 out, ..., final (normed)]
    L = model.config.num_hidden_layers
    res = {L: out.logits[0]}
    for e in range(1, L):
        res[e] = model.lm_head(model.model.norm(hs[e]))[0]
    return res


@torch.no_grad()
def greedy(model, ids, exit_layer, n):
    ids = list(ids)
    new, margins = [], []
    for _ in range(n):
        logits = exit_logits(model, ids)[exit_layer][-1]
        top = torch.topk(logits, 2)
        margins.append((top.values[0] - top.values[1]).item())
        t = int(torch.argmax(logits))
        new.append(t)
        ids.append(t)
    return new, min(margins)


def build(f):
    d = ROOT / f["name"]
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    tok = make_tokenizer(f["vocab"], f["bos_template"])
    tok.save(str(d / "tokenizer.json"))
    cfg = config_json(f)
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": f["eos"]}) + "\n")
    save_weights(d, random_weights(f, cfg), f["shards"])

    model = LlamaForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(7)
    prompts = [
        [0],
        torch.randint(4, f["vocab"], (11,), generator=g).tolist(),
        torch.randint(4, f["vocab"], (40,), generator=g).tolist(),
    ]
    write_reference(model, tok, prompts, d, n_logit_prompts=2, exits=range(1, f["layers"] + 1))
    print(f"{f['name']}: written")


def write_reference(model, tok, prompts, out: Path, n_logit_prompts, exits):
    """reference.safetensors (logits of the first prompts at `exits`) and
    reference.json (prompts, greedy continuations at every exit, tokenizer cases)."""
    L = model.config.num_hidden_layers
    ref_tensors, ref = {}, {"prompts": prompts, "greedy": [], "tokenizer": [], "min_margin": {}}
    for i, p in enumerate(prompts[:n_logit_prompts]):
        for e, lg in exit_logits(model, p).items():
            if e in exits:
                key = "full" if e == L else f"exit{e}"
                ref_tensors[f"logits_{key}_p{i}"] = lg.float().contiguous()
    for i, p in enumerate(prompts):
        for e in range(1, L + 1):
            toks, margin = greedy(model, p, e, 24)
            ref["greedy"].append({"prompt": i, "exit": e, "tokens": toks})
            ref["min_margin"][f"p{i}_e{e}"] = margin
    for text in TOKENIZER_CASES:
        ids = tok.encode(text).ids
        ref["tokenizer"].append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)})
    save_file(ref_tensors, str(out / "reference.safetensors"))
    (out / "reference.json").write_text(json.dumps(ref) + "\n")
    print(f"{out}: min greedy margin {min(ref['min_margin'].values()):.4f}")


def reference_for_checkpoint(model_dir: Path, out: Path, exits):
    """Reference outputs for an existing checkpoint (the bundled model), kept
    small: logits of the first prompt at `exits` only; the checkpoint itself
    is not copied."""
    out.mkdir(parents=True, exist_ok=True)
    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    prompts = [tok.encode("def fibonacci(n):").ids, tok.encode("import os\nclass Config:\n    def __init__(self").ids]
    write_reference(model, tok, prompts, out, n_logit_prompts=1, exits=exits)


# The bundled model (tests/bundled_model.rs checks these exits against transformers).
BUNDLED = ROOT.parent.parent / "assets" / "layerskip-pycode-8l"


def bundled_exits(model_dir: Path):
    layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    return [layers * q // 4 for q in (1, 2, 3, 4)]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--only-bundled", action="store_true")
    args = ap.parse_args()
    if not args.only_bundled:
        for f in FIXTURES:
            build(f)
    reference_for_checkpoint(BUNDLED, ROOT / "bundled-reference", exits=bundled_exits(BUNDLED))
