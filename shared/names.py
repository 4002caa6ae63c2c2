"""One rule for every name that enters blobseal, and names made safe for a terminal (pure).

A file's name arrives four ways: ``X-File-Name`` of ``POST /api/files``, an ingest blob's name, the
``?name=`` of a lookup and the ``?prefix=`` of a listing. Each is the name of a blob (the upload's
own, or one it would be), so the rule is Azure Blob Storage's own, from "Naming and Referencing
Containers, Blobs, and Metadata" (learn.microsoft.com/rest/api/storageservices/naming-and-referencing-
containers--blobs--and-metadata):

- "A blob name must be at least one character long and cannot be more than 1,024 characters long";
- "The number of path segments comprising the blob name cannot exceed 254";
- control characters ("0x00-0x1F, \\u0081, etc.") "are also not allowed", nor code points that are
  "not valid Unicode characters" (such as \\uE000, private use): here every C0 and C1 control, DEL,
  surrogates, private use and noncharacters;
- "avoid blob names that end with a dot (.), a forward slash (/)": refused here (a listing prefix
  may end so);
- a segment that is ``.`` or ``..``: URLs resolve such "dot segments" (RFC 3986 5.2.4), so the name
  would not address its own blob (Azurite answers 403 for ``a/../b``; the SDK would write
  ``../evil.pdf`` outside the container's path).

And blobseal's own: no bidirectional controls (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F,
U+061C), which make a name read differently from what it is ("Trojan Source"), and no line or
paragraph separators (U+2028, U+2029). Every name the rule accepts fits a ``Content-Disposition``
that curl, wget and Python's ``http.client`` read (tests/e2e/test_clients.py).

``for_terminal`` escapes what a terminal would act on (the same characters, and the backslash) as
``\\xNN`` / ``\\uNNNN``, for the CLI's text output.
"""

from __future__ import annotations

import unicodedata

from shared.errors import InvalidNameError

__all__ = ["MAX_NAME_CHARS", "MAX_SEGMENTS", "NAME_RULE", "check_name", "check_prefix", "for_terminal",
           "name_problem"]

MAX_NAME_CHARS = 1024
MAX_SEGMENTS = 254
NAME_RULE = (f"a name is 1 to {MAX_NAME_CHARS} characters in at most {MAX_SEGMENTS} '/'-separated segments, with no "
             "control characters, bidirectional controls or invalid code points, no '.' or '..' segment, and does "
             "not end with '.' or '/'")

_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_SEPARATORS = frozenset("\u2028\u2029")


def _refused(ch: str) -> bool:
    code = ord(ch)
    if code < 0x20 or 0x7F <= code <= 0x9F or ch in _BIDI or ch in _SEPARATORS:
        return True
    if 0xD800 <= code <= 0xDFFF or 0xE000 <= code <= 0xF8FF or code >= 0xF0000:  # surrogates, private use
        return True
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE  # noncharacters


def name_problem(name: str, *, prefix: bool = False) -> str | None:
    """What is wrong with ``name`` under the rule (None: nothing); a ``prefix`` may be empty or end in '.' or '/'."""
    if not name:
        return None if prefix else "a name cannot be empty"
    if len(name) > MAX_NAME_CHARS:
        return f"a name is at most {MAX_NAME_CHARS} characters (this one has {len(name)})"
    segments = name.split("/")
    if len(segments) > MAX_SEGMENTS:
        return f"a name has at most {MAX_SEGMENTS} '/'-separated segments"
    whole = segments[:-1] if prefix else segments  # a prefix's last segment may go on (".hidden")
    if any(segment in (".", "..") for segment in whole):
        return "a name cannot have a '.' or '..' segment (URLs resolve them)"
    bad = next((ch for ch in name if _refused(ch)), None)
    if bad is not None:
        return f"a name cannot contain {_describe(bad)}"
    if not prefix and name.endswith((".", "/")):
        return "a name cannot end with '.' or '/'"
    return None


def check_name(name: str, operation: str, *, prefix: bool = False) -> str:
    """``name`` if the rule allows it, else ``InvalidNameError`` (400; permanent for an upload) naming the rule."""
    problem = name_problem(name, prefix=prefix)
    if problem is not None:
        raise InvalidNameError(f"{problem}: {NAME_RULE}", operation=operation)
    return name


def check_prefix(prefix: str, operation: str) -> str:
    return check_name(prefix, operation, prefix=True)


def _describe(ch: str) -> str:
    label = unicodedata.name(ch, "") or unicodedata.category(ch)
    return f"U+{ord(ch):04X} ({label})" if label else f"U+{ord(ch):04X}"


def for_terminal(text: str | None) -> str:
    """``text`` with every character a terminal would act on escaped (and the backslash, so it stays readable)."""
    if text is None:
        return "-"
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif _refused(ch):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}" if ord(ch) < 0x10000
                       else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return "".join(out)
