"""Constrained generation: GBNF grammars and JSON schemas as token masks (llguidance computes the masks).

Owns: `Grammar` (one grammar's state over a vocabulary: `allows(token)`, `apply(candidates)` -- llama.cpp's
llama_grammar_apply_impl: a token is allowed iff its piece, as llama.cpp's piece cache renders it (control tokens
by their text), continues a string of the grammar's language; end-of-generation tokens only once the grammar is
complete -- `accept(token)`, `reset()`), `json_schema_to_gbnf` (the GBNF llama.cpp b4748's json-schema-to-grammar
writes for a schema: its `space` rule, key order, `char` class; the rules may be spelled differently but the
language is the same), `grammar_from_args` (--grammar / --grammar-file / -j), and `LlamaGrammar`
(llama-cpp-python's from_string / from_file / from_json_schema).
Must not: sample, or know about the sampler chain (sampling.Sampler applies a Grammar the way
common_sampler_sample does).
"""

from __future__ import annotations

import json
import os

import numpy as np

from .errors import GrammarError

# ---------------------------------------------------------------------------------------------------
# the grammar state over a vocabulary

_TOKENIZERS: dict[int, object] = {}  # id(vocab) -> (vocab, LLTokenizer): building one costs ~n_vocab piece calls


def _lltokenizer(vocab, n_vocab: int):
    key = id(vocab)
    hit = _TOKENIZERS.get(key)
    if hit is not None and hit[0] is vocab and hit[2] == n_vocab:
        return hit[1]
    from llguidance import LLTokenizer, TokenizerWrapper

    class _Wrap:
        def __init__(self):
            eos = vocab.eos_id if vocab.eos_id is not None else min(vocab.eog_ids, default=0)
            self.eos_token_id = eos
            self.bos_token_id = vocab.bos_id
            # llama.cpp's grammar sees token_to_piece(id, special=true): control tokens by their text
            self.tokens = [vocab.token_to_piece(i, True) for i in range(vocab.n_vocab)]
            self.tokens += [b""] * (n_vocab - vocab.n_vocab)  # padding rows of the output matrix: never allowed
            self.special_token_ids = []

        def __call__(self, data):
            return vocab.tokenize(data if isinstance(data, bytes) else data.encode("utf-8"), add_bos=False,
                                  special=False)

    eog = sorted(vocab.eog_ids) or [_Wrap().eos_token_id]
    tok = LLTokenizer(TokenizerWrapper(_Wrap()), n_vocab=n_vocab, eos_token=eog)
    _TOKENIZERS[key] = (vocab, tok, n_vocab)
    return tok


def gbnf_to_llguidance(gbnf: str) -> str:
    """GBNF text -> llguidance's grammar; a bad grammar is one GrammarError naming the problem."""
    from llguidance import LLMatcher, grammar_from

    try:
        g = grammar_from("gbnf", gbnf)
    except Exception as e:  # the converter raises ValueError / Exception with a message
        msg = str(e).replace("Failed to convert the grammar from GBNF to Lark: ", "")
        raise GrammarError("invalid GBNF grammar: " + " ".join(msg.split())) from None
    err = LLMatcher.validate_grammar(g)
    if err:
        raise GrammarError(f"invalid GBNF grammar: {err.strip().splitlines()[0]}")
    return g


