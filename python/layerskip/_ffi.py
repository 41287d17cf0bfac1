"""ctypes declarations of the layerskip C ABI (include/layerskip.h, ABI 2).

Structs mirror the header field for field; each is filled by its
``lsk_*_init(&s, sizeof s)``, so a field this module does not know keeps
the library's default. Functions run through ``ctypes.CDLL``, which
releases the GIL for the duration of every call.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_double,
    c_float,
    c_int32,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)

ABI_VERSION = 2
# The oldest library whose functions and struct fields this binding uses.
MIN_LIBRARY = (1, 3)
AUTO = 0xFFFFFFFF
MAX_EOS_IDS = 8


class lsk_sampling(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("temperature", c_float),
        ("top_k", c_uint32),
        ("top_p", c_float),
        ("seed", c_uint64),
    ]


class lsk_generate_options(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("max_new_tokens", c_uint32),
        ("mode", c_uint32),
        ("exit_layer", c_uint32),
        ("draft_len", c_uint32),
        ("sampling", POINTER(lsk_sampling)),
        ("ignore_eos", c_uint8),
        ("stop_strings", POINTER(c_char_p)),
        ("n_stop_strings", c_size_t),
        ("confidence_threshold", c_float),
    ]


class lsk_generate_result(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("n_tokens", c_uint32),
        ("stop_reason", c_uint32),
        ("prompt_tokens", c_uint32),
        ("seconds", c_double),
        ("tokens_per_second", c_double),
        ("drafted", c_uint64),
        ("accepted", c_uint64),
        ("rounds", c_uint64),
        ("prompt_seconds", c_double),
        ("prompt_tokens_per_second", c_double),
        ("decode_tokens_per_second", c_double),
    ]


class lsk_model_options(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("device", c_uint32),
        ("device_index", c_uint32),
        ("max_context", c_uint32),
        ("kv_budget_bytes", c_uint64),
        ("quantize", c_uint32),
        ("kv_dtype", c_uint32),
        ("threads", c_uint32),
        ("draft_shortlist", c_uint32),
    ]


class lsk_model_summary(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("n_layers", c_uint32),
        ("vocab_size", c_uint32),
        ("hidden_size", c_uint32),
        ("n_heads", c_uint32),
        ("n_kv_heads", c_uint32),
        ("context_length", c_uint32),
        ("bos_token_id", c_int32),
        ("n_eos_token_ids", c_uint32),
        ("eos_token_ids", c_int32 * MAX_EOS_IDS),
        ("dtype", c_uint32),
    ]


class lsk_session_options(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("context_length", c_uint32),
        ("seed", c_uint64),
    ]


class lsk_stats(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("drafted", c_uint64),
        ("accepted", c_uint64),
        ("rounds", c_uint64),
        ("draft_seconds", c_double),
        ("verify_seconds", c_double),
        ("shallow_len", c_uint32),
        ("deep_len", c_uint32),
        ("context_length", c_uint32),
    ]


class lsk_round(Structure):
    _fields_ = [
        ("struct_size", c_size_t),
        ("session", c_void_p),
        ("input", POINTER(c_int32)),
        ("n_input", c_size_t),
        ("mode", c_uint32),
        ("exit_layer", c_uint32),
        ("draft_len", c_uint32),
        ("max_tokens", c_uint32),
        ("tokens", POINTER(c_int32)),
        ("sampling", POINTER(lsk_sampling)),
        ("stop_ids", POINTER(c_int32)),
        ("n_stop_ids", c_size_t),
        ("confidence_threshold", c_float),
        ("drafts", POINTER(c_int32)),
        ("n_drafts", c_size_t),
        ("draft_probs", POINTER(c_float)),
        ("err", POINTER(c_void_p)),
        ("result", c_uint32),
        ("n_tokens", c_uint32),
        ("drafted", c_uint32),
        ("accepted", c_uint32),
        ("ran_exit_layer", c_uint32),
        ("ran_draft_len", c_uint32),
    ]


TOKEN_CALLBACK = CFUNCTYPE(c_int32, c_void_p, c_int32, ctypes.POINTER(ctypes.c_char), c_size_t)
ABORT_CALLBACK = CFUNCTYPE(c_int32, c_void_p)

_P = c_void_p  # opaque handles
_ERR = POINTER(c_void_p)
_I32P = POINTER(c_int32)

_SIGNATURES = {
    "lsk_abi_version": (c_uint32, []),
    "lsk_version_string": (c_char_p, []),
    "lsk_result_name": (c_char_p, [c_uint32]),
    "lsk_error_code": (c_uint32, [_P]),
    "lsk_error_message": (c_char_p, [_P]),
    "lsk_error_free": (None, [_P]),
    "lsk_model_options_init": (c_uint32, [POINTER(lsk_model_options), c_size_t]),
    "lsk_sampling_init": (c_uint32, [POINTER(lsk_sampling), c_size_t]),
    "lsk_session_options_init": (c_uint32, [POINTER(lsk_session_options), c_size_t]),
    "lsk_generate_options_init": (c_uint32, [POINTER(lsk_generate_options), c_size_t]),
    "lsk_model_summary_init": (c_uint32, [POINTER(lsk_model_summary), c_size_t]),
    "lsk_generate_result_init": (c_uint32, [POINTER(lsk_generate_result), c_size_t]),
    "lsk_stats_init": (c_uint32, [POINTER(lsk_stats), c_size_t]),
    "lsk_model_load": (c_uint32, [c_char_p, POINTER(lsk_model_options), POINTER(c_void_p), _ERR]),
    "lsk_model_free": (None, [_P]),
    "lsk_model_info": (c_uint32, [_P, POINTER(lsk_model_summary), _ERR]),
    "lsk_model_reset_policy": (c_uint32, [_P, _ERR]),
    "lsk_tokenize": (c_uint32, [_P, c_char_p, c_size_t, c_uint8, _I32P, c_size_t, POINTER(c_size_t), _ERR]),
    "lsk_detokenize": (c_uint32, [_P, _I32P, c_size_t, c_uint8, c_char_p, c_size_t, POINTER(c_size_t), _ERR]),
    "lsk_session_new": (c_uint32, [_P, POINTER(lsk_session_options), POINTER(c_void_p), _ERR]),
    "lsk_session_free": (None, [_P]),
    "lsk_session_prefill": (c_uint32, [_P, _I32P, c_size_t, POINTER(lsk_sampling), _I32P, _ERR]),
    "lsk_session_step": (c_uint32, [_P, c_int32, c_uint32, POINTER(lsk_sampling), _I32P, _ERR]),
    "lsk_session_logits_ith": (c_uint32, [_P, c_int32, POINTER(POINTER(c_float)), POINTER(c_size_t), _ERR]),
    "lsk_session_set_abort": (c_uint32, [_P, ABORT_CALLBACK, c_void_p, _ERR]),
    "lsk_session_draft": (
        c_uint32,
        [_P, c_int32, c_uint32, c_uint32, POINTER(lsk_sampling), _I32P, c_size_t, POINTER(c_size_t), _ERR],
    ),
    "lsk_session_verify": (
        c_uint32,
        [_P, c_int32, _I32P, c_size_t, POINTER(lsk_sampling), POINTER(c_size_t), _I32P, _ERR],
    ),
    "lsk_session_rewind": (c_uint32, [_P, c_size_t, _ERR]),
    "lsk_session_generate": (
        c_uint32,
        [_P, _I32P, c_size_t, POINTER(lsk_generate_options), TOKEN_CALLBACK, c_void_p,
         POINTER(lsk_generate_result), _ERR],
    ),
    "lsk_session_stats": (c_uint32, [_P, POINTER(lsk_stats), _ERR]),
    "lsk_round_init": (c_uint32, [POINTER(lsk_round), c_size_t]),
    "lsk_sessions_round": (c_uint32, [POINTER(lsk_round), c_size_t, _ERR]),
}


def _library_path() -> str:
    """The library: $LAYERSKIP_LIB, else the one built into this package."""
    env = os.environ.get("LAYERSKIP_LIB")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    ext = ".dylib" if sys.platform == "darwin" else ".so"
    found = sorted(glob.glob(os.path.join(here, f"liblayerskip*{ext}")))
    if not found:
        raise OSError(
            f"no liblayerskip{ext} in {here}: install the package with `pip install ./python`, "
            "or point LAYERSKIP_LIB at a built library"
        )
    return found[0]


def supported(abi: int, version: str) -> bool:
    """Whether a library of this ABI and version string has all this binding uses."""
    try:
        major_minor = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        return False
    return abi == ABI_VERSION and major_minor >= MIN_LIBRARY


def load() -> ctypes.CDLL:
    path = _library_path()
    lib = ctypes.CDLL(path)
    # Both exist in every version: check them before binding the rest, so an
    # old library fails with its version rather than a missing function.
    for name in ("lsk_abi_version", "lsk_version_string"):
        getattr(lib, name).restype, getattr(lib, name).argtypes = _SIGNATURES[name]
    abi, version = lib.lsk_abi_version(), lib.lsk_version_string().decode()
    if not supported(abi, version):
        need = ".".join(map(str, MIN_LIBRARY))
        raise OSError(
            f"{path} is liblayerskip {version} (ABI {abi}); this binding needs "
            f"ABI {ABI_VERSION}, version {need} or later"
        )
    for name, (restype, argtypes) in _SIGNATURES.items():
        f = getattr(lib, name)
        f.restype = restype
        f.argtypes = argtypes
    return lib


def new(struct_type, init) -> Structure:
    """A struct filled with the library's defaults."""
    s = struct_type()
    init(ctypes.byref(s), ctypes.sizeof(s))
    return s
