"""How every tool in this folder ends: ``sys.exit(run(main))``.

An error the user can fix (:class:`csgn_plugin.errors.UserError`: a misspelt key, a missing
dataset or checkpoint, a failed download...) ends the command with its message alone on stderr
and exit code 2 (argparse's code for bad arguments too); ``--debug`` anywhere on the command line
prints its traceback first. Any other exception is an internal error: Python prints its traceback
and the exit code is 1.

Importing this module imports nothing of the plugin, so a tool can parse its arguments (and
answer ``--help``) before torch is loaded; an error raised before the plugin was imported cannot
be a user error.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import Callable, Optional

USER_ERROR_EXIT = 2
DEBUG_FLAG = "--debug"
DEBUG_HELP = "on an error you can fix, show its traceback too"


def _is_user_error(exc: BaseException) -> bool:
    errors = sys.modules.get("csgn_plugin.errors")
    return errors is not None and isinstance(exc, errors.UserError)


def run(main: Callable[[list[str]], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """``main(arguments)`` without ``--debug``; its exit code (``None``: 0), or 2 after printing
    a user error's message (and, with ``--debug``, its traceback) on stderr."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in arguments
    try:
        code = main([a for a in arguments if a != DEBUG_FLAG])
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT
    return 0 if code is None else int(code)
