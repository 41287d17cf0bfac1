#!/usr/bin/env python3
"""Train the bundled LayerSkip model from scratch on CPU.

Recipe (../../shared/LAYERSKIP.md, "Training recipe"; Elhoushi et al. 2024):
  * layer dropout rising with depth: layer l of L is skipped per sample with
    probability p_max * (2^(l/(L-1)) - 1);
  * early-exit loss: cross-entropy of every curriculum-enabled layer through the
    SHARED final norm + LM head, weighted by a scale that grows with depth;
  * rotational curriculum: every R-th layer is enabled, rotating each step; the
    last layer is always enabled.

Corpus: the CPython standard library's own .py sources found on this machine
(PSF License 2.0). 5% of the files, chosen by a hash of their path, are held out.
`--corpus DIR --pattern '*.txt'` trains on other files instead (for a text
model: the prose of the Rust documentation, extracted by html_text.py).

The model is a plain Llama (same parameter names and maths as transformers'
LlamaForCausalLM); the saved directory loads there unchanged, which `--check`
verifies at the end.
"""
import argparse
import hashlib
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, EOS = "<s>", "</s>"


# ----------------------------------------------------------------------------- corpus
def corpus_files(root: Path, pattern: str = "*.py"):
    files = sorted(
        p for p in root.rglob(pattern) if "site-packages" not in p.parts and p.is_file()
    )
    train, held = [], []
    for p in files:
        rel = str(p.relative_to(root))
        bucket = int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 100
        (held if bucket < 5 else train).append(p)
    return train, held


def read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return ""


def train_tokenizer(files, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((read_text(p) for p in files), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)]
    )
    return tok


def encode_files(tok: Tokenizer, files) -> torch.Tensor:
    ids = []
    for p in files:
        text = read_text(p)
        if text:
            ids.extend(tok.encode(text).ids)  # BOS added by the post-processor
            ids.append(1)  # EOS
    return torch.tensor(ids, dtype=torch.long)


