"""The Python binding against the reference: every mode, errors, threads,
callbacks that raise, streaming and the low-level calls."""
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

import layerskip

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
NAMES = ["mha-f32", "gqa-bf16-tied-llama3-sharded", "mqa-f16-linear"]
BUNDLED = ROOT / "assets" / "layerskip-pycode-8l"


def reference(name):
    return json.loads((FIXTURES / name / "reference.json").read_text())


def transformers_greedy(name, prompt, exit_layer, n):
    """Greedy tokens at ``exit_layer`` from transformers itself, or None
    without torch (the committed fixtures hold the same, written by
    tools/make_fixtures.py with transformers)."""
    try:
        import torch
        from transformers import LlamaForCausalLM
    except ImportError:
        return None
    model = LlamaForCausalLM.from_pretrained(str(FIXTURES / name), dtype=torch.float32).eval()
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n):
            o = model(torch.tensor([ids]), output_hidden_states=True)
            if exit_layer == model.config.num_hidden_layers:
                row = o.logits[0, -1]
            else:
                row = model.lm_head(model.model.norm(o.hidden_states[exit_layer]))[0, -1]
            t = int(torch.argmax(row))
            out.append(t)
            ids.append(t)
    return out


@pytest.fixture(scope="module")
def bundled():
    return layerskip.Model.load(str(BUNDLED))


@pytest.mark.parametrize("name", NAMES)
def test_every_mode_gives_the_reference_greedy_tokens(name):
    ref = reference(name)
    model = layerskip.Model.load(str(FIXTURES / name))
    L = model.info.n_layers
    prompt = ref["prompts"][1]
    want = {g["exit"]: g["tokens"] for g in ref["greedy"] if g["prompt"] == 1}
    n = len(want[L])
    live = transformers_greedy(name, prompt, L, n)
    if live is not None:
        assert live == want[L], "the committed fixture matches transformers"

    def gen(**kw):
        return model.session().generate(prompt, max_new_tokens=n, ignore_eos=True, **kw).tokens

    assert gen(mode="full") == want[L]
    for e in range(1, L):
        assert gen(mode="early-exit", exit_layer=e) == want[e], f"early exit {e}"
        for d in (1, 3):
            assert gen(mode="self-speculative", exit_layer=e, draft_len=d) == want[L], f"E={e} d={d}"
    assert gen(mode="auto") == want[L]


def test_generate_result_and_text(bundled):
    out = bundled.session().generate("def fibonacci(n):", max_new_tokens=24)
    assert len(out.tokens) == 24 and out.stop_reason == "max_tokens"
    assert out.text == bundled.detokenize(out.tokens)
    assert out.prompt_tokens == len(bundled.tokenize("def fibonacci(n):"))
    assert out.decode_tokens_per_second > 0 and out.prompt_tokens_per_second > 0
    spec = bundled.session().generate("def fibonacci(n):", max_new_tokens=24, mode="self-speculative", exit_layer=5, draft_len=2)
    assert spec.tokens == out.tokens and spec.drafted > 0 and 0 <= spec.accepted <= spec.drafted
    assert layerskip.version() == layerskip.__version__


def test_a_draft_shortlist_keeps_greedy_output(bundled):
    want = bundled.session().generate("def fibonacci(n):", max_new_tokens=24).tokens
    for k in (64, "auto"):
        short = layerskip.Model.load(str(BUNDLED), draft_shortlist=k)
        out = short.session().generate("def fibonacci(n):", max_new_tokens=24, mode="self-speculative", exit_layer=5, draft_len=2)
        assert out.tokens == want and out.drafted > 0
    with pytest.raises(layerskip.LayerskipError):
        layerskip.Model.load(str(BUNDLED), draft_shortlist="most")


def test_streaming_yields_the_text_and_stops_early(bundled):
    full = bundled.session().generate("class Stack:", max_new_tokens=32, temperature=0.8, seed=3)
    pieces = list(bundled.session().generate("class Stack:", max_new_tokens=32, temperature=0.8, seed=3, stream=True))
    assert "".join(pieces) == full.text
    session = bundled.session()
    it = session.generate("class Stack:", max_new_tokens=400, ignore_eos=True, stream=True)
    next(it)
    it.close()  # stops the generation; the session is usable again
    assert session.stats()["shallow_len"] < 400
    session.rewind(0)
    assert session.generate("x", max_new_tokens=2).tokens


def test_errors_carry_the_library_code_and_message(bundled):
    with pytest.raises(layerskip.LayerskipError) as e:
        layerskip.Model.load("/no/such/model")
    assert e.value.code == 3 and "/no/such/model" in str(e.value)
    s = bundled.session()
    with pytest.raises(layerskip.LayerskipError) as e:
        s.step(-5)
    assert e.value.code == 2 and "token id -5 is out of range" in str(e.value)
    with pytest.raises(layerskip.LayerskipError, match="unknown mode"):
        s.generate("x", mode="sideways")
    with pytest.raises(layerskip.LayerskipError, match="exit layer 99"):
        s.generate("x", mode="early-exit", exit_layer=99)
    with pytest.raises(layerskip.LayerskipError, match="unknown quantize"):
        layerskip.Model.load(str(BUNDLED), quantize="int4")
    assert s.generate("x", max_new_tokens=3).tokens  # still usable


