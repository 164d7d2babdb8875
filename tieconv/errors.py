"""Every error tieconv raises on purpose is a `TieconvError`.

The CLI turns these into exit code 2 and one line on stderr; anything else that
escapes is a bug (exit code 70).  Messages name the file or key and say what to do.
"""

from __future__ import annotations


import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class TieconvError(Exception):
    """Base class: bad input, a refusal, or a failed verification (exit code 2).

    Messages often quote names taken from files (keys, shard names); control characters in them
    are escaped so a message is always one printable line.
    """

    exit_code = 2

    def __init__(self, message: str = "", *args: object) -> None:
        message = _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(message))
        super().__init__(message, *args)


class InputError(TieconvError):
    """The input is missing, unreadable, or not a checkpoint tieconv can read."""


class CorruptFileError(InputError):
    """A file is truncated, malformed or violates its format's rules."""


class UnsafePickleError(InputError):
    """A pickle needs arbitrary code to load; it is refused, never executed."""


class UnsupportedCheckpointError(InputError):
    """A checkpoint tieconv recognises but cannot act on (PEFT adapter, quantized tensors)."""


class RefusedError(TieconvError):
    """A conversion that would change the model's outputs or lose data without consent."""


class OutputError(TieconvError):
    """The output cannot be written (exists, no space, file too large, locked)."""


class VerificationError(TieconvError):
    """A written output did not verify against its plan."""


class TieMapError(TieconvError):
    """A load hook cannot tell a module's embedding and head apart, or a state dict holds two different matrices."""