# ----------------------------------------------------------------------------- model
class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.nh, self.nkv, self.hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        h = c["hidden_size"]
        self.q_proj = nn.Linear(h, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(h, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(h, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, h, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, i = c["hidden_size"], c["intermediate_size"]
        self.gate_proj = nn.Linear(h, i, bias=False)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        hd = c["head_dim"]
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
        t = torch.arange(c["max_position_embeddings"]).float()
        freqs = torch.outer(t, inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        std = 0.02
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
        # GPT-2 style: shrink residual-branch outputs by depth.
        for layer in self.layers:
            nn.init.normal_(layer.self_attn.o_proj.weight, std=std / math.sqrt(2 * len(self.layers)))
            nn.init.normal_(layer.mlp.down_proj.weight, std=std / math.sqrt(2 * len(self.layers)))

    def head(self, h):
        return F.linear(self.norm(h), self.embed_tokens.weight)  # tied embeddings

    def forward(self, ids, keep_prob=None):
        """Returns the hidden state after every layer. keep_prob: per-layer
        probability of running the layer for each sample (layer dropout)."""
        t = ids.shape[1]
        cos, sin = self.cos[:t], self.sin[:t]
        x = self.embed_tokens(ids)
        outs = []
        for l, layer in enumerate(self.layers):
            y = layer(x, cos, sin)
            if keep_prob is not None and keep_prob[l] < 1.0:
                keep = (torch.rand(ids.shape[0], 1, 1) < keep_prob[l]).to(y.dtype)
                y = keep * y + (1 - keep) * x
            x = y
            outs.append(x)
        return outs


# ----------------------------------------------------------------------------- recipe
def layer_drop_probs(L, p_max):
    return [p_max * (2 ** (l / (L - 1)) - 1) for l in range(L)]


def exit_weights(L, e_scale):
    """Weight of layer l (0-based) grows with depth: e_scale * sum_{i<=l+1} i for
    the early layers; the last layer gets the full triangular weight."""
    w = [e_scale * (l + 1) * (l + 2) / 2 for l in range(L - 1)]
    w.append(L * (L + 1) / 2)
    return w


def enabled_layers(L, step, rot):
    """Rotational curriculum: every rot-th layer, rotating each step; last always."""
    return sorted({l for l in range(L - 1) if (l + step) % rot == 0} | {L - 1})


def exit_losses(model, outs, targets, layers):
    return {l: F.cross_entropy(model.head(outs[l]).flatten(0, 1), targets.flatten()) for l in layers}


@torch.no_grad()
def evaluate(model, data, seq, batches=8):
    model.eval()
    L = len(model.layers)
    n = min(batches, (len(data) - 1) // (seq * 8))
    tot = torch.zeros(L)
    for b in range(n):
        chunk = data[b * seq * 8 : (b + 1) * seq * 8 + 1]
        x, y = chunk[:-1].view(8, seq), chunk[1:].view(8, seq)
        outs = model(x)
        for l in range(L):
            tot[l] += F.cross_entropy(model.head(outs[l]).flatten(0, 1), y.flatten()).item()
    model.train()
    return (tot / max(n, 1)).tolist()


# ----------------------------------------------------------------------------- saving
def save_checkpoint(model, tok, cfg, out: Path, meta):
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, p in model.state_dict().items():
        hf = "model." + name
        tensors[hf] = p.detach().to(torch.bfloat16).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg["hidden_size"],
        "intermediate_size": cfg["intermediate_size"],
        "num_hidden_layers": cfg["num_hidden_layers"],
        "num_attention_heads": cfg["num_attention_heads"],
        "num_key_value_heads": cfg["num_key_value_heads"],
        "head_dim": cfg["head_dim"],
        "hidden_act": "silu",
        "max_position_embeddings": cfg["max_position_embeddings"],
        "rms_norm_eps": cfg["rms_norm_eps"],
        "rope_theta": cfg["rope_theta"],
        "rope_scaling": None,
        "vocab_size": cfg["vocab_size"],
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "bfloat16",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 0, "eos_token_id": 1}, indent=2) + "\n"
    )
    tok.save(str(out / "tokenizer.json"))
    (out / "training_log.json").write_text(json.dumps(meta, indent=2) + "\n")


def check_with_transformers(model, out: Path):
    """The saved checkpoint must load as LlamaForCausalLM and give our logits."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    ours = Llama(model.c)
    sd = {k[len("model."):]: v.float() for k, v in hf.state_dict().items() if k.startswith("model.")}
    ours.load_state_dict(sd)
    ids = torch.randint(0, model.c["vocab_size"], (1, 32))
    with torch.no_grad():
        a = hf(ids).logits
        b = ours.head(ours(ids)[-1])
    err = (a - b).abs().max().item()
    print(f"transformers parity: max |logit diff| = {err:.2e}")
    assert err < 1e-3, err


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="assets/layerskip-pycode-8l")
    ap.add_argument("--corpus", default=sysconfig.get_paths()["stdlib"])
    ap.add_argument("--pattern", default="*.py", help="which files of the corpus to train on")
    ap.add_argument("--minutes", type=float, default=75.0, help="wall-clock training budget")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--p-max", type=float, default=0.1)
    ap.add_argument("--e-scale", type=float, default=1.0)
    ap.add_argument("--rotation", type=int, default=2)
    ap.add_argument("--save-every-min", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    root = Path(args.corpus)
    train_files, held_files = corpus_files(root, args.pattern)
    print(f"corpus {root}: {len(train_files)} train files, {len(held_files)} held-out files", flush=True)
    tok = train_tokenizer(train_files, args.vocab)
    train = encode_files(tok, train_files)
    held = encode_files(tok, held_files)
    print(f"tokens: train {len(train)}, held-out {len(held)}", flush=True)

    cfg = dict(
        vocab_size=tok.get_vocab_size(), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads, rms_norm_eps=1e-5, rope_theta=10000.0,
        max_position_embeddings=512,
    )
    model = Llama(cfg)
    L = args.layers
    keep_prob = [1 - p for p in layer_drop_probs(L, args.p_max)]
    w = exit_weights(L, args.e_scale)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95),
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params/1e6:.2f}M, config {cfg}", flush=True)

    budget = args.minutes * 60
    start = time.time()
    warmup = 100
    step, last_save, log = 0, start, []
    g = torch.Generator().manual_seed(args.seed)
    while True:
        elapsed = time.time() - start
        # The schedule runs on wall-clock progress so the budget holds however
        # busy the machine is.
        progress = elapsed / budget
        if progress >= 1.0:
            break
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for grp in opt.param_groups:
            grp["lr"] = lr
        idx = torch.randint(0, len(train) - args.seq - 1, (args.batch,), generator=g)
        x = torch.stack([train[i : i + args.seq] for i in idx])
        y = torch.stack([train[i + 1 : i + args.seq + 1] for i in idx])
        outs = model(x, keep_prob)
        layers = enabled_layers(L, step, args.rotation)
        losses = exit_losses(model, outs, y, layers)
        wsum = sum(w[l] for l in layers)
        loss = sum(w[l] / wsum * losses[l] for l in layers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            print(f"step {step} {elapsed/60:.1f}min lr {lr:.2e} loss {loss.item():.3f} last {losses[L-1].item():.3f}", flush=True)
        if time.time() - last_save > args.save_every_min * 60:
            ev = evaluate(model, held, args.seq)
            log.append({"step": step, "minutes": elapsed / 60, "held_out_loss_per_layer": ev})
            print(f"eval step {step}: held-out loss per layer {[round(v, 3) for v in ev]}", flush=True)
            save_checkpoint(model, tok, cfg, Path(args.out), {"args": vars(args), "log": log})
            last_save = time.time()
        step += 1

    ev = evaluate(model, held, args.seq, batches=32)
    log.append({"step": step, "minutes": (time.time() - start) / 60, "held_out_loss_per_layer": ev, "final": True})
    print(f"final held-out loss per layer {[round(v, 3) for v in ev]}", flush=True)
    meta = {"args": vars(args), "params": n_params, "train_tokens": len(train), "held_tokens": len(held),
            "held_out_files": len(held_files), "train_files": len(train_files),
            "tokens_seen": step * args.batch * args.seq, "steps": step, "log": log}
    save_checkpoint(model, tok, cfg, Path(args.out), meta)
    check_with_transformers(model, Path(args.out))
    print("done", flush=True)


if __name__ == "__main__":
    sys.exit(main())
