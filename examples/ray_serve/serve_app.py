"""A Ray Serve deployment of layerskip: an OpenAI-style completions route,
N replicas, each one layerskip Model whose concurrent requests advance
together in batched rounds (`layerskip.sessions_round`).

    serve run serve_app:app     # in examples/ray_serve, after `pip install ./python "ray[serve]"`
    curl -N localhost:8000/v1/completions -d '{"prompt": "class Stack:", "max_tokens": 32, "stream": true}'

Environment: LAYERSKIP_MODEL (default: the bundled model), LAYERSKIP_REPLICAS
(2), LAYERSKIP_THREADS (CPU threads per replica, 1).
"""
from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

import layerskip

DEFAULT_MODEL = str(Path(__file__).resolve().parents[2] / "assets" / "layerskip-pycode-8l")
_DONE = object()


@dataclass
class _Request:
    session: layerskip.Session
    input: List[int]
    budget: int
    round: dict
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    tokens: List[int] = field(default_factory=list)
    sent: str = ""
    finish: Optional[str] = None


class Scheduler:
    """One thread per replica: every round advances all of the replica's
    live requests together, in one `sessions_round` call; requests join
    between rounds and leave when they reach their budget or an EOS id."""

    def __init__(self, model: layerskip.Model):
        self.model = model
        self.eos = list(model.info.eos_token_ids)
        self.incoming: "queue.Queue[_Request]" = queue.Queue()
        threading.Thread(target=self._run, daemon=True, name="layerskip-rounds").start()

    def submit(self, prompt: List[int], params: dict, loop) -> asyncio.Queue:
        out: asyncio.Queue = asyncio.Queue()
        mode = params.get("mode", "full")
        if mode == "auto":
            mode, params["exit_layer"], params["draft_len"] = "self-speculative", "auto", "auto"
        rnd = dict(mode=mode, exit_layer=params.get("exit_layer"), draft_len=params.get("draft_len"),
                   temperature=float(params.get("temperature", 0.0)), top_p=float(params.get("top_p", 1.0)),
                   top_k=int(params.get("top_k", 0)))
        session = self.model.session(seed=int(params.get("seed", 0)))
        self.incoming.put(_Request(session, prompt, int(params.get("max_tokens", 64)), rnd, loop, out))
        return out

    def _send(self, r: _Request, item) -> None:
        r.loop.call_soon_threadsafe(r.out.put_nowait, item)

    def _run(self) -> None:
        live: List[_Request] = []
        while True:
            try:
                while True:
                    live.append(self.incoming.get(block=not live))
            except queue.Empty:
                pass
            rounds = [layerskip.Round(r.session, r.input, r.budget - len(r.tokens), stop_ids=self.eos, **r.round)
                      for r in live]
            for r, res in zip(live, layerskip.sessions_round(rounds)):
                if res.error is not None:
                    r.finish = "error"
                    self._send(r, res.error)
                    continue
                r.tokens += res.tokens
                r.input = res.tokens[-1:]
                text = self.model.detokenize(r.tokens)
                if text.startswith(r.sent) and not text.endswith("\ufffd"):
                    if len(text) > len(r.sent):
                        self._send(r, text[len(r.sent):])
                    r.sent = text
                if r.tokens[-1] in self.eos:
                    r.finish = "stop"
                elif len(r.tokens) >= r.budget:
                    r.finish = "length"
            for r in live:
                if r.finish:
                    if r.finish != "error":
                        self._send(r, (_DONE, r.finish, len(r.tokens)))
                    r.session.close()
            live = [r for r in live if not r.finish]


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=128)
class Completions:
    def __init__(self, model_path: str, threads: int = 1):
        self.model = layerskip.Model.load(model_path, threads=threads)
        self.scheduler = Scheduler(self.model)

    async def __call__(self, request: Request):
        body = await request.json()
        prompt = self.model.tokenize(body.get("prompt", ""))
        if not prompt:
            return JSONResponse({"error": "the prompt is empty"}, status_code=400)
        out = self.scheduler.submit(prompt, body, asyncio.get_running_loop())
        if body.get("stream"):
            return StreamingResponse(self._events(out), media_type="text/event-stream")
        text, finish, n = [], None, 0
        while True:
            item = await out.get()
            if isinstance(item, layerskip.LayerskipError):
                return JSONResponse({"error": str(item), "code": item.code}, status_code=400)
            if isinstance(item, tuple):
                _, finish, n = item
                break
            text.append(item)
        return JSONResponse({"object": "text_completion",
                             "choices": [{"index": 0, "text": "".join(text), "finish_reason": finish}],
                             "usage": {"prompt_tokens": len(prompt), "completion_tokens": n}})

    async def _events(self, out: asyncio.Queue):
        while True:
            item = await out.get()
            if isinstance(item, layerskip.LayerskipError):
                yield f"data: {json.dumps({'error': str(item), 'code': item.code})}\n\n"
                break
            if isinstance(item, tuple):
                chunk = {"choices": [{"index": 0, "text": "", "finish_reason": item[1]}]}
                yield f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"
                break
            yield f"data: {json.dumps({'choices': [{'index': 0, 'text': item, 'finish_reason': None}]})}\n\n"


def build(model_path: str = DEFAULT_MODEL, replicas: int = 2, threads: int = 1):
    """The application: `replicas` copies of the model, each with its own scheduler."""
    return Completions.options(num_replicas=replicas).bind(model_path, threads)


app = build(os.environ.get("LAYERSKIP_MODEL", DEFAULT_MODEL),
            int(os.environ.get("LAYERSKIP_REPLICAS", "2")), int(os.environ.get("LAYERSKIP_THREADS", "1")))
