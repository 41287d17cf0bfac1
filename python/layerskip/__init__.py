"""LayerSkip early-exit inference and self-speculative decoding for Hugging
Face Llama checkpoints: a ctypes binding of the layerskip C library.

    import layerskip
    model = layerskip.Model.load("assets/layerskip-pycode-8l")
    session = model.session()
    for piece in session.generate("class Stack:", mode="self-speculative",
                                  exit_layer="auto", draft_len="auto", stream=True):
        print(piece, end="", flush=True)

Every C call releases the GIL, so sessions may decode on threads of their
own. Errors are :class:`LayerskipError` with the library's code and message.
"""
from __future__ import annotations

import ctypes
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _ffi
from ._version import __version__

__all__ = [
    "LayerskipError", "Model", "ModelInfo", "Session", "GenerateResult", "Round", "RoundResult",
    "sessions_round", "__version__",
]

_lib = _ffi.load()

# lsk_result codes (frozen numbers).
OK = 0
ERR_INVALID_ARGUMENT = 2
ERR_BUSY = 10
ERR_ABORTED = 17

_MODES = {"full": 0, "early-exit": 1, "early_exit": 1, "self-speculative": 2, "self_speculative": 2}
_QUANTIZE = {"none": 0, "int8": 1, "bf16": 2}
_KV_DTYPE = {"f32": 0, "bf16": 1}
_STOP_REASONS = ["max_tokens", "eos", "stop_string", "callback", "context_full"]


class LayerskipError(Exception):
    """A failed library call: ``code`` is the lsk_result number, ``name`` its
    name, and the message is the library's own."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.name = _lib.lsk_result_name(code).decode()
        self.message = message


def _check(result: int, err: ctypes.c_void_p) -> None:
    if err.value:
        try:
            if result != OK:
                raise LayerskipError(result, _lib.lsk_error_message(err).decode("utf-8", "replace"))
        finally:
            _lib.lsk_error_free(err)
    elif result != OK:
        raise LayerskipError(result, _lib.lsk_result_name(result).decode())


def _call(name: str, *args) -> None:
    err = ctypes.c_void_p()
    _check(getattr(_lib, name)(*args, ctypes.byref(err)), err)


def _ids(tokens: Sequence[int]):
    arr = (ctypes.c_int32 * len(tokens))(*tokens)
    return arr, len(tokens)


def _sampling(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> _ffi.lsk_sampling:
    s = _ffi.new(_ffi.lsk_sampling, _lib.lsk_sampling_init)
    s.temperature, s.top_k, s.top_p, s.seed = temperature, top_k, top_p, seed
    return s


def _setting(v: Union[int, str, None], default: int) -> int:
    if v is None:
        return default
    if v == "auto":
        return _ffi.AUTO
    if not isinstance(v, int) or not 0 <= v < _ffi.AUTO:
        raise LayerskipError(ERR_INVALID_ARGUMENT, f"expected a count below 2**32 - 1 or 'auto', got {v!r}")
    return v


@dataclass(frozen=True)
class ModelInfo:
    n_layers: int
    vocab_size: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    context_length: int
    bos_token_id: Optional[int]
    eos_token_ids: Tuple[int, ...]


@dataclass
class GenerateResult:
    """What a generation made, and how fast."""

    tokens: List[int]
    text: str
    stop_reason: str
    prompt_tokens: int
    seconds: float
    tokens_per_second: float
    prompt_tokens_per_second: float
    decode_tokens_per_second: float
    drafted: int
    accepted: int
    rounds: int
    extra: dict = field(default_factory=dict)


class _Handle:
    """A C handle released once, by ``close()``, ``with`` or garbage collection."""

    _h: Optional[ctypes.c_void_p] = None
    _free: Callable = staticmethod(lambda h: None)

    def close(self) -> None:
        """Release the handle (a model stays alive while its sessions are open)."""
        h, self._h = self._h, None
        if h:
            type(self)._free(h)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class Model(_Handle):
    """A loaded checkpoint. Thread-safe; sessions keep it alive."""

    _free = staticmethod(lambda h: _lib.lsk_model_free(h))

    def __init__(self, handle: ctypes.c_void_p, path: str):
        self._h = handle
        self.path = path
        self.info = self._info()

    @classmethod
    def load(
        cls,
        path: str,
        *,
        device: str = "cpu",
        quantize: str = "none",
        kv_dtype: str = "f32",
        threads: int = 0,
        max_context: int = 0,
        draft_shortlist: Union[int, str] = 0,
    ) -> "Model":
        """Load a Hugging Face Llama checkpoint directory. ``device``: "cpu",
        "cuda" or "cuda:N"; ``quantize``: "none", "int8" or "bf16";
        ``draft_shortlist``: K, 0 (the full head) or "auto"."""
        o = _ffi.new(_ffi.lsk_model_options, _lib.lsk_model_options_init)
        if device == "cpu":
            o.device = 0
        elif device == "cuda" or device.startswith("cuda:"):
            o.device, o.device_index = 1, int(device.partition(":")[2] or 0)
        else:
            raise LayerskipError(ERR_INVALID_ARGUMENT, f"unknown device {device!r} (cpu, cuda or cuda:N)")
        for name, table, value in (("quantize", _QUANTIZE, quantize), ("kv_dtype", _KV_DTYPE, kv_dtype)):
            if value not in table:
                raise LayerskipError(ERR_INVALID_ARGUMENT, f"unknown {name} {value!r} ({', '.join(table)})")
            setattr(o, name, table[value])
        o.threads, o.max_context = threads, max_context
        o.draft_shortlist = _setting(draft_shortlist, 0)
        h = ctypes.c_void_p()
        _call("lsk_model_load", str(path).encode(), ctypes.byref(o), ctypes.byref(h))
        return cls(h, str(path))

    def _info(self) -> ModelInfo:
        s = _ffi.new(_ffi.lsk_model_summary, _lib.lsk_model_summary_init)
        _call("lsk_model_info", self._h, ctypes.byref(s))
        return ModelInfo(
            s.n_layers, s.vocab_size, s.hidden_size, s.n_heads, s.n_kv_heads, s.context_length,
            None if s.bos_token_id < 0 else s.bos_token_id, tuple(s.eos_token_ids[: s.n_eos_token_ids]),
        )

    def tokenize(self, text: str, add_special: bool = True) -> List[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        while True:
            buf = (ctypes.c_int32 * cap)()
            n = ctypes.c_size_t()
            err = ctypes.c_void_p()
            r = _lib.lsk_tokenize(self._h, data, len(data), int(add_special), buf, cap, ctypes.byref(n), ctypes.byref(err))
            if r == 9:  # LSK_ERR_BUFFER_TOO_SMALL: n holds the size needed
                _lib.lsk_error_free(err)
                cap = n.value
                continue
            _check(r, err)
            return list(buf[: n.value])

    def detokenize(self, ids: Sequence[int], skip_special: bool = True) -> str:
        arr, n = _ids(ids)
        need = ctypes.c_size_t()
        err = ctypes.c_void_p()
        r = _lib.lsk_detokenize(self._h, arr, n, int(skip_special), None, 0, ctypes.byref(need), ctypes.byref(err))
        if r != 9:
            _check(r, err)
        else:
            _lib.lsk_error_free(err)
        buf = ctypes.create_string_buffer(need.value + 1)
        length = ctypes.c_size_t()
        _call("lsk_detokenize", self._h, arr, n, int(skip_special), buf, len(buf), ctypes.byref(length))
        return buf.raw[: length.value].decode("utf-8")

    def session(self, context_length: int = 0, seed: int = 0) -> "Session":
        """A new session (its own KV cache); ``seed`` drives step/draft/verify sampling."""
        return Session(self, context_length, seed)

    def reset_policy(self) -> None:
        """Forget what automatic (E, d) learnt from this model's sessions."""
        _call("lsk_model_reset_policy", self._h)