class Grammar:
    def __init__(self, gbnf: str, vocab, n_vocab: int | None = None):
        from llguidance import LLMatcher

        self.gbnf = gbnf
        self.vocab = vocab
        self.n_vocab = int(n_vocab or vocab.n_vocab)
        self._compiled = gbnf_to_llguidance(gbnf)
        self._tok = _lltokenizer(vocab, self.n_vocab)
        self._matcher_cls = LLMatcher
        self.eog = np.array(sorted(vocab.eog_ids), dtype=np.int64)
        first = np.full(self.n_vocab, -1, np.int64)  # first byte of each piece (-1: empty)
        for i in range(vocab.n_vocab):
            piece = vocab.token_to_piece(i, True)
            if piece:
                first[i] = piece[0]
        self._by_first_byte = [np.nonzero(first == b)[0].tolist() for b in range(256)]
        self.reset()

    def reset(self) -> None:
        if getattr(self, "matcher", None) is not None and self.matcher.reset():
            self._mask = None  # the same matcher, back at the start (keeps llguidance's caches)
            return
        self.matcher = self._matcher_cls(self._tok, self._compiled, log_level=0)
        if self.matcher.is_error():
            raise GrammarError(f"invalid grammar: {self.matcher.get_error()}")
        self._mask: np.ndarray | None = None

    def mask(self) -> np.ndarray:
        """(n_vocab,) bool: the tokens the grammar allows next (cached until the next accept)."""
        if self._mask is None:
            words = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
            m = np.unpackbits(words, bitorder="little")[: self.n_vocab].astype(bool)
            forced = self.matcher.compute_ff_bytes()
            if forced:  # llguidance then allows only its own tokenization of the forced bytes; llama.cpp allows
                m[:] = False  # every token whose piece continues them: check those starting with the next byte
                for t in self._by_first_byte[forced[0]]:
                    m[t] = self.matcher.validate_tokens([t]) == 1
            if self.matcher.is_error():
                m[:] = False
            if len(self.eog):  # EOG only when the grammar can end here (llguidance already says so for EOS)
                m[self.eog] = self.matcher.is_accepting() or self.matcher.is_stopped()
            self._mask = m
        return self._mask

    def allows(self, token: int) -> bool:
        return bool(self.mask()[int(token)])

    def apply(self, cur) -> None:
        """Set the logits of disallowed candidates to -inf (cur: sampling.Candidates)."""
        bad = ~self.mask()[cur.ids]
        cur.logit = np.where(bad, np.float32(-np.inf), cur.logit).astype(np.float32)

    def accept(self, token: int) -> None:
        token = int(token)
        self._mask = None
        if token in self.vocab.eog_ids:
            return
        if not self.matcher.consume_token(token):
            raise GrammarError(f"token {token} ({self.vocab.token_to_piece(token)!r}) does not continue the grammar")

    def is_complete(self) -> bool:
        return self.matcher.is_stopped()

    def forced_end_token(self) -> int:
        """The token that ends generation when nothing can continue the grammar: EOS."""
        if self.vocab.eos_id is not None:
            return int(self.vocab.eos_id)
        if len(self.eog):
            return int(self.eog[0])
        raise GrammarError("the grammar cannot continue and the vocabulary has no end-of-generation token")


# ---------------------------------------------------------------------------------------------------
# JSON schema -> GBNF (the language of llama.cpp b4748's json-schema-to-grammar)

SPACE = '| " " | "\\n" [ \\t]{0,20}'  # b4748 (later versions allow two newlines)
PRIMITIVES = {
    "boolean": ('("true" | "false") space', []),
    "decimal-part": ("[0-9]{1,16}", []),
    "integral-part": ("[0] | [1-9] [0-9]{0,15}", []),
    "number": ('("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)? space',
               ["integral-part", "decimal-part"]),
    "integer": ('("-"? integral-part) space', ["integral-part"]),
    "value": ("object | array | string | number | boolean | null",
              ["object", "array", "string", "number", "boolean", "null"]),
    "object": ('"{" space ( string ":" space value ("," space string ":" space value)* )? "}" space',
               ["string", "value"]),
    "array": ('"[" space ( value ("," space value)* )? "]" space', ["value"]),
    "char": ('[^"\\\\\\x7F\\x00-\\x1F] | [\\\\] (["\\\\bfnrt] | "u" [0-9a-fA-F]{4})', []),
    "string": ('"\\"" char* "\\"" space', ["char"]),
    "null": ('"null" space', []),
}


def _literal(s: str) -> str:
    out = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{out}"'


def _repeat(item: str, lo: int, hi: int | None, sep: str = "") -> str:
    """build_repetition: item{lo,hi} with an optional separator between items (hi None = unbounded)."""
    if hi == 0:
        return ""
    if lo == 0 and hi == 1:
        return f"{item}?"
    if not sep:
        if lo == 1 and hi is None:
            return f"{item}+"
        if lo == 0 and hi is None:
            return f"{item}*"
        return f"{item}{{{lo},{'' if hi is None else hi}}}"
    rest = _repeat(f"({sep} {item})", max(lo - 1, 0), None if hi is None else hi - 1)
    out = f"{item} {rest}".strip()
    return f"({out})?" if lo == 0 else out


