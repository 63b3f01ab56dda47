"""The errors a user can cause, and how every command line reports them: one line, exit status 2.

Every error that a flag, a file or a folder can cause derives from ``UserError``; its
message says what was wrong and what to do. ``run_cli`` turns one into ``error: ...`` on
stderr, so no command shows a traceback for bad input.

Example: ``python -c "from autoencoder.errors import run_cli, UserError; run_cli(lambda: (_ for _ in ()).throw(UserError('x')))"``
"""
from __future__ import annotations

import sys
from typing import Any, Callable


class UserError(Exception):
    """Bad input (a flag, a file, a folder); the message says what was wrong and what to do."""


def run_cli(call: Callable[[], Any], is_main: bool = True) -> Any:
    """Run a command's body; a UserError (or a recursion too deep to parse) becomes one line and exit 2.

    ``is_main``: under torchrun only rank 0 prints.
    """
    try:
        return call()
    except UserError as error:
        if is_main:
            print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
