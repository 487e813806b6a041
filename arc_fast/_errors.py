"""The CLI error contract shared by ``arc-fast`` and its sub-commands: one line, exit code 2, no traceback."""
from __future__ import annotations

import os
import sys


def report_error(prog: str, exc: BaseException, hint: str = "") -> int:
    """Print ``<prog>: error: <first line of exc><hint>`` to stderr and return 2.

    With ``ARC_FAST_DEBUG=1`` the exception is re-raised instead, traceback included. Call from an
    ``except`` block.
    """
    if os.environ.get("ARC_FAST_DEBUG") == "1":
        raise exc
    msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    print(f"{prog}: error: {msg}{hint}", file=sys.stderr)
    return 2