def _int_range(lo: int | None, hi: int | None) -> str:
    """GBNF for the integers in [lo, hi] written as JSON writes them (no leading zeros, at most 16 digits on an
    open side, as llama.cpp's integral-part)."""
    if lo is not None and hi is not None and lo > hi:
        raise GrammarError(f"JSON schema: integer minimum {lo} is greater than maximum {hi}")
    parts = []
    if hi is None or hi >= 0:  # non-negative part
        a = max(lo, 0) if lo is not None else 0
        b = hi if hi is not None else 10**16 - 1
        if a <= b:
            parts.append(_uint_range(a, b))
    if lo is None or lo < 0:  # negative part: "-" x for x in [a, b]; llama.cpp writes "-" (0..-lo) when the
        # range also reaches 0, so "-0" is allowed there, but not with a maximum alone ("-" [1-9] ...)
        if lo is None:
            a = -hi if hi is not None and hi < 0 else 1
        else:
            a = 0 if hi is None or hi >= 0 else -hi
        b = -lo if lo is not None else 10**16 - 1
        if a <= b:
            parts.append(f'"-" ({_uint_range(a, b)})')
    return " | ".join(f"({p})" for p in parts)


def _uint_range(a: int, b: int) -> str:
    """Non-negative integers a..b without leading zeros, as alternatives of digit classes."""
    alts = []
    for n_digits in range(len(str(a)), len(str(b)) + 1):
        lo = max(a, 10 ** (n_digits - 1) if n_digits > 1 else 0)
        hi = min(b, 10**n_digits - 1)
        if lo <= hi:
            alts += _same_length(str(lo), str(hi))
    return " | ".join(alts)


def _same_length(lo: str, hi: str) -> list[str]:
    """Digit strings of one length between lo and hi (inclusive) as GBNF sequences of digit classes."""
    if not lo:
        return [""]
    if lo == hi:
        return [_literal(lo)]
    if lo[0] == hi[0]:
        return [f'"{lo[0]}" ({" | ".join(_same_length(lo[1:], hi[1:]))})']
    n = len(lo) - 1
    out = []
    if lo[1:] == "0" * n:
        first = int(lo[0])
    else:
        out += [f'"{lo[0]}" ({" | ".join(_same_length(lo[1:], "9" * n))})']
        first = int(lo[0]) + 1
    last = int(hi[0]) if hi[1:] == "9" * n else int(hi[0]) - 1
    if first <= last:
        out.append(f"[{first}-{last}]" + (f" [0-9]{{{n}}}" if n else ""))
    if hi[1:] != "9" * n:
        out.append(f'"{hi[0]}" ({" | ".join(_same_length("0" * n, hi[1:]))})')
    return out


