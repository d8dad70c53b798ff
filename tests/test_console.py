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
