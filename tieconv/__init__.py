"""tieconv: are this checkpoint's input embedding and output head tied, and is that what the config says?

The public API is importable from here; heavy modules (torch, transformers) load lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "inspect",
    "tie",
    "untie",
    "plan",
    "scan",
    "diff",
    "load_state_dict",
    "save",
    "memory_report",
    "tie_on_load",
    "untie_on_load",
    "Report",
    "Plan",
    "SaveResult",
    "MemoryReport",
    "ConversionResult",
    "DiffReport",
    "TieconvError",
    "InputError",
    "CorruptFileError",
    "UnsafePickleError",
    "UnsupportedCheckpointError",
    "RefusedError",
    "OutputError",
    "VerificationError",
    "TieMapError",
]

from .errors import (  # noqa: E402 - errors are tiny and always needed
    CorruptFileError,
    InputError,
    OutputError,
    RefusedError,
    TieconvError,
    TieMapError,
    UnsafePickleError,
    UnsupportedCheckpointError,
    VerificationError,
)

_LAZY = {
    "inspect": ("tieconv.inspection", "inspect"),
    "Report": ("tieconv.report", "Report"),
    "tie": ("tieconv.convert", "tie"),
    "untie": ("tieconv.convert", "untie"),
    "plan": ("tieconv.planning", "plan"),
    "Plan": ("tieconv.planning", "Plan"),
    "ConversionResult": ("tieconv.convert", "ConversionResult"),
    "scan": ("tieconv.scanning", "scan"),
    "diff": ("tieconv.equivalence", "diff"),
    "DiffReport": ("tieconv.equivalence", "DiffReport"),
    "load_state_dict": ("tieconv.loading", "load_state_dict"),
    "save": ("tieconv.saving", "save"),
    "SaveResult": ("tieconv.saving", "SaveResult"),
    "memory_report": ("tieconv.memory", "memory_report"),
    "MemoryReport": ("tieconv.memory", "MemoryReport"),
    "tie_on_load": ("tieconv.hooks", "tie_on_load"),
    "untie_on_load": ("tieconv.hooks", "untie_on_load"),
}

if TYPE_CHECKING:
    from .convert import ConversionResult, tie, untie
    from .equivalence import DiffReport, diff
    from .hooks import tie_on_load, untie_on_load
    from .inspection import inspect
    from .loading import load_state_dict
    from .memory import MemoryReport, memory_report
    from .planning import Plan, plan
    from .report import Report
    from .saving import SaveResult, save
    from .scanning import scan


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tieconv' has no attribute {name!r}")
