"""`memory_report`: parameters and bytes per name, unique by storage, and what sharing saves."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .report import human_bytes


@dataclass
class MemoryEntry:
    name: str
    shape: list[int]
    dtype: str
    parameters: int
    nbytes: int
    shares_with: str | None  # the first name holding the same storage


@dataclass
class MemoryReport:
    entries: list[MemoryEntry] = field(default_factory=list)
    parameters: int = 0  # counting every name
    unique_parameters: int = 0  # counting each storage once
    bytes: int = 0
    unique_bytes: int = 0

    @property
    def bytes_saved_by_sharing(self) -> int:
        return self.bytes - self.unique_bytes

    def to_dict(self) -> dict:
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


def memory_report(obj) -> MemoryReport:
    """Describe the memory of a module or a state dict.

    Example:
        >>> import torch, tieconv
        >>> emb = torch.nn.Embedding(8, 4)
        >>> r = tieconv.memory_report({"a": emb.weight, "b": emb.weight})
        >>> r.unique_parameters, r.bytes_saved_by_sharing
        (32, 128)
    """
    import torch

    if isinstance(obj, torch.nn.Module):
        items = list(obj.state_dict(keep_vars=True).items())
    else:
        items = list(obj.items())
    report = MemoryReport()
    first_by_storage: dict[tuple, tuple[str, int]] = {}
    for name, t in items:
        nbytes = t.numel() * t.element_size()
        key = (t.device.type, t.untyped_storage().data_ptr()) if t.device.type != "meta" else ("meta", id(t))
        owner = first_by_storage.get(key)
        report.entries.append(MemoryEntry(name, list(t.shape), str(t.dtype).removeprefix("torch."), t.numel(), nbytes,
                                          owner[0] if owner else None))
        report.parameters += t.numel()
        report.bytes += nbytes
        if owner is None:
            first_by_storage[key] = (name, nbytes)
            report.unique_parameters += t.numel()
            report.unique_bytes += nbytes
    return report