class _SchemaConverter:
    def __init__(self, root_schema):
        self.rules: dict[str, str] = {"space": SPACE}
        self.root_schema = root_schema

    def _name(self, name: str) -> str:
        base = "".join(c if c.isalnum() or c == "-" else "-" for c in name) or "r"
        return base

    def add(self, name: str, body: str) -> str:
        name = self._name(name)
        key, i = name, 0
        while key in self.rules and self.rules[key] != body:
            i += 1
            key = f"{name}{i}"
        self.rules[key] = body
        return key

    def primitive(self, name: str) -> str:
        body, deps = PRIMITIVES[name]
        self.rules[name] = body
        for d in deps:
            if d not in self.rules:
                self.primitive(d)
        return name

    def resolve_ref(self, ref: str):
        if not ref.startswith("#"):
            raise GrammarError(f"JSON schema: only local $ref are supported, got {ref!r}")
        node = self.root_schema
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise GrammarError(f"JSON schema: $ref {ref!r} points nowhere")
            node = node[part]
        return node

    def visit(self, schema, name: str, depth: int = 0) -> str:
        if depth > 64:
            raise GrammarError("JSON schema: nesting too deep (recursive $ref?)")
        if schema is True or schema == {}:  # llama.cpp: an empty schema is any JSON object
            return self.add(name, self.primitive("object"))
        if schema is False:
            raise GrammarError("JSON schema: `false` matches nothing (unsatisfiable)")
        if not isinstance(schema, dict):
            raise GrammarError(f"JSON schema at {name!r}: expected an object, got {type(schema).__name__}")
        if "$ref" in schema:
            return self.visit(self.resolve_ref(schema["$ref"]), name, depth + 1)
        for key in ("oneOf", "anyOf"):
            if key in schema:
                alts = [self.visit(s, f"{name}-{i}", depth + 1) for i, s in enumerate(schema[key])]
                if not alts:
                    raise GrammarError(f"JSON schema at {name!r}: empty {key} (unsatisfiable)")
                return self.add(name, " | ".join(alts))
        if "allOf" in schema:
            raise GrammarError(f"JSON schema at {name!r}: allOf is not supported")
        if "const" in schema:
            return self.add(name, f"{_literal(json.dumps(schema['const']))} space")
        if "enum" in schema:
            if not schema["enum"]:
                raise GrammarError(f"JSON schema at {name!r}: empty enum (unsatisfiable)")
            alts = " | ".join(_literal(json.dumps(v)) for v in schema["enum"])
            return self.add(name, f"({alts}) space")
        t = schema.get("type")
        if isinstance(t, list):
            alts = [self.visit({**schema, "type": tt}, f"{name}-{tt}", depth + 1) for tt in t]
            if not alts:
                raise GrammarError(f"JSON schema at {name!r}: empty type list (unsatisfiable)")
            return self.add(name, " | ".join(alts))
        if t is None and ("properties" in schema or "additionalProperties" in schema):
            t = "object"
        if t == "object":
            return self.add(name, self.object_rule(schema, name, depth))
        if t == "array":
            return self.add(name, self.array_rule(schema, name, depth))
        if t == "string":
            if "pattern" in schema or "format" in schema:
                raise GrammarError(f"JSON schema at {name!r}: string pattern/format are not supported")
            lo, hi = int(schema.get("minLength", 0)), schema.get("maxLength")
            if hi is not None and int(hi) < lo:
                raise GrammarError(f"JSON schema at {name!r}: maxLength {hi} < minLength {lo} (unsatisfiable)")
            if lo == 0 and hi is None:
                return self.add(name, self.primitive("string")) if name != "string" else "string"
            ch = self.primitive("char")
            return self.add(name, f'"\\"" {_repeat(ch, lo, None if hi is None else int(hi))} "\\"" space')
        if t == "integer":
            lo = schema.get("minimum")
            hi = schema.get("maximum")
            if "exclusiveMinimum" in schema:
                lo = int(schema["exclusiveMinimum"]) + 1
            if "exclusiveMaximum" in schema:
                hi = int(schema["exclusiveMaximum"]) - 1
            if lo is None and hi is None:
                return self.add(name, self.primitive("integer"))
            lo = None if lo is None else int(np.ceil(lo))
            hi = None if hi is None else int(np.floor(hi))
            return self.add(name, f"({_int_range(lo, hi)}) space")
        if t in ("number", "boolean", "null"):
            return self.add(name, self.primitive(t))
        if t is None:
            return self.add(name, self.primitive("value"))
        raise GrammarError(f"JSON schema at {name!r}: unknown type {t!r}")

    def object_rule(self, schema, name, depth) -> str:
        props = schema.get("properties", {}) or {}
        required = set(schema.get("required", []))
        missing = required - set(props)
        add_props = schema.get("additionalProperties")
        if missing and add_props is False:
            raise GrammarError(f"JSON schema at {name!r}: required {sorted(missing)} not in properties (unsatisfiable)")
        kv = {}
        for key, sub in props.items():
            value = self.visit(sub, f"{name}-{key}" if name != "root" else key, depth + 1)
            kv[key] = self.add(f"{name}-{key}-kv" if name != "root" else f"{key}-kv",
                               f"{_literal(json.dumps(key))} space \":\" space {value}")
        req = [k for k in props if k in required]
        opt = [k for k in props if k not in required]
        if isinstance(add_props, dict) or add_props is True:
            value = (self.visit(add_props, f"{name}-additional-value", depth + 1) if isinstance(add_props, dict)
                     else self.primitive("value"))  # llama.cpp: any value (its key rule also excludes the named keys)
            s = self.primitive("string")
            kv["*"] = self.add(f"{name}-additional-kv", f"{s} \":\" space {value}")
            opt.append("*")
        body = '"{" space '
        body += ' "," space '.join(kv[k] for k in req)
        if opt:
            def chain(ks, first_optional):
                """The first of ks (required unless first_optional), then each later one optionally, in order."""
                k, rule = ks[0], kv[ks[0]]
                comma = f'( "," space {rule} )'
                if first_optional:
                    res = comma + ("*" if k == "*" else "?")
                else:
                    res = rule + (f" {comma}*" if k == "*" else "")
                return res + (" " + chain(ks[1:], True) if len(ks) > 1 else "")

            alts = " | ".join(f"( {chain(opt[i:], False)} )" for i in range(len(opt)))
            body += f' ( "," space ( {alts} ) )?' if req else f" ( {alts} )?"
        return body + ' "}" space'

    def array_rule(self, schema, name, depth) -> str:
        lo, hi = int(schema.get("minItems", 0)), schema.get("maxItems")
        hi = None if hi is None else int(hi)
        if hi is not None and hi < lo:
            raise GrammarError(f"JSON schema at {name!r}: maxItems {hi} < minItems {lo} (unsatisfiable)")
        items = schema.get("items", {})
        if isinstance(items, list) or "prefixItems" in schema:
            seq = items if isinstance(items, list) else schema["prefixItems"]
            parts = [self.visit(s, f"{name}-{i}", depth + 1) for i, s in enumerate(seq)]
            return '"[" space ' + ' "," space '.join(parts) + ' "]" space'
        item = self.visit(items, f"{name}-item", depth + 1)
        return f'"[" space {_repeat(item, lo, hi, chr(34) + "," + chr(34) + " space")} "]" space'

    def grammar(self) -> str:
        return "\n".join(f"{k} ::= {v}" for k, v in [("root", self.rules.pop("root"))] + sorted(self.rules.items()))


