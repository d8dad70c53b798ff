"""Grammar-constrained generation: GBNF and JSON schemas as token masks (grammar.py), applied as llama.cpp's
common_sampler_sample applies them. The golden grammar cases (GBNF files, inline grammar, -j schemas, `{}`) are
in test_sampling_golden.py; this file covers errors, the end of a grammar, the API and a 128K vocabulary."""

import json
import subprocess
import sys

import numpy as np
import pytest

from llamacpy.errors import GrammarError
from llamacpy.grammar import Grammar, LlamaGrammar, gbnf_to_llguidance, json_schema_to_gbnf
from llamacpy.sampling import Sampler, SamplingParams
from shared import golden_dir, models_dir


@pytest.fixture(scope="module")
def stories_vocab():
    from llamacpy.gguf_file import GGUFFile
    from llamacpy.tokenizer import load_tokenizer

    path = models_dir() / "stories260K.gguf"
    return load_tokenizer(GGUFFile(path).metadata, str(path))


@pytest.mark.parametrize("gbnf, names", [
    ('root ::= "a" foo', "'foo'"),            # an undefined rule
    ('root ::= "a" (', "line 1"),              # a syntax error, with where it is
    ('item ::= "x"', "root"),                  # no root rule
    ('root ::= "\\q"', "\\q"),                 # a bad escape
])
def test_invalid_gbnf_is_one_clear_error(gbnf, names):
    with pytest.raises(GrammarError) as e:
        gbnf_to_llguidance(gbnf)
    assert names in str(e.value) and "\n" not in str(e.value)


def test_invalid_grammar_on_the_command_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "llamacpy", "run", "-m", str(models_dir() / "stories260K.gguf"),
                          "-p", "x", "-n", "4", "--grammar", 'root ::= "a" nosuchrule'], capture_output=True,
                         timeout=300)
    err = res.stderr.decode()
    assert res.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: invalid GBNF grammar") and "nosuchrule" in err


@pytest.mark.parametrize("schema, names", [
    ({"type": "integer", "minimum": 5, "maximum": 2}, "minimum 5"),
    ({"enum": []}, "empty enum"),
    ({"type": "object", "required": ["x"], "additionalProperties": False}, "['x']"),
    ({"type": "string", "minLength": 3, "maxLength": 1}, "maxLength"),
    ('{"type": ', "not valid JSON"),
])
def test_unsatisfiable_or_bad_schema(schema, names):
    with pytest.raises(GrammarError) as e:
        json_schema_to_gbnf(schema)
    assert names in str(e.value)


def test_schema_grammar_is_llama_cpps_layout():
    g = json_schema_to_gbnf((golden_dir() / "grammars" / "story-json.schema.json").read_text())
    assert g.splitlines()[0] == 'root ::= "{" space hero-kv "," space mood-kv "," space friends-kv "}" space'
    assert 'space ::= | " " | "\\n" [ \\t]{0,20}' in g.splitlines()


def _acceptor(vocab, gbnf):
    """text -> does the grammar accept exactly this text (fed byte by byte through the <0xNN> tokens)."""
    g = Grammar(gbnf, vocab)
    byte_token = {vocab.token_to_piece(i): i for i in range(3, 259)}  # stories260K: <0x00>..<0xFF>

    def accepts(text):
        g.reset()
        for b in text.encode():
            t = byte_token[bytes([b])]
            if not g.allows(t):
                return False
            g.accept(t)
        return g.allows(vocab.eos_id)

    return accepts


def test_integer_ranges_are_exact(stories_vocab):
    """minimum/maximum: every integer in range and none outside, without leading zeros; llama.cpp writes a range
    reaching below and above 0 as "-" (0..-min) | (0..max), so "-0" is in it."""
    accepts = _acceptor(stories_vocab, json_schema_to_gbnf({"type": "integer", "minimum": -12, "maximum": 107}))
    assert all(accepts(str(i)) for i in range(-12, 108)) and accepts("-0")
    assert not any(accepts(s) for s in ["-13", "108", "007", "1000", "-", "12x"])
    accepts = _acceptor(stories_vocab, json_schema_to_gbnf({"type": "integer", "maximum": -3}))
    assert accepts("-3") and accepts("-40") and not accepts("-2") and not accepts("-0")


