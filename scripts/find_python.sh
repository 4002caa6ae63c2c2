#!/bin/sh
# Prints the Python 3.13 interpreter `make` builds .venv with: python3.13 on PATH, else the newest 3.13
# that pyenv installed ($(pyenv root), $PYENV_ROOT or ~/.pyenv). A candidate counts only if it runs and is
# 3.13 (pyenv's shim for python3.13 exists even where it would refuse to run). Nothing found: exit 1.
is_313() { [ -x "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; }
candidate=$(command -v python3.13 2>/dev/null) && is_313 "$candidate" && { echo "$candidate"; exit 0; }
for root in "$(pyenv root 2>/dev/null)" "${PYENV_ROOT:-}" "$HOME/.pyenv"; do
    [ -n "$root" ] || continue
    for candidate in $(ls -d "$root"/versions/3.13*/bin/python3.13 2>/dev/null | sort -V -r); do
        is_313 "$candidate" && { echo "$candidate"; exit 0; }
    done
done
exit 1
