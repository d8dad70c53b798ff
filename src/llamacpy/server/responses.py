"""Response bodies in llama-server b4748's and OpenAI's shapes, built from the engine's token events.

Owns: `Completion` (what one generation produced: text, tokens, per-token probabilities, finish, timings), and
the JSON of /completion (final and streamed), /v1/completions, /v1/chat/completions (message and chunks),
probabilities (`completion_probabilities` / `logprobs`), usage and timings.
Must not: validate requests, talk to the engine, or do I/O.
"""

from __future__ import annotations

import math
import secrets
import string
import time
from dataclasses import dataclass, field

TIMING_KEYS = ("prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second",
               "predicted_n", "predicted_ms", "predicted_per_token_ms", "predicted_per_second")
LOWEST_FLOAT = -3.4028234663852886e38  # llama-server writes log(0) as FLT_LOWEST (JSON has no -inf)
SYSTEM_FINGERPRINT = "llamacpy"

_ID_CHARS = string.digits + string.ascii_letters


def completion_id(prefix: str = "chatcmpl-") -> str:
    """llama-server's gen_chatcmplid: the prefix and 32 random letters/digits."""
    return prefix + "".join(secrets.choice(_ID_CHARS) for _ in range(32))


def timings_json(t: dict | None) -> dict:
    t = t or {}
    out = {}
    for k in TIMING_KEYS:
        v = t.get(k, 0)
        if isinstance(v, float) and not math.isfinite(v):
            v = 0.0
        out[k] = v
    return out


def finish_reason(engine_reason: str | None) -> str:
    """The engine's stop/length/cancelled -> OpenAI's finish_reason (llama-server: EOS or a stop word -> stop)."""
    return "stop" if engine_reason == "stop" else "length"


def stop_type(c: "Completion") -> str:
    if c.finish == "stop":
        return "word" if c.stop_word else "eos"
    if c.finish == "length":
        return "limit"
    return "none"


@dataclass
class TokenProbs:
    """One generated token with its probability and the top candidates (llama.cpp's completion_token_output)."""

    token: int
    piece: bytes  # the token's bytes (may be part of a UTF-8 character)
    prob: float | None  # the sampled token's probability (None: not among the candidates reported)
    top: list[tuple[int, bytes, float]]  # (id, piece, probability), most likely first


@dataclass
class Completion:
    """Everything one generation produced, accumulated from its events."""

    prompt_tokens: list[int]
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    probs: list[TokenProbs] = field(default_factory=list)
    finish: str | None = None
    stop_word: str | None = None
    timings: dict | None = None
    n_decoded: int = 0
    id_slot: int = -1
    n_cached: int = 0
    error: str | None = None

    @property
    def n_prompt(self) -> int:
        t = self.timings or {}
        return int(t.get("n_prompt_tokens", len(self.prompt_tokens)))

    @property
    def n_predicted(self) -> int:
        t = self.timings or {}
        return int(t.get("predicted_n", self.n_decoded))

    def usage(self) -> dict:
        return {"completion_tokens": self.n_predicted, "prompt_tokens": self.n_prompt,
                "total_tokens": self.n_predicted + self.n_prompt}


# -- probabilities -----------------------------------------------------------------------------------------

def _valid_prefix(piece: bytes) -> str:
    """llama-server's validate_utf8 + resize: drop a cut-off multi-byte character at the end."""
    return piece.decode("utf-8", errors="ignore")


def _logp(p: float) -> float:
    return LOWEST_FLOAT if p <= 0.0 else math.log(p)


def probs_json(probs: list[TokenProbs], post_sampling: bool = False) -> list[dict]:
    """completion_token_output::probs_vector_to_json: one entry per generated token."""
    key, top_key = ("prob", "top_probs") if post_sampling else ("logprob", "top_logprobs")
    conv = (lambda p: p) if post_sampling else _logp
    out = []
    for tp in probs:
        prob = tp.prob if tp.prob is not None else 0.0
        out.append({
            "id": tp.token, "token": _valid_prefix(tp.piece), "bytes": list(tp.piece), key: conv(prob),
            top_key: [{"id": i, "token": _valid_prefix(piece), "bytes": list(piece), key: conv(p)}
                      for i, piece, p in tp.top],
        })
    return out


def legacy_logprobs(probs: list[TokenProbs], text_offset0: int = 0) -> dict:
    """OpenAI's /v1/completions logprobs object (tokens, token_logprobs, top_logprobs, text_offset), plus
    llama-server's `content` list."""
    tokens, lps, tops, offsets = [], [], [], []
    off = text_offset0
    for tp in probs:
        s = _valid_prefix(tp.piece)
        tokens.append(s)
        lps.append(_logp(tp.prob if tp.prob is not None else 0.0))
        tops.append({_valid_prefix(piece): _logp(p) for _, piece, p in tp.top})
        offsets.append(off)
        off += len(s)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets,
            "content": probs_json(probs)}


# -- /completion (llama.cpp's native route) ------------------------------------------------------------------

def native_partial(content: str, token: int | None, c: Completion, index: int, probs: list[TokenProbs] | None,
                   final_timings: dict | None = None) -> dict:
    res = {"index": index, "content": content, "tokens": [] if token is None else [token], "stop": False,
           "id_slot": c.id_slot, "tokens_predicted": c.n_decoded, "tokens_evaluated": len(c.prompt_tokens)}
    if final_timings is not None:
        res["timings"] = timings_json(final_timings)
    if probs:
        res["completion_probabilities"] = probs_json(probs)
    return res


