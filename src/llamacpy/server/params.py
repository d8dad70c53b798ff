"""Request bodies -> validated engine inputs: field types, prompts, sampler settings, OpenAI's field rules.

Owns: the table mapping llama.cpp's JSON sampler fields onto `SamplingParams` (one row per field; a row whose
attribute SamplingParams does not have is accepted and ignored, as llama-server ignores fields it does not know),
prompt parsing (`tokenize_input_prompts`: text, token ids, a mix, or a list of prompts), stop/logit_bias forms,
and the OpenAI routes' checks (unknown fields, `n`, unsupported parameters).
Must not: run the model, build responses, or know about HTTP (errors are raised as `APIError`).
"""

from __future__ import annotations

import dataclasses
import math

from ..sampling import SamplingParams
from .errors import invalid

# -- typed field access ---------------------------------------------------------------------------------------

_KIND_NAMES = {"int": "an integer", "float": "a number", "bool": "a boolean", "str": "a string",
               "str_list": "a list of strings", "object": "an object", "list": "an array"}


def _is_kind(value, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "str_list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list)
    raise ValueError(kind)


def field(body: dict, key: str, kind: str, default=None):
    """body[key] checked to be of `kind` (null or missing -> default, as llama-server's json_value)."""
    value = body.get(key)
    if value is None:
        return default
    if not _is_kind(value, kind):
        raise invalid(f"'{key}' must be {_KIND_NAMES[kind]}, got {type(value).__name__} {_short(value)}")
    if kind == "float":
        value = float(value)
        if not math.isfinite(value):
            raise invalid(f"'{key}' must be a finite number")
    return value


def _short(value) -> str:
    s = repr(value)
    return s if len(s) <= 40 else s[:37] + "..."


# -- the sampler table ----------------------------------------------------------------------------------------
# (JSON field as llama-server reads it in params_from_json_cmpl, kind, SamplingParams attribute names to try).
# To support a new sampler: add its attribute to SamplingParams; rows for llama.cpp's fields are already here.

SAMPLER_FIELDS: list[tuple[str, str, tuple[str, ...]]] = [
    ("temperature", "float", ("temp", "temperature")),
    ("top_k", "int", ("top_k",)),
    ("top_p", "float", ("top_p",)),
    ("min_p", "float", ("min_p",)),
    ("typical_p", "float", ("typical_p", "typ_p")),
    ("repeat_penalty", "float", ("repeat_penalty", "penalty_repeat")),
    ("repeat_last_n", "int", ("repeat_last_n", "penalty_last_n")),
    ("frequency_penalty", "float", ("frequency_penalty", "penalty_freq")),
    ("presence_penalty", "float", ("presence_penalty", "penalty_present")),
    ("seed", "int", ("seed",)),
    ("min_keep", "int", ("min_keep",)),
    ("dynatemp_range", "float", ("dynatemp_range",)),
    ("dynatemp_exponent", "float", ("dynatemp_exponent",)),
    ("xtc_probability", "float", ("xtc_probability",)),
    ("xtc_threshold", "float", ("xtc_threshold",)),
    ("dry_multiplier", "float", ("dry_multiplier",)),
    ("dry_base", "float", ("dry_base",)),
    ("dry_allowed_length", "int", ("dry_allowed_length",)),
    ("dry_penalty_last_n", "int", ("dry_penalty_last_n",)),
    ("dry_sequence_breakers", "str_list", ("dry_sequence_breakers",)),
    ("mirostat", "int", ("mirostat",)),
    ("mirostat_tau", "float", ("mirostat_tau",)),
    ("mirostat_eta", "float", ("mirostat_eta",)),
    ("top_n_sigma", "float", ("top_n_sigma",)),
    ("grammar", "str", ("grammar",)),
]

# llama.cpp's --sampler-seq letters (common_sampler_types_from_chars) -> names (common_sampler_type_to_str)
SAMPLER_CHARS = {"e": "penalties", "d": "dry", "k": "top_k", "y": "typ_p", "p": "top_p", "m": "min_p",
                 "x": "xtc", "t": "temperature", "s": "top_n_sigma", "i": "infill"}

_PARAM_ATTRS = {f.name for f in dataclasses.fields(SamplingParams)}


def _attr_for(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        if name in _PARAM_ATTRS:
            return name
    return None


SUPPORTED_SAMPLER_FIELDS = {name: (kind, _attr_for(cands)) for name, kind, cands in SAMPLER_FIELDS}
NATIVE_FIELDS = {  # the other fields /completion reads (llama-server's params_from_json_cmpl and handlers)
    "prompt", "stream", "cache_prompt", "return_tokens", "n_predict", "max_tokens", "n_keep", "n_discard",
    "n_indent", "t_max_prompt_ms", "t_max_predict_ms", "response_fields", "n_probs", "post_sampling_probs",
    "id_slot", "ignore_eos", "logit_bias", "stop", "samplers", "model", "timings_per_token", "lora",
    "json_schema", "grammar_lazy", "grammar_triggers", "preserved_tokens", "chat_format",
    "speculative.n_min", "speculative.n_max", "speculative.p_min",
}


def sampling_params(body: dict, defaults: SamplingParams, n_vocab: int, tokenize) -> SamplingParams:
    """Request fields over the server's defaults. `tokenize(text) -> ids` resolves string logit_bias keys."""
    changes = {}
    for name, (kind, attr) in SUPPORTED_SAMPLER_FIELDS.items():
        value = field(body, name, kind)
        if value is not None and attr is not None:
            changes[attr] = value
    if "repeat_last_n" in body and changes.get(_attr_for(("repeat_last_n", "penalty_last_n")), 0) < -1:
        raise invalid("Error: repeat_last_n must be >= -1")
    if changes.get("dry_penalty_last_n", 0) < -1:
        raise invalid("Error: dry_penalty_last_n must be >= -1")
    if "dry_sequence_breakers" in changes and not changes["dry_sequence_breakers"]:
        raise invalid("Error: dry_sequence_breakers must be a non-empty array of strings")
    for key in ("top_p", "min_p", "typical_p"):
        v = body.get(key)
        if isinstance(v, (int, float)) and v < 0:
            raise invalid(f"'{key}' must be >= 0")
    bias = parse_logit_bias(body.get("logit_bias"), n_vocab, tokenize)
    if bias is not None and "logit_bias" in _PARAM_ATTRS:
        changes["logit_bias"] = bias
    samplers = body.get("samplers")
    if samplers is not None and "samplers" in _PARAM_ATTRS:
        changes["samplers"] = parse_samplers(samplers)
    params = dataclasses.replace(defaults, **changes)
    try:
        params.validate()
    except ValueError as e:
        raise invalid(str(e)) from None
    return params


def parse_samplers(value) -> list[str]:
    if isinstance(value, str):
        return [SAMPLER_CHARS[c] for c in value if c in SAMPLER_CHARS]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise invalid("'samplers' must be a list of sampler names or a string of sampler letters")


def parse_logit_bias(value, n_vocab: int, tokenize) -> dict[int, float] | None:
    """llama.cpp's [[token_or_text, bias_or_false], ...] or OpenAI's {"token_id": bias}."""
    if value is None:
        return None
    out: dict[int, float] = {}
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = []
        for el in value:
            if not (isinstance(el, list) and len(el) == 2):
                raise invalid("'logit_bias' entries must be [token, bias] pairs")
            items.append((el[0], el[1]))
    else:
        raise invalid("'logit_bias' must be an object {token_id: bias} or an array of [token, bias] pairs")
    for key, bias in items:
        if bias is False:
            bias = -math.inf
        elif isinstance(bias, bool) or not isinstance(bias, (int, float)):
            raise invalid(f"'logit_bias' value for {key!r} must be a number or false")
        if isinstance(key, str) and isinstance(value, dict):
            try:
                key = int(key)
            except ValueError:
                raise invalid(f"'logit_bias' key {key!r} is not a token id") from None
        if isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < n_vocab:
                raise invalid(f"'logit_bias' token id {key} is out of range [0, {n_vocab})")
            out[key] = float(bias)
        elif isinstance(key, str):
            for tok in tokenize(key):
                out[tok] = float(bias)
        else:
            raise invalid(f"'logit_bias' token {key!r} must be a token id or a string")
    return out


def parse_stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise invalid("'stop' must be a string or a list of strings")


def n_predict(body: dict, default: int) -> int:
    """n_predict, else max_tokens (max_completion_tokens on chat), else the server's -n."""
    for key in ("n_predict", "max_tokens", "max_completion_tokens"):
        v = field(body, key, "int")
        if v is not None:
            if v < -1:
                raise invalid(f"'{key}' must be >= -1")
            return v
    return default


# -- prompts --------------------------------------------------------------------------------------------------

def _is_token_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_mixed(value) -> bool:
    """llama-server's json_is_array_of_mixed_numbers_strings: strings AND ids (only strings = several prompts)."""
    return (isinstance(value, list) and any(isinstance(v, str) for v in value) and any(_is_int(v) for v in value)
            and all(isinstance(v, str) or _is_int(v) for v in value))


def tokenize_mixed(tokenizer, prompt, add_special: bool, parse_special: bool = True) -> list[int]:
    """llama-server's tokenize_mixed: a string, or a list of strings and ids (BOS only before a leading string)."""
    if isinstance(prompt, str):
        return tokenizer.tokenize(prompt.encode("utf-8"), add_bos=add_special, special=parse_special)
    out: list[int] = []
    for i, part in enumerate(prompt):
        if isinstance(part, str):
            out += tokenizer.tokenize(part.encode("utf-8"), add_bos=add_special and i == 0, special=parse_special)
        else:
            out.append(part)
    return out


def tokenize_input_prompts(tokenizer, prompt, add_special: bool = True) -> list[list[int]]:
    """llama-server's tokenize_input_prompts: one prompt (text / ids / mix) or a list of them."""
    if prompt is None:
        raise invalid("\"prompt\" is required")
    if isinstance(prompt, str) or _is_mixed(prompt):
        result = [tokenize_mixed(tokenizer, prompt, add_special)]
    elif _is_token_list(prompt):
        result = [list(prompt)]
    elif isinstance(prompt, list):
        result = []
        for p in prompt:
            if isinstance(p, str) or _is_mixed(p):
                result.append(tokenize_mixed(tokenizer, p, add_special))
            elif _is_token_list(p):
                result.append(list(p))
            else:
                raise invalid("element of \"prompt\" must be a string, an list of tokens, or a list of mixed "
                              "strings & tokens")
    else:
        raise invalid("\"prompt\" must be a string, an list of tokens, a list of mixed strings & tokens, or a "
                      "list of prompts")
    if not result:
        raise invalid("\"prompt\" must not be empty")
    for tokens in result:
        check_token_ids(tokens, tokenizer.n_vocab, "prompt")
    return result


def check_token_ids(tokens, n_vocab: int, where: str) -> None:
    for t in tokens:
        if not 0 <= t < n_vocab:
            raise invalid(f"'{where}' holds token id {t}, out of the vocabulary's range [0, {n_vocab})")


# -- OpenAI routes ---------------------------------------------------------------------------------------------

OAI_COMPLETION_FIELDS = {"model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs",
                         "max_tokens", "n", "presence_penalty", "seed", "stop", "stream", "stream_options",
                         "suffix", "temperature", "top_p", "user"}
OAI_CHAT_FIELDS = {"messages", "model", "audio", "frequency_penalty", "function_call", "functions", "logit_bias",
                   "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities", "n",
                   "parallel_tool_calls", "prediction", "presence_penalty", "reasoning_effort", "response_format",
                   "seed", "service_tier", "stop", "store", "stream", "stream_options", "temperature",
                   "tool_choice", "tools", "top_logprobs", "top_p", "user", "web_search_options",
                   "chat_template_kwargs"}
# llama.cpp's own fields are accepted on the OpenAI routes too (llama-server passes them through)
LLAMA_EXTRA_FIELDS = set(SUPPORTED_SAMPLER_FIELDS) | NATIVE_FIELDS


def check_oai_fields(body: dict, allowed: set[str]) -> None:
    """OpenAI answers an unknown request field with 400; so do we (llama.cpp's fields are known)."""
    for key in body:
        if key not in allowed and key not in LLAMA_EXTRA_FIELDS:
            raise invalid(f"Unrecognized request argument supplied: {key}")
    n = field(body, "n", "int", 1)
    if n != 1:
        raise invalid("Only one completion choice is allowed")
    field(body, "stream", "bool")
    field(body, "model", "str")
    field(body, "user", "str")
    opts = field(body, "stream_options", "object")
    if opts is not None:
        field(opts, "include_usage", "bool")


def include_usage(body: dict) -> bool:
    opts = body.get("stream_options") or {}
    return bool(opts.get("include_usage", False))


def oai_completion_n_probs(body: dict) -> int:
    """/v1/completions: `logprobs` is the number of top tokens (0..5 at OpenAI; llama.cpp allows more)."""
    for key in ("echo", "suffix", "best_of"):
        v = body.get(key)
        if v is None or v is False or (key == "best_of" and v == 1):
            continue
        raise invalid(f"Unsupported param: {key}")
    lp = field(body, "logprobs", "int")
    if lp is not None and lp < 0:
        raise invalid("'logprobs' must be >= 0")
    return lp or 0


def oai_chat_n_probs(body: dict) -> int:
    """/v1/chat/completions: `logprobs: true` with `top_logprobs` (default 20 as llama-server; 0 gives only the
    sampled token's log-probability)."""
    lp = field(body, "logprobs", "bool", False)
    top = field(body, "top_logprobs", "int")
    if top is not None and not lp:
        raise invalid("top_logprobs requires logprobs to be set to true")
    if top is not None and top < 0:
        raise invalid("'top_logprobs' must be >= 0")
    if not lp:
        return 0
    return 20 if top is None else top


def check_chat_unsupported(body: dict) -> None:
    tools = body.get("tools")
    if tools:
        raise invalid("tools are not supported by this server")
    if body.get("tool_choice") not in (None, "none", "auto"):
        raise invalid("Unsupported param: tool_choice")
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict):
            raise invalid("'response_format' must be an object")
        if rf.get("type", "text") != "text":
            raise invalid(f"response_format type {rf.get('type')!r} is not supported (only \"text\")")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array of {\"role\", \"content\"} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise invalid(f"messages[{i}] must be an object with a string 'role'")
        if "content" not in m:
            raise invalid(f"messages[{i}]: Missing 'content'")
        c = m["content"]
        if c is not None and not isinstance(c, (str, list)):
            raise invalid(f"messages[{i}]: Invalid 'content' type {type(c).__name__}")
