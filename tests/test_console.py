"""Typed-input line handling of the interactive console (llama.cpp's console::readline semantics)."""

import io
import sys

import pytest

from llamacpy.interactive import Console, InputError


def read_all(data: bytes, multiline: bool) -> list[str]:
    console = Console(io.BytesIO(), io.BytesIO(data), sys.stderr, color=False, multiline=multiline)
    out = []
    while (text := console.read_input()) is not None:
        out.append(text)
    return out


def test_trailing_backslash_continues_one_line():
    assert read_all(b"first\\\nsecond\nthird\n", multiline=False) == ["first\nsecond\n", "third\n"]


def test_multiline_mode_continues_until_slash_or_backslash():
    assert read_all(b"a\nb\\\nc\nd/\n", multiline=True) == ["a\nb\n", "c\nd\n"]


def test_crlf_and_missing_final_newline():
    assert read_all(b"hello\r\nbye", multiline=False) == ["hello\n", "bye\n"]


def test_invalid_utf8_is_reported_not_raised_deep():
    console = Console(io.BytesIO(), io.BytesIO(b"\xff\xfe\n"), sys.stderr, color=False)
    with pytest.raises(InputError, match="not valid UTF-8"):
        console.read_input()


def test_line_editing_reads_through_input_with_the_colour_as_prompt(monkeypatch):
    """On a terminal, lines come from input() (readline: editing, history); the input colour is its prompt, so the
    terminal is in readline's mode before the person sees that it is their turn."""
    from llamacpy.interactive import COLOR_DEFAULT, COLOR_USER

    prompts, lines = [], iter(["first\\", "second", "third"])

    def fake_input(prompt=""):
        prompts.append(prompt)
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    out = io.BytesIO()
    console = Console(out, io.BytesIO(), sys.stderr, color=True, line_editing=True)
    assert console.line_editing
    console.set_color(COLOR_USER)
    assert out.getvalue() == b""  # held for readline
    assert console.read_input() == "first\nsecond\n"
    assert prompts == [f"\001{COLOR_USER}\002", ""]
    console.set_color(COLOR_DEFAULT)
    assert out.getvalue() == COLOR_DEFAULT.encode()
    assert console.read_input() == "third\n" and console.read_input() is None
