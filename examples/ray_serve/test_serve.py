"""A local Ray cluster serving layerskip with 2 replicas: 32 concurrent
streaming requests, no errors, greedy outputs equal to the CLI's; then the
same load on 1 replica, for throughput. Slow (it starts Ray), bounded in time."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_app import DEFAULT_MODEL, build  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CLI = os.environ.get("LAYERSKIP_CLI", str(ROOT / "target" / "release" / "layerskip"))
PROMPTS = ["def fibonacci(n):", "class Stack:", "import os\n", "def read_config(path):"]
MAX_TOKENS = 32
REQUESTS = 32


def cli_text(prompt):
    out = subprocess.run([CLI, "generate", "--model", DEFAULT_MODEL, "--prompt", prompt, "--greedy",
                          "--max-new-tokens", str(MAX_TOKENS), "--json"],
                         check=True, capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout)["text"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream(port, prompt):
    body = json.dumps({"prompt": prompt, "max_tokens": MAX_TOKENS, "stream": True, "mode": "auto"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    text, finish, events = [], None, 0
    with urllib.request.urlopen(req, timeout=120) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            events += 1
            text.append(chunk["choices"][0]["text"])
            finish = chunk["choices"][0]["finish_reason"] or finish
    return "".join(text), finish, events


def load(port):
    """REQUESTS concurrent streams; returns (outputs, seconds)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(REQUESTS) as pool:
        outs = list(pool.map(lambda i: stream(port, PROMPTS[i % len(PROMPTS)]), range(REQUESTS)))
    return outs, time.perf_counter() - start


@pytest.mark.slow
def test_two_replicas_serve_concurrent_streams_like_the_cli():
    want = {p: cli_text(p) for p in PROMPTS}
    port = free_port()
    here = str(Path(__file__).resolve().parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": here}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        timings = {}
        for replicas in (2, 1):
            serve.run(build(replicas=replicas), name="layerskip", route_prefix="/")
            stream(port, PROMPTS[0])  # warm up every replica's first request path
            outs, seconds = load(port)
            for i, (text, finish, events) in enumerate(outs):
                assert text == want[PROMPTS[i % len(PROMPTS)]], f"request {i} ({replicas} replicas)"
                assert finish in ("length", "stop") and events >= 2
            timings[replicas] = seconds
            serve.delete("layerskip")
        tokens = REQUESTS * MAX_TOKENS
        print(f"\n{REQUESTS} concurrent streams of up to {MAX_TOKENS} tokens: "
              f"2 replicas {timings[2]:.2f} s (~{tokens / timings[2]:.0f} tok/s), "
              f"1 replica {timings[1]:.2f} s (~{tokens / timings[1]:.0f} tok/s), "
              f"{timings[1] / timings[2]:.2f}x")
    finally:
        serve.shutdown()
        ray.shutdown()
