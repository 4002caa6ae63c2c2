"""The one name rule (``shared.names``): what Azure Blob Storage allows in a blob name, without what makes a
name lie on a terminal; and names escaped for the CLI's text output."""

from __future__ import annotations

import pytest

from shared.errors import InvalidNameError
from shared.names import MAX_NAME_CHARS, check_name, check_prefix, for_terminal, name_problem

GOOD = ["report.pdf", "tenant-1/2026/q3 report (final).pdf", "日本語のファイル.txt", "ümlaut/ñ/€.bin",
        "a" * MAX_NAME_CHARS, "emoji 📄.pdf", "/".join(["d"] * 253) + "/f", "back\\slash.txt", "percent%20.txt",
        "..hidden/x..y/.z"]
BAD = {"": "empty", "a" * (MAX_NAME_CHARS + 1): "at most 1024", "a\x00b": "U+0000", "tab\there": "U+0009",
       "new\nline": "U+000A", "cr\rreturn": "U+000D", "esc\x1b[31m.txt": "U+001B", "del\x7f": "U+007F",
       "c1\x85": "U+0085", "c1\x9b31m": "U+009B", "evil\u202etxt.exe": "U+202E", "iso\u2066x": "U+2066",
       "mark\u200f": "U+200F", "arabic\u061cmark": "U+061C", "line\u2028sep": "U+2028", "private\ue000": "U+E000",
       "nonchar\ufffe": "U+FFFE", "nonchar\ufdd0": "U+FDD0", "dot.": "end with", "slash/": "end with",
       "/".join(["d"] * 255): "254", "../up.txt": "'..' segment", "a/./b": "'.' or '..'", "a/..": "segment"}


@pytest.mark.parametrize("name", GOOD)
def test_names_azure_allows_are_accepted(name: str) -> None:
    assert check_name(name, "test") == name


@pytest.mark.parametrize("name,why", BAD.items(), ids=[repr(n[:20]) for n in BAD])
def test_names_outside_the_rule_are_refused_saying_why(name: str, why: str) -> None:
    with pytest.raises(InvalidNameError) as caught:
        check_name(name, "test")
    assert why in caught.value.message and "1 to 1024 characters" in caught.value.message


def test_a_prefix_may_be_empty_or_end_with_a_slash_but_follows_the_rest() -> None:
    assert check_prefix("", "t") == "" and check_prefix("reports/", "t") == "reports/"
    assert name_problem("v1.", prefix=True) is None and name_problem("reports/..", prefix=True) is None
    assert name_problem("reports/../", prefix=True) is not None
    with pytest.raises(InvalidNameError):
        check_prefix("x\x1b", "t")


def test_terminal_output_escapes_whatever_a_terminal_would_act_on() -> None:
    assert for_terminal("q3\x1b[2J\x07.pdf") == "q3\\x1b[2J\\x07.pdf"
    assert for_terminal("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert for_terminal("a\\x1b") == "a\\\\x1b"  # a literal backslash cannot pass for an escape
    assert for_terminal("日本語 ok") == "日本語 ok" and for_terminal(None) == "-"
    assert all(ch.isprintable() for ch in for_terminal("".join(map(chr, range(0x00, 0xA0)))))