class Session(_Handle):
    """A decoding session: one KV cache over a model. One call at a time (a
    concurrent call raises LayerskipError with code 10, session busy)."""

    _free = staticmethod(lambda h: _lib.lsk_session_free(h))

    def __init__(self, model: Model, context_length: int = 0, seed: int = 0):
        o = _ffi.new(_ffi.lsk_session_options, _lib.lsk_session_options_init)
        o.context_length, o.seed = context_length, seed
        h = ctypes.c_void_p()
        _call("lsk_session_new", model._h, ctypes.byref(o), ctypes.byref(h))
        self._h = h
        self.model = model
        self._abort = None

    def _prompt(self, prompt: Union[str, Sequence[int]]) -> List[int]:
        return self.model.tokenize(prompt) if isinstance(prompt, str) else list(prompt)

    def generate(
        self,
        prompt: Union[str, Sequence[int]],
        *,
        max_new_tokens: int = 64,
        mode: str = "full",
        exit_layer: Union[int, str, None] = None,
        draft_len: Union[int, str, None] = None,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        ignore_eos: bool = False,
        confidence_threshold: float = 0.0,
        stream: bool = False,
        on_token: Optional[Callable[[int, str], Optional[bool]]] = None,
    ) -> Union[GenerateResult, Iterator[str]]:
        """Generate after ``prompt`` (text, or token ids used as given).

        ``mode``: "full", "early-exit" or "self-speculative"; ``exit_layer``
        and ``draft_len``: an int or "auto" (default: L/2 and 4). Greedy by
        default (``temperature=0``). ``on_token(token, text)`` sees every
        token with the text that became final with it; returning False
        stops, and an exception it raises stops generation and propagates.
        With ``stream=True`` the call returns an iterator of text pieces
        (decoding runs on a thread; closing the iterator stops it).
        """
        ids = self._prompt(prompt)
        if mode == "auto":
            mode, exit_layer, draft_len = "self-speculative", "auto", "auto"
        if mode not in _MODES:
            raise LayerskipError(ERR_INVALID_ARGUMENT, f"unknown mode {mode!r} (full, early-exit, self-speculative)")
        o = _ffi.new(_ffi.lsk_generate_options, _lib.lsk_generate_options_init)
        o.max_new_tokens = max_new_tokens
        o.mode = _MODES[mode]
        o.exit_layer = _setting(exit_layer, 0)
        o.draft_len = _setting(draft_len, o.draft_len)
        smp = _sampling(temperature, top_k, top_p, seed)
        o.sampling = ctypes.pointer(smp)
        o.ignore_eos = int(ignore_eos)
        o.confidence_threshold = confidence_threshold
        stops = [s.encode("utf-8") for s in (stop or [])]
        stop_arr = (ctypes.c_char_p * max(1, len(stops)))(*stops)
        if stops:
            o.stop_strings, o.n_stop_strings = stop_arr, len(stops)
        keep = (smp, stop_arr)  # alive for the call
        if stream:
            return self._stream(ids, o, keep, on_token)
        return self._generate(ids, o, keep, on_token)

    def _generate(self, ids, o, keep, on_token, stopped: Optional[threading.Event] = None) -> GenerateResult:
        tokens: List[int] = []
        pieces: List[str] = []
        raised: List[BaseException] = []

        def cb(_user, token, text, length):
            try:
                piece = ctypes.string_at(text, length).decode("utf-8", "replace")
                tokens.append(token)
                pieces.append(piece)
                if stopped is not None and stopped.is_set():
                    return 1
                if on_token is not None and on_token(token, piece) is False:
                    return 1
                return 0
            except BaseException as e:  # noqa: BLE001 - re-raised after the call
                raised.append(e)
                return 1

        callback = _ffi.TOKEN_CALLBACK(cb)
        res = _ffi.new(_ffi.lsk_generate_result, _lib.lsk_generate_result_init)
        arr, n = _ids(ids)
        err = ctypes.c_void_p()
        r = _lib.lsk_session_generate(self._h, arr, n, ctypes.byref(o), callback, None, ctypes.byref(res), ctypes.byref(err))
        if raised:
            if err.value:
                _lib.lsk_error_free(err)
            raise raised[0]
        _check(r, err)
        return GenerateResult(
            tokens, "".join(pieces), _STOP_REASONS[res.stop_reason], res.prompt_tokens, res.seconds,
            res.tokens_per_second, res.prompt_tokens_per_second, res.decode_tokens_per_second,
            res.drafted, res.accepted, res.rounds,
        )

    def _stream(self, ids, o, keep, on_token) -> Iterator[str]:
        q: "queue.Queue" = queue.Queue()
        stopped = threading.Event()
        done = object()

        def relay(token: int, piece: str):
            q.put(piece)
            return None if on_token is None else on_token(token, piece)

        def run():
            try:
                self._generate(ids, o, keep, relay, stopped)
                q.put(done)
            except BaseException as e:  # noqa: BLE001 - handed to the reader
                q.put(e)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                if item:
                    yield item
        finally:
            stopped.set()
            worker.join()

    def prefill(self, tokens: Sequence[int], temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> int:
        """Feed ``tokens`` at full depth; returns the next token."""
        arr, n = _ids(tokens)
        if n == 0:
            raise ValueError("prefill needs at least one token")
        nxt = ctypes.c_int32(-1)
        smp = _sampling(temperature, top_k, top_p)
        _call("lsk_session_prefill", self._h, arr, n, ctypes.byref(smp), ctypes.byref(nxt))
        return nxt.value

    def step(self, token: int, exit_layer: int = 0, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> int:
        """One token through layers 0..exit_layer (0: full depth); returns the next token."""
        nxt = ctypes.c_int32(-1)
        smp = _sampling(temperature, top_k, top_p)
        _call("lsk_session_step", self._h, token, exit_layer, ctypes.byref(smp), ctypes.byref(nxt))
        return nxt.value

    def logits(self, i: int = -1) -> np.ndarray:
        """Row ``i`` of the last call's logits (negative: from the end), copied."""
        p = ctypes.POINTER(ctypes.c_float)()
        n = ctypes.c_size_t()
        _call("lsk_session_logits_ith", self._h, i, ctypes.byref(p), ctypes.byref(n))
        return np.ctypeslib.as_array(p, shape=(n.value,)).copy()

    def draft(self, next_token: int, exit_layer: int, max_drafts: int) -> List[int]:
        """Up to ``max_drafts`` greedy drafts with layers 0..exit_layer after ``next_token``."""
        buf = (ctypes.c_int32 * max(1, max_drafts))()
        n = ctypes.c_size_t()
        _call("lsk_session_draft", self._h, next_token, exit_layer, max_drafts, None, buf, len(buf), ctypes.byref(n))
        return list(buf[: n.value])

    def verify(self, next_token: int, drafts: Sequence[int]) -> Tuple[int, int]:
        """Verify drafts after ``next_token`` at full depth: (accepted, token after)."""
        arr, n = _ids(drafts)
        acc = ctypes.c_size_t()
        after = ctypes.c_int32()
        _call("lsk_session_verify", self._h, next_token, arr, n, None, ctypes.byref(acc), ctypes.byref(after))
        return acc.value, after.value

    def rewind(self, length: int) -> None:
        """Forget every position from ``length`` on."""
        _call("lsk_session_rewind", self._h, length)

    def set_abort(self, should_abort: Optional[Callable[[], bool]]) -> None:
        """Ask ``should_abort()`` between layers of every pass (None removes
        it): True stops the call with LayerskipError code 17 and leaves the
        session as it was. An exception from it counts as True."""

        def cb(_user):
            try:
                return 1 if should_abort() else 0
            except BaseException:  # noqa: BLE001 - an abort
                return 1

        callback = _ffi.ABORT_CALLBACK(cb) if should_abort else _ffi.ABORT_CALLBACK()
        _call("lsk_session_set_abort", self._h, callback, None)
        self._abort = callback  # the library keeps calling it

    def stats(self) -> dict:
        s = _ffi.new(_ffi.lsk_stats, _lib.lsk_stats_init)
        _call("lsk_session_stats", self._h, ctypes.byref(s))
        return {name: getattr(s, name) for name, _ in s._fields_ if name != "struct_size"}



@dataclass
class Round:
    """One session's round for :func:`sessions_round`: feed ``input`` (the
    token the session's last round returned last, or a prompt), then run one
    round of ``mode`` committing at most ``max_tokens`` tokens; the round
    ends after any of ``stop_ids``. Draws come from the session's own seed."""

    session: "Session"
    input: Sequence[int]
    max_tokens: int
    mode: str = "full"
    exit_layer: Union[int, str, None] = None
    draft_len: Union[int, str, None] = None
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop_ids: Sequence[int] = ()


@dataclass
class RoundResult:
    tokens: List[int]
    drafted: int = 0
    accepted: int = 0
    error: Optional[LayerskipError] = None


def sessions_round(rounds: Sequence[Round]) -> List[RoundResult]:
    """Advance each round's session (all of one model) by one round, in
    shared passes (lsk_sessions_round): each result is identical to running
    that round alone. A failed round fails alone (its ``error``)."""
    n = len(rounds)
    if n == 0:
        return []
    cr = (_ffi.lsk_round * n)()
    keep = []
    errs = (ctypes.c_void_p * n)()
    for i, r in enumerate(rounds):
        c = cr[i]
        _lib.lsk_round_init(ctypes.byref(c), ctypes.sizeof(c))
        if r.mode not in _MODES:
            raise LayerskipError(ERR_INVALID_ARGUMENT, f"unknown mode {r.mode!r}")
        inp, n_in = _ids(r.input)
        out = (ctypes.c_int32 * max(1, r.max_tokens))()
        stops, n_stops = _ids(r.stop_ids)
        smp = _sampling(r.temperature, r.top_k, r.top_p)
        keep += [inp, out, stops, smp]
        c.session = r.session._h
        c.input, c.n_input = ctypes.cast(inp, ctypes.POINTER(ctypes.c_int32)), n_in
        c.mode, c.max_tokens = _MODES[r.mode], r.max_tokens
        c.exit_layer = _setting(r.exit_layer, 0)
        c.draft_len = _setting(r.draft_len, c.draft_len)
        c.tokens = ctypes.cast(out, ctypes.POINTER(ctypes.c_int32))
        c.sampling = ctypes.pointer(smp)
        c.stop_ids, c.n_stop_ids = ctypes.cast(stops, ctypes.POINTER(ctypes.c_int32)), n_stops
        c.err = ctypes.cast(ctypes.byref(errs, i * ctypes.sizeof(ctypes.c_void_p)), ctypes.POINTER(ctypes.c_void_p))
    _call("lsk_sessions_round", cr, n)
    results = []
    for i, c in enumerate(cr):
        if c.result != OK:
            e = ctypes.c_void_p(errs[i])
            try:
                _check(c.result, e)
            except LayerskipError as err:
                results.append(RoundResult([], error=err))
            continue
        results.append(RoundResult(list(c.tokens[: c.n_tokens]), c.drafted, c.accepted))
    return results


def version() -> str:
    """The C library's version."""
    return _lib.lsk_version_string().decode()