def test_optional_properties_any_subset_in_order(stories_vocab):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"},
                                               "c": {"type": "null"}}, "required": ["a"]}
    accepts = _acceptor(stories_vocab, json_schema_to_gbnf(schema))
    assert all(accepts(s) for s in ['{"a":1}', '{"a":1,"c":null}', '{"a":1, "b":true,"c":null}'])
    assert not any(accepts(s) for s in ['{"b":true}', '{"a":1,"c":null,"b":true}', '{"a":1,"x":2}'])
    accepts = _acceptor(stories_vocab, json_schema_to_gbnf({**schema, "additionalProperties": True}))
    assert accepts('{"a":1,"x":[2, "y"]}') and accepts('{"a":1,"b":false,"x":{}}')


def test_a_finished_grammar_forces_eos(stories_vocab):
    g = Grammar('root ::= "yes."', stories_vocab)
    s = Sampler(SamplingParams(temp=0, grammar='root ::= "yes."'), stories_vocab.n_vocab, vocab=stories_vocab)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(20):
        tok = s.sample(rng.standard_normal(stories_vocab.n_vocab).astype(np.float32))
        s.accept(tok)
        out.append(tok)
        if tok == stories_vocab.eos_id:
            break
    assert stories_vocab.detokenize(out[:-1]) == b"yes." and out[-1] == stories_vocab.eos_id
    assert g.allows(stories_vocab.eos_id) is False  # a fresh grammar does not allow EOS before "yes."


def test_a_finished_grammar_with_ignore_eos_is_a_clear_error(stories_vocab):
    from llamacpy.errors import GrammarError

    s = Sampler(SamplingParams(temp=0, grammar='root ::= "no"', ignore_eos=True), stories_vocab.n_vocab,
                vocab=stories_vocab)
    with pytest.raises(GrammarError, match="ignore-eos"):
        for _ in range(10):
            s.accept(s.sample(np.zeros(stories_vocab.n_vocab, np.float32)))


def test_prompt_tokens_do_not_feed_the_grammar(stories_vocab):
    s = Sampler(SamplingParams(temp=0, grammar='root ::= "no"'), stories_vocab.n_vocab, vocab=stories_vocab)
    for t in stories_vocab.tokenize(b"Once upon a time", add_bos=True):
        s.accept(t)  # as Session.generate feeds the prompt: not grammar input (llama.cpp: accept_grammar false)
    tok = s.sample(np.zeros(stories_vocab.n_vocab, np.float32))
    assert stories_vocab.token_to_piece(tok) in (b"n", b"no")


def test_api_grammar_response_format_and_llama_grammar():
    from llamacpy import Llama

    llm = Llama(str(models_dir() / "stories260K.gguf"), verbose=False, seed=3)
    r = llm.create_completion("Once upon a time", max_tokens=20, grammar='root ::= "Tom" (" and " [A-Z][a-z]+)* "."')
    text = r["choices"][0]["text"]
    assert text.startswith("Tom") and text.endswith(".") and r["choices"][0]["finish_reason"] == "stop"
    g = LlamaGrammar.from_json_schema({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]})
    r = llm.create_completion("Once upon a time", max_tokens=30, grammar=g)
    assert json.loads(r["choices"][0]["text"]) in ({"ok": True}, {"ok": False})
    r = llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=60, chat_template="chatml",
                                   response_format={"type": "json_object", "schema": {"enum": ["a", "b"]}})
    assert json.loads(r["choices"][0]["message"]["content"]) in ("a", "b")
    with pytest.raises(GrammarError):
        LlamaGrammar.from_string('root ::= missing')
    assert LlamaGrammar.from_file(golden_dir() / "grammars" / "yesno.gbnf").grammar.startswith("root ::=")


def test_128k_vocabulary_schema_generation():
    """llama3-style-f16 (128256 tokens, 2 EOG ids): a schema-constrained completion is valid JSON of the schema."""
    from llamacpy import Llama

    llm = Llama(str(models_dir() / "llama3-style-f16.gguf"), verbose=False, seed=5, n_ctx=256)
    schema = json.loads((golden_dir() / "grammars" / "count-json.schema.json").read_text())
    r = llm.create_completion("The answer:", max_tokens=80, grammar=LlamaGrammar.from_json_schema(schema),
                              temperature=1.0)
    value = json.loads(r["choices"][0]["text"])
    assert set(value) == {"count", "ok"} and 0 <= value["count"] <= 99 and isinstance(value["ok"], bool)
    assert r["choices"][0]["finish_reason"] == "stop"
