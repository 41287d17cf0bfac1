#!/usr/bin/env python3
"""Run llama.cpp's convert_hf_to_gguf.py on one of our checkpoints.

    python convert_gguf.py LLAMA_CPP_DIR MODEL_DIR [convert_hf_to_gguf args...]

Our checkpoints use small byte-level BPE tokenizers (test fixtures or the
trained pycode tokenizer) whose pre-tokenizer hash is not in llama.cpp's list,
so the stock script stops with "BPE pre-tokenizer was not recognized". This
wrapper falls back to the plain "gpt-2" pre-tokenizer in that case (the
benchmark feeds token ids, so tokenization never matters). Vocabularies smaller
than config.json's vocab_size are padded by the converter itself ([PADi]).
Without a tokenizer_config.json, transformers' AutoTokenizer picks
LlamaTokenizerFast, which appends an `<unk>` token past the vocab (id 4096 for
a 4096-token vocab, which trips the converter's assert); the wrapper loads
tokenizer.json as a plain PreTrainedTokenizerFast instead.
"""
import runpy
import sys
from pathlib import Path


def main():
    lcpp = Path(sys.argv[1]).resolve()
    model = sys.argv[2]
    rest = sys.argv[3:]
    sys.path.insert(0, str(lcpp))
    sys.path.insert(1, str(lcpp / "gguf-py"))

    from conversion import base  # noqa: E402  (llama.cpp's conversion package)

    cls = base.TextModel
    orig = cls.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):
        try:
            return orig(self, tokenizer)
        except NotImplementedError:
            base.logger.warning("bench_peers: unknown pre-tokenizer, using 'gpt-2'")
            return "gpt-2"

    cls.get_vocab_base_pre = get_vocab_base_pre

    import transformers

    orig_from_pretrained = transformers.AutoTokenizer.from_pretrained

    def from_pretrained(path, *a, **kw):
        p = Path(path)
        if (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
            return transformers.PreTrainedTokenizerFast(tokenizer_file=str(p / "tokenizer.json"))
        return orig_from_pretrained(path, *a, **kw)

    transformers.AutoTokenizer.from_pretrained = from_pretrained
    sys.argv = [str(lcpp / "convert_hf_to_gguf.py"), model, *rest]
    runpy.run_path(str(lcpp / "convert_hf_to_gguf.py"), run_name="__main__")


if __name__ == "__main__":
    main()