def test_a_callback_that_raises_stops_generation_and_propagates(bundled):
    calls = []

    def boom(token, text):
        calls.append(token)
        if len(calls) == 3:
            raise KeyError("from the callback")

    s = bundled.session()
    with pytest.raises(KeyError, match="from the callback"):
        s.generate("class Stack:", max_new_tokens=50, on_token=boom)
    assert len(calls) == 3
    stopped = s.generate("class Stack:", max_new_tokens=50, on_token=lambda t, x: False)
    assert stopped.stop_reason == "callback" and len(stopped.tokens) == 1


def test_sessions_decode_on_threads_in_parallel(bundled):
    prompts = ["def add(a, b):", "class Node:", "import os\n", "for i in range(3):"]
    want = [bundled.session().generate(p, max_new_tokens=40, mode="auto").tokens for p in prompts]
    got = [None] * len(prompts)

    def run(i):
        got[i] = bundled.session().generate(prompts[i], max_new_tokens=40, mode="auto").tokens

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want
    # One session, two threads: the second call is refused, never raced.
    s = bundled.session()
    errors = []
    started = threading.Event()

    def busy():
        started.wait()
        try:
            s.generate("x", max_new_tokens=2)
        except layerskip.LayerskipError as e:
            errors.append(e.code)

    t = threading.Thread(target=busy)
    t.start()

    def slow(token, text):
        started.set()
        t.join(timeout=10)

    s.generate("class Stack:", max_new_tokens=2, on_token=slow)
    t.join()
    assert errors == [10]


def test_low_level_calls(bundled):
    prompt = bundled.tokenize("def fibonacci(n):")
    full = bundled.session().generate(prompt, max_new_tokens=8, ignore_eos=True).tokens
    s = bundled.session()
    nxt = s.prefill(prompt)
    assert nxt == full[0]
    logits = s.logits()
    assert isinstance(logits, np.ndarray) and logits.shape == (bundled.info.vocab_size,)
    assert int(np.argmax(logits)) == nxt
    drafts = s.draft(nxt, 5, 4)
    accepted, after = s.verify(nxt, drafts)
    assert drafts[:accepted] == full[1 : 1 + accepted] and after == full[1 + accepted]
    assert np.array_equal(s.logits(-1), s.logits(len(drafts)))
    s.rewind(len(prompt))
    assert s.step(full[0]) == full[1]
    s.set_abort(lambda: True)
    with pytest.raises(layerskip.LayerskipError) as e:
        s.step(full[1])
    assert e.value.code == 17
    s.set_abort(None)
    assert s.step(full[1]) == full[2]
    assert s.stats()["shallow_len"] == len(prompt) + 2
    with pytest.raises(ValueError):
        s.prefill([])


def test_the_binding_refuses_libraries_it_cannot_use():
    from layerskip import _ffi

    assert _ffi.supported(_ffi.ABI_VERSION, layerskip.version())
    assert _ffi.supported(2, "1.3.0") and _ffi.supported(2, "1.10.0") and _ffi.supported(2, "2.0.0")
    assert not _ffi.supported(2, "1.2.9")
    assert not _ffi.supported(1, "1.3.0")
    assert not _ffi.supported(2, "garbage")


def test_sessions_round_advances_sessions_together(bundled):
    prompt = bundled.tokenize("def fibonacci(n):")
    n = 24
    want = bundled.session().generate(prompt, max_new_tokens=n, ignore_eos=True).tokens
    modes = [dict(mode="full"), dict(mode="self-speculative", exit_layer=5, draft_len=3),
             dict(mode="self-speculative", exit_layer="auto", draft_len="auto")]
    sessions = [bundled.session() for _ in modes]
    got = [[] for _ in modes]
    inputs = [prompt for _ in modes]
    bad = layerskip.Round(bundled.session(), prompt, max_tokens=0)
    first = True
    while any(len(g) < n for g in got):
        live = [i for i in range(len(modes)) if len(got[i]) < n]
        rounds = [layerskip.Round(sessions[i], inputs[i], n - len(got[i]), **modes[i]) for i in live]
        res = layerskip.sessions_round(rounds + ([bad] if first else []))
        if first:
            assert res[-1].error is not None and res[-1].error.code == 2
            assert "max_tokens must be at least 1" in str(res[-1].error)
            first = False
        for i, r in zip(live, res):
            assert r.error is None and r.tokens
            got[i] += r.tokens
            inputs[i] = r.tokens[-1:]
    assert all(g == want for g in got)


def test_the_readme_example_runs(tmp_path):
    import re
    import subprocess
    import sys

    readme = (ROOT / "python" / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "tokens/s" in run.stdout and len(run.stdout) > 40
