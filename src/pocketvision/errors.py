"""One error type for everything a user can get wrong.

The CLI prints ``PocketVisionError`` as a single line and exits non-zero; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PocketVisionError(Exception):
    """A user-facing problem: the message names the file/field and says what to do."""


class ImageDecodeError(PocketVisionError):
    """An image file could not be read (missing, truncated, not an image)."""


class BundleError(PocketVisionError):
    """A bundle is missing, corrupt, tampered with or from a newer schema."""


def did_you_mean(value: str, options: Iterable[str]) -> str:
    """' Did you mean "x"?' when something close exists; we suggest, never apply: a guess applied silently would train on the wrong thing."""
    close = difflib.get_close_matches(value, list(options), n=1)
    return f' Did you mean "{close[0]}"?' if close else ""


def unknown_choice(field: str, value: str, options: Iterable[str]) -> PocketVisionError:
    options = sorted(options)
    return PocketVisionError(
        f"Unrecognized {field}={value!r}. Supported: {', '.join(options)}.{did_you_mean(value, options)}"
    )
