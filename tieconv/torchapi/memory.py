"""`memory_report`: parameters and bytes per name, unique by storage, and what sharing saves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..inspection.report import human_bytes
from .storage import extent, overlap_groups, shares_memory, view_key

if TYPE_CHECKING:
    import torch


@dataclass
class MemoryEntry:
    """One name of a module or state dict."""

    name: str
    shape: list[int]
    dtype: str
    parameters: int
    nbytes: int
    shares_with: str | None  # the first name whose memory this one shares


@dataclass
class MemoryReport:
    """What `memory_report` found: one entry per name, and totals counting every name or each memory once."""

    entries: list[MemoryEntry] = field(default_factory=list)
    parameters: int = 0  # counting every name
    unique_parameters: int = 0  # counting each storage once
    bytes: int = 0
    unique_bytes: int = 0

    @property
    def bytes_saved_by_sharing(self) -> int:
        return self.bytes - self.unique_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_saved_by_sharing": self.bytes_saved_by_sharing}

    def __str__(self) -> str:
        shared = [e for e in self.entries if e.shares_with]
        lines = [
            f"{len(self.entries)} tensors, {self.unique_parameters:,} unique parameters "
            f"({self.parameters:,} counting every name)",
            f"{human_bytes(self.unique_bytes)} in memory; sharing saves {human_bytes(self.bytes_saved_by_sharing)}",
        ]
        lines += [f"  {e.name} shares {e.shares_with} ({human_bytes(e.nbytes)})" for e in shared]
        return "\n".join(lines)


def memory_report(obj: torch.nn.Module | Mapping[str, torch.Tensor]) -> MemoryReport:
    """Describe the memory of a module (its state dict, buffers included) or of a state dict.

    Tensors count once per memory they hold (`tieconv.torchapi.storage`): a tied head adds nothing to the
    unique figures, two disjoint halves of one storage both count in full.

    Example:
        >>> import torch, tieconv
        >>> emb = torch.nn.Embedding(8, 4)
        >>> r = tieconv.memory_report({"a": emb.weight, "b": emb.weight})
        >>> r.unique_parameters, r.bytes_saved_by_sharing
        (32, 128)
        >>> tieconv.memory_report({"low": emb.weight[:4], "high": emb.weight[4:]}).bytes_saved_by_sharing
        0
    """
    import torch

    tensors = dict(obj.state_dict(keep_vars=True) if isinstance(obj, torch.nn.Module) else obj)
    report = MemoryReport()
    shares_with: dict[str, str] = {}
    for group in overlap_groups(tensors):
        for i, name in enumerate(group[1:], 1):
            first = next((other for other in group[:i] if shares_memory(tensors[name], tensors[other])), None)
            if first is not None:
                shares_with[name] = first
        unique_bytes, unique_parameters = _unique_size([tensors[n] for n in group])
        report.unique_bytes += unique_bytes
        report.unique_parameters += unique_parameters
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        report.entries.append(MemoryEntry(name, list(t.shape), str(t.dtype).removeprefix("torch."), t.numel(),
                                          nbytes, shares_with.get(name)))
        report.parameters += t.numel()
        report.bytes += nbytes
    return report


def _unique_size(group: list[torch.Tensor]) -> tuple[int, int]:
    """(bytes, elements) that tensors connected by shared memory hold between them."""
    views = list({view_key(t): t for t in group}.values())
    if len(views) == 1:
        return views[0].numel() * views[0].element_size(), views[0].numel()
    # different views of one memory: the bytes their extents cover, at most the bytes they hold
    # (interleaved strided views cover gaps they do not hold)
    extents = [extent(t) for t in views]
    covered = max(e.end for e in extents) - min(e.start for e in extents)
    nbytes = min(covered, sum(t.numel() * t.element_size() for t in views))
    return nbytes, nbytes // views[0].element_size()
