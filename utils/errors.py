"""User-facing errors.

Anything the user can fix (a missing file, a bad flag combination, a file of the
wrong shape) is raised as `InputError` with one sentence naming the file or flag
and what was expected. `main.py` prints it as a single line and exits non-zero;
everything else is a bug and keeps its traceback.
"""


class InputError(Exception):
    """Bad input that the user can fix; the message names the file or flag."""


class NotSupportedError(InputError):
    """A flag or flag combination this implementation does not support."""


def require(condition, message):
    """Raise `InputError(message)` unless `condition` holds."""
    if not condition:
        raise InputError(message)
