"""Every error tieconv raises on purpose is a `TieconvError`.

The CLI turns these into exit code 2 and one line on stderr; anything else that
escapes is a bug (exit code 70).  Messages name the file or key and say what to do.
"""

from __future__ import annotations


class TieconvError(Exception):
    """Base class: bad input, a refusal, or a failed verification (exit code 2)."""

    exit_code = 2


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