def json_schema_to_gbnf(schema) -> str:
    """A JSON schema (dict, or JSON text) -> GBNF with llama.cpp's whitespace and layout rules."""
    if isinstance(schema, (str, bytes)):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise GrammarError(f"JSON schema is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    conv = _SchemaConverter(schema)
    conv.visit(schema, "root")
    return conv.grammar()


# ---------------------------------------------------------------------------------------------------
# front ends

def grammar_from_args(grammar: str | None, grammar_file: str | None, json_schema: str | None) -> str | None:
    """--grammar / --grammar-file / -j (the last one wins in llama.cpp; here at most one may be given)."""
    given = [x for x in (grammar, grammar_file, json_schema) if x is not None]
    if len(given) > 1:
        raise GrammarError("give only one of --grammar, --grammar-file and -j/--json-schema")
    if grammar_file is not None:
        try:
            with open(grammar_file, "rb") as f:
                grammar = f.read().decode("utf-8")
        except OSError as e:
            raise GrammarError(f"cannot read grammar file {grammar_file!r}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise GrammarError(f"grammar file {grammar_file!r} is not valid UTF-8") from None
    if json_schema is not None:
        grammar = json_schema_to_gbnf(json_schema)
    if grammar is not None:
        gbnf_to_llguidance(grammar)  # a bad grammar fails here, before the model loads
    return grammar


class LlamaGrammar:
    """llama-cpp-python's LlamaGrammar: holds GBNF text (pass it, or its `.grammar`, as `grammar=`)."""

    def __init__(self, grammar: str):
        gbnf_to_llguidance(grammar)
        self.grammar = grammar

    @classmethod
    def from_string(cls, grammar: str, verbose: bool = True) -> "LlamaGrammar":
        return cls(grammar)

    @classmethod
    def from_file(cls, file: str | os.PathLike, verbose: bool = True) -> "LlamaGrammar":
        return cls(grammar_from_args(None, os.fspath(file), None))

    @classmethod
    def from_json_schema(cls, json_schema: str | dict, verbose: bool = True) -> "LlamaGrammar":
        return cls(json_schema_to_gbnf(json_schema))

    def __str__(self) -> str:
        return self.grammar
