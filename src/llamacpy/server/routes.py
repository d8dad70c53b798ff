"""The HTTP routes of `llamacpy serve`, as llama-server b4748 registers them.

Owns: one handler per route (completion, OpenAI completion and chat, models, tokenize, detokenize,
apply-template, health, props, slots, metrics, embeddings) and reading a JSON body under the size cap.
Must not: hold state of its own (ServerState), build response shapes inline (responses.py), or validate fields
by hand where params.py has a rule.
"""

from __future__ import annotations

import base64
import json
import time

import numpy as np
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from . import generate as G
from . import params as P
from . import responses as R
from .errors import APIError, invalid
from .metrics import CONTENT_TYPE, make_registry, render


def json_response(data, status: int = 200) -> Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return Response(body, status_code=status, media_type="application/json; charset=utf-8")


async def read_json(request: Request, limit: int, want=dict):
    """The request body parsed as JSON; 413 past `limit` bytes, 400 if it is not JSON of the wanted type."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(f"request body too large (more than {limit} bytes)", "too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise invalid("request body is empty: expected a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"Failed to parse JSON: {e}") from None
    if want is not None and not isinstance(data, want):
        raise invalid(f"request body must be a JSON {'object' if want is dict else 'array'}")
    return data


def build_router(state) -> APIRouter:
    router = APIRouter()
    cfg = state.config
    registry = make_registry(state)

    async def body_of(request: Request) -> dict:
        return await read_json(request, cfg.max_body)

    def tokenize_fn(text: str) -> list[int]:
        return state.tokenizer.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def job_from(body: dict, prompt_tokens: list[int], n_probs: int | None = None) -> G.Job:
        params = P.sampling_params(body, cfg.sampling, state.tokenizer.n_vocab, tokenize_fn)
        if n_probs is None:
            n_probs = P.field(body, "n_probs", "int", 0)
            if n_probs < 0:
                raise invalid("'n_probs' must be >= 0")
        n_keep = P.field(body, "n_keep", "int", cfg.n_keep)
        if n_keep < -1:
            raise invalid("'n_keep' must be >= -1")
        id_slot = P.field(body, "id_slot", "int", -1)
        if id_slot >= cfg.n_parallel:
            raise invalid(f"'id_slot' {id_slot} is out of range: this server has {cfg.n_parallel} slots")
        return G.Job(prompt_tokens=prompt_tokens, n_predict=P.n_predict(body, cfg.n_predict), params=params,
                     stop=P.parse_stop(body), n_keep=n_keep, cache_prompt=P.field(body, "cache_prompt", "bool", True),
                     id_slot=id_slot, n_probs=n_probs, ignore_eos=P.field(body, "ignore_eos", "bool", False),
                     post_sampling_probs=P.field(body, "post_sampling_probs", "bool", False))

    def settings_of(job: G.Job, stream: bool) -> dict:
        return R.generation_settings(job.params, job.n_predict, job.n_keep, job.stop, stream, job.n_probs,
                                     job.ignore_eos, cfg.model_name)

    def detok(tokens) -> str:
        return state.tokenizer.detokenize(list(tokens), unparse_special=True).decode("utf-8", errors="replace")

    def refuse_if_embedding() -> None:
        if cfg.embedding:  # llama-server b4748: --embedding servers answer completions with 501
            raise APIError("This server does not support completions. Start it without `--embeddings`",
                           "not_supported")

    # -- llama.cpp's /completion ------------------------------------------------------------------------------
    async def completion(request: Request):
        body = await body_of(request)
        refuse_if_embedding()
        stream = P.field(body, "stream", "bool", False)
        return_tokens = P.field(body, "return_tokens", "bool", False)
        fields = P.field(body, "response_fields", "str_list")
        prompts = await run_in_threadpool(P.tokenize_input_prompts, state.tokenizer, body.get("prompt"), True)
        jobs = [job_from(body, p) for p in prompts]
        if stream:
            if len(jobs) != 1:
                raise invalid("streaming takes one prompt at a time")
            job = jobs[0]
            settings, text = settings_of(job, True), detok(job.prompt_tokens)
            return await G.stream(state, job, lambda b, c: G.native_chunks(state, b, c, job, 0, settings, text,
                                                                     return_tokens, fields))
        comps = await G.collect(state, request, jobs)
        out = [R.native_final(c, i, False, cfg.model_name, settings_of(j, False), detok(j.prompt_tokens),
                              return_tokens, fields) for i, (c, j) in enumerate(zip(comps, jobs))]
        return json_response(out[0] if len(out) == 1 else out)

    for path in ("/completion", "/completions"):
        router.add_api_route(path, completion, methods=["POST"])

    # -- OpenAI /v1/completions -------------------------------------------------------------------------------
    async def oai_completions(request: Request):
        body = await body_of(request)
        refuse_if_embedding()
        P.check_oai_fields(body, P.OAI_COMPLETION_FIELDS)
        n_probs = P.oai_completion_n_probs(body)
        if "n_probs" in body:
            n_probs = P.field(body, "n_probs", "int", 0)
        model = P.field(body, "model", "str") or cfg.model_name
        stream = P.field(body, "stream", "bool", False)
        prompts = await run_in_threadpool(P.tokenize_input_prompts, state.tokenizer, body.get("prompt"), True)
        jobs = [job_from(body, p, n_probs) for p in prompts]
        cid = R.completion_id("cmpl-")
        if stream:
            if len(jobs) != 1:
                raise invalid("streaming takes one prompt at a time")
            job = jobs[0]
            return await G.stream(state, job, lambda b, c: G.oai_completion_chunks(state, b, c, job, cid, model,
                                                                             P.include_usage(body)))
        comps = await G.collect(state, request, jobs)
        return json_response(R.oai_completion(comps, cid, model, n_probs > 0))

    router.add_api_route("/v1/completions", oai_completions, methods=["POST"])

    # -- OpenAI /v1/chat/completions --------------------------------------------------------------------------
    def chat_prompt(body: dict) -> str:
        from ..chat import ChatTemplateError

        P.check_chat_unsupported(body)
        try:
            return state.template.apply(body["messages"], add_generation_prompt=True)
        except ChatTemplateError as e:
            raise invalid(str(e)) from None

    def chat_tokens(text: str) -> list[int]:
        tok = state.tokenizer
        return tok.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    async def chat_completions(request: Request):
        refuse_if_embedding()  # before the body is read, as llama-server's chat handler
        body = await body_of(request)
        P.check_oai_fields(body, P.OAI_CHAT_FIELDS)
        n_probs = P.oai_chat_n_probs(body)
        if "n_probs" in body:
            n_probs = P.field(body, "n_probs", "int", 0)
        model = P.field(body, "model", "str") or cfg.model_name
        stream = P.field(body, "stream", "bool", False)
        text = chat_prompt(body)
        tokens = await run_in_threadpool(chat_tokens, text)
        job = job_from(body, tokens, n_probs)
        job.stop += [s for s in state.template.stop_strings if s not in job.stop]
        cid = R.completion_id("chatcmpl-")
        if stream:
            return await G.stream(state, job, lambda b, c: G.chat_chunks(state, b, c, job, cid, model,
                                                                   P.include_usage(body)))
        (c,) = await G.collect(state, request, [job])
        return json_response(R.chat_completion(c, cid, model, n_probs > 0))

    for path in ("/v1/chat/completions", "/chat/completions"):
        router.add_api_route(path, chat_completions, methods=["POST"])

    async def apply_template(request: Request):
        body = await body_of(request)
        return json_response({"prompt": chat_prompt(body)})

    router.add_api_route("/apply-template", apply_template, methods=["POST"])

    # -- models, health, props ------------------------------------------------------------------------------
    async def models(request: Request):
        return json_response({"object": "list", "data": [
            {"id": cfg.model_name, "object": "model", "created": int(time.time()), "owned_by": "llamacpp",
             "meta": state.model_meta}]})

    for path in ("/v1/models", "/models"):
        router.add_api_route(path, models, methods=["GET"])

    async def health(request: Request):
        return json_response({"status": "ok"})

    router.add_api_route("/health", health, methods=["GET"])
    router.add_api_route("/v1/health", health, methods=["GET"])

    async def props(request: Request):
        job = G.Job(prompt_tokens=[], n_predict=cfg.n_predict, params=cfg.sampling, stop=[], n_keep=cfg.n_keep)
        tok = state.tokenizer
        return json_response({
            "default_generation_settings": {"id": 0, "id_task": -1, "n_ctx": state.n_ctx_slot,
                                            "speculative": False, "is_processing": False, "non_causal": False,
                                            "params": settings_of(job, False), "prompt": ""},
            "total_slots": cfg.n_parallel,
            "model_path": cfg.model,
            "chat_template": state.template_source(),
            "bos_token": state.token_piece(tok.bos_id),
            "eos_token": state.token_piece(tok.eos_id),
            "build_info": _build_info(),
        })

    async def props_change(request: Request):
        if not cfg.endpoint_props:
            raise APIError("This server does not support changing global properties. Start it with `--props`",
                           "not_supported")
        await body_of(request)
        return json_response({"success": True})

    router.add_api_route("/props", props, methods=["GET"])
    router.add_api_route("/props", props_change, methods=["POST"])

    # -- slots, metrics -------------------------------------------------------------------------------------
    async def slots(request: Request):
        if not cfg.endpoint_slots:
            raise APIError("This server does not support slots endpoint. Start it with `--slots`", "not_supported")
        data = [slot_json(s) for s in await run_in_threadpool(state.engine.slots)]
        if "fail_on_no_slot" in request.query_params and not any(not s.get("is_processing") for s in data):
            raise APIError("no slot available", "unavailable")
        return json_response(data)

    def slot_json(s: dict) -> dict:
        """The engine's slot dict in llama-server's server_slot::to_json shape (engine extras kept)."""
        p = s.get("params") or {}
        out = {"id": s.get("id"), "id_task": s.get("id_task", -1), "n_ctx": s.get("n_ctx", state.n_ctx_slot),
               "speculative": False, "is_processing": bool(s.get("is_processing")), "non_causal": False}
        n_predict = p.get("n_predict", cfg.n_predict)
        n_decoded = s.get("n_decoded", 0)
        out["next_token"] = {"has_next_token": out["is_processing"], "has_new_line": False,
                             "n_remain": n_predict - n_decoded if n_predict >= 0 else -1, "n_decoded": n_decoded,
                             "stopping_word": ""}
        out["params"] = p
        for k in ("state", "n_prompt_tokens", "n_cached", "replica", "replica_served"):  # replica*: serve --ray
            if k in s:
                out[k] = s[k]
        return out

    router.add_api_route("/slots", slots, methods=["GET"])

    async def metrics(request: Request):
        if not cfg.endpoint_metrics:
            raise APIError("This server does not support metrics endpoint. Start it with `--metrics`",
                           "not_supported")
        text = await run_in_threadpool(render, registry)
        return Response(text, media_type=CONTENT_TYPE, headers={"Process-Start-Time-Unix": str(state.t_start)})

    router.add_api_route("/metrics", metrics, methods=["GET"])

    # -- tokenize / detokenize ------------------------------------------------------------------------------
    async def tokenize(request: Request):
        body = await body_of(request)
        add_special = P.field(body, "add_special", "bool", False)
        with_pieces = P.field(body, "with_pieces", "bool", False)
        content = body.get("content")
        if content is None:
            return json_response({"tokens": []})
        if not (isinstance(content, str) or (isinstance(content, list)
                                             and all(isinstance(v, str) or P._is_int(v) for v in content))):
            raise invalid("'content' must be a string or a list of strings and token ids")
        tokens = await run_in_threadpool(P.tokenize_mixed, state.tokenizer, content, add_special, True)
        P.check_token_ids(tokens, state.tokenizer.n_vocab, "content")
        if not with_pieces:
            return json_response({"tokens": tokens})
        out = []
        for t in tokens:
            piece = state.tokenizer.token_to_piece(t, special=True)
            try:
                p = piece.decode("utf-8")
            except UnicodeDecodeError:
                p = list(piece)  # llama-server: invalid UTF-8 pieces as their byte values
            out.append({"id": t, "piece": p})
        return json_response({"tokens": out})

    async def detokenize(request: Request):
        body = await body_of(request)
        tokens = body.get("tokens")
        if tokens is None:
            return json_response({"content": ""})
        if not P._is_token_list(tokens):
            raise invalid("'tokens' must be a list of token ids")
        P.check_token_ids(tokens, state.tokenizer.n_vocab, "tokens")
        raw = b"".join(state.tokenizer.token_to_piece(t, special=True) for t in tokens)  # tokens_to_str
        return json_response({"content": raw.decode("utf-8", errors="replace")})

    router.add_api_route("/tokenize", tokenize, methods=["POST"])
    router.add_api_route("/detokenize", detokenize, methods=["POST"])

    # -- embeddings -----------------------------------------------------------------------------------------
    async def embed_prompts(request: Request, oai: bool):
        if not cfg.embedding:
            raise APIError("This server does not support embeddings. Start it with `--embeddings`", "not_supported")
        body = await body_of(request)
        if "input" in body:
            prompt = body["input"]
        elif "content" in body:
            prompt, oai = body["content"], False
        else:
            raise invalid("\"input\" or \"content\" must be provided")
        fmt = P.field(body, "encoding_format", "str", "float")
        if fmt not in ("float", "base64"):
            raise invalid("The format to return the embeddings in. Can be either float or base64")
        prompts = await run_in_threadpool(P.tokenize_input_prompts, state.tokenizer, prompt, True)
        for p in prompts:
            if not p:
                raise invalid("Input content cannot be empty")
            if len(p) > state.n_ctx_slot:
                raise invalid(f"input is too large to process ({len(p)} tokens, slot context {state.n_ctx_slot})")
        if state.shutting_down:
            raise APIError("server is shutting down", "unavailable")
        vecs = []
        for p in prompts:
            from ..engine import InvalidRequest, QueueFull
            from ..errors import ContextError

            try:
                v = await run_in_threadpool(state.engine.embed, p)  # (n_embd,)
            except QueueFull as e:
                raise APIError(f"server busy: {e}", "unavailable") from None
            except (InvalidRequest, ContextError) as e:
                raise invalid(str(e)) from None
            vecs.append(np.asarray(v, dtype=np.float32))
        return body, prompts, vecs, oai, fmt

    async def embeddings_native(request: Request):
        body, prompts, vecs, oai, fmt = await embed_prompts(request, oai=False)
        return json_response([{"index": i, "embedding": [v.tolist()]} for i, v in enumerate(vecs)])

    async def embeddings_oai(request: Request):
        body, prompts, vecs, oai, fmt = await embed_prompts(request, oai=True)
        if not oai:
            return json_response([{"index": i, "embedding": [v.tolist()]} for i, v in enumerate(vecs)])
        data = []
        for i, v in enumerate(vecs):
            n = float(np.linalg.norm(v.astype(np.float64)))
            v = (v / n if n > 0 else v).astype(np.float32)  # L2-normalised, as OpenAI's embeddings are
            emb = base64.b64encode(v.tobytes()).decode("ascii") if fmt == "base64" else v.tolist()
            data.append({"embedding": emb, "index": i, "object": "embedding"})
        n_tok = sum(len(p) for p in prompts)
        return json_response({"model": P.field(body, "model", "str") or cfg.model_name, "object": "list",
                              "usage": {"prompt_tokens": n_tok, "total_tokens": n_tok}, "data": data})

    for path in ("/embedding", "/embeddings"):
        router.add_api_route(path, embeddings_native, methods=["POST"])
    router.add_api_route("/v1/embeddings", embeddings_oai, methods=["POST"])
    return router


def _build_info() -> str:
    from .. import __version__

    return f"llamacpy-{__version__}"
