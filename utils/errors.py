"""User-facing errors.

Anything the user can fix (a missing file, a bad flag combination, a file of the
wrong shape) is raised as `InputError` with one sentence naming the file or flag
and what was expected. `main.py` prints it as a single line and exits non-zero;
everything else is a bug and keeps its traceback.
"""
import sys


class InputError(Exception):
    """Bad input that the user can fix; the message names the file or flag."""


class NotSupportedError(InputError):
    """A flag or flag combination this implementation does not support."""


def run_cli(fn, *args, **kwargs):
    """Call fn; return the process exit code: fn's own integer result (0 when it returns None), 2
    for an InputError (printed as one `error:` line), 130 for Ctrl-C. Anything else is a bug and
    keeps its traceback."""
    try:
        rc = fn(*args, **kwargs)
    except NotSupportedError as exc:
        print(f"error: not supported: {exc}", file=sys.stderr)
        return 2
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return rc if isinstance(rc, int) else 0