def native_final(c: Completion, index: int, stream: bool, model: str, settings: dict, prompt_text: str,
                 return_tokens: bool, response_fields: list[str] | None = None) -> dict:
    res = {
        "index": index,
        "content": "" if stream else c.text,
        "tokens": [] if stream or not return_tokens else c.tokens,
        "id_slot": c.id_slot,
        "stop": True,
        "model": model,
        "tokens_predicted": c.n_predicted,
        "tokens_evaluated": c.n_prompt,
        "generation_settings": settings,
        "prompt": prompt_text,
        "has_new_line": "\n" in c.text,
        "truncated": bool((c.timings or {}).get("truncated", False)),
        "stop_type": stop_type(c),
        "stopping_word": c.stop_word or "",
        "tokens_cached": c.n_cached,
        "timings": timings_json(c.timings),
    }
    if not stream and c.probs:
        res["completion_probabilities"] = probs_json(c.probs)
    if response_fields:
        return nested_values(response_fields, res)
    return res


def nested_values(paths: list[str], obj: dict) -> dict:
    """llama-server's json_get_nested_values: keep only the listed "a/b" paths that exist."""
    out = {}
    for path in paths:
        cur, ok = obj, True
        for k in path.split("/"):
            if isinstance(cur, dict) and k in cur:
                cur = cur[k]
            else:
                ok = False
                break
        if ok:
            out[path] = cur
    return out


# -- /v1/completions ---------------------------------------------------------------------------------------

def oai_completion(cs: list[Completion], cid: str, model: str, with_logprobs: bool) -> dict:
    choices, usage = [], {"completion_tokens": 0, "prompt_tokens": 0, "total_tokens": 0}
    for i, c in enumerate(cs):
        choices.append({"text": c.text, "index": i,
                        "logprobs": legacy_logprobs(c.probs) if with_logprobs and c.probs else None,
                        "finish_reason": finish_reason(c.finish)})
        for k, v in c.usage().items():
            usage[k] += v
    res = {"choices": choices, "created": int(time.time()), "model": model,
           "system_fingerprint": SYSTEM_FINGERPRINT, "object": "text_completion", "usage": usage, "id": cid}
    if len(cs) == 1:
        res["timings"] = timings_json(cs[0].timings)
    return res


def oai_completion_chunk(text: str, cid: str, model: str, finish: str | None = None,
                         probs: list[TokenProbs] | None = None, usage: dict | None = None,
                         timings: dict | None = None) -> dict:
    res = {"choices": [{"text": text, "index": 0, "logprobs": legacy_logprobs(probs) if probs else None,
                        "finish_reason": finish}],
           "created": int(time.time()), "model": model, "system_fingerprint": SYSTEM_FINGERPRINT,
           "object": "text_completion", "id": cid}
    if usage is not None:
        res["usage"] = usage
    if timings is not None:
        res["timings"] = timings_json(timings)
    return res


# -- /v1/chat/completions ----------------------------------------------------------------------------------

def chat_completion(c: Completion, cid: str, model: str, with_logprobs: bool) -> dict:
    choice = {"finish_reason": finish_reason(c.finish), "index": 0,
              "message": {"role": "assistant", "content": c.text}}
    choice["logprobs"] = {"content": probs_json(c.probs)} if with_logprobs and c.probs else None
    return {"choices": [choice], "created": int(time.time()), "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT, "object": "chat.completion", "usage": c.usage(), "id": cid,
            "timings": timings_json(c.timings)}


def chat_chunk(delta: dict, cid: str, model: str, finish: str | None = None,
               probs: list[TokenProbs] | None = None, usage: dict | None = None, timings: dict | None = None,
               choices: bool = True) -> dict:
    res = {"choices": [], "created": int(time.time()), "id": cid, "model": model,
           "system_fingerprint": SYSTEM_FINGERPRINT, "object": "chat.completion.chunk"}
    if choices:
        ch = {"finish_reason": finish, "index": 0, "delta": delta}
        ch["logprobs"] = {"content": probs_json(probs)} if probs else None
        res["choices"] = [ch]
    if usage is not None:
        res["usage"] = usage
    if timings is not None:
        res["timings"] = timings_json(timings)
    return res


def generation_settings(params, n_predict: int, n_keep: int, stop: list[str], stream: bool, n_probs: int,
                        ignore_eos: bool, model: str) -> dict:
    """slot_params::to_json, for the fields we have: the sampler values actually used, under llama.cpp's names."""
    from .params import SUPPORTED_SAMPLER_FIELDS

    out = {"n_predict": n_predict}
    for name, (_, attr) in SUPPORTED_SAMPLER_FIELDS.items():
        if attr is not None:
            v = getattr(params, attr)
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            out[name] = v
    bias = getattr(params, "logit_bias", None) or {}
    out.update({"stop": stop, "max_tokens": n_predict, "n_keep": n_keep, "ignore_eos": ignore_eos,
                "stream": stream, "n_probs": n_probs, "model": model,
                "logit_bias": [{"bias": (b if math.isfinite(b) else None), "token": t} for t, b in bias.items()]})
    samplers = getattr(params, "samplers", None)
    if samplers is not None:
        out["samplers"] = list(samplers)
    return out
