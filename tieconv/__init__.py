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
    "inspect": ("tieconv.inspection.inspector", "inspect"),
    "Report": ("tieconv.inspection.report", "Report"),
    "tie": ("tieconv.conversion.convert", "tie"),
    "untie": ("tieconv.conversion.convert", "untie"),
    "plan": ("tieconv.conversion.planning", "plan"),
    "Plan": ("tieconv.conversion.planning", "Plan"),
    "ConversionResult": ("tieconv.conversion.convert", "ConversionResult"),
    "scan": ("tieconv.inspection.scanning", "scan"),
    "diff": ("tieconv.inspection.equivalence", "diff"),
    "DiffReport": ("tieconv.inspection.equivalence", "DiffReport"),
    "load_state_dict": ("tieconv.torchapi.loading", "load_state_dict"),
    "save": ("tieconv.torchapi.saving", "save"),
    "SaveResult": ("tieconv.torchapi.saving", "SaveResult"),
    "memory_report": ("tieconv.torchapi.memory", "memory_report"),
    "MemoryReport": ("tieconv.torchapi.memory", "MemoryReport"),
    "tie_on_load": ("tieconv.torchapi.hooks", "tie_on_load"),
    "untie_on_load": ("tieconv.torchapi.hooks", "untie_on_load"),
}

if TYPE_CHECKING:
    from .conversion.convert import ConversionResult, tie, untie
    from .inspection.equivalence import DiffReport, diff
    from .torchapi.hooks import tie_on_load, untie_on_load
    from .inspection.inspector import inspect
    from .torchapi.loading import load_state_dict
    from .torchapi.memory import MemoryReport, memory_report
    from .conversion.planning import Plan, plan
    from .inspection.report import Report
    from .torchapi.saving import SaveResult, save
    from .inspection.scanning import scan


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tieconv' has no attribute {name!r}")
