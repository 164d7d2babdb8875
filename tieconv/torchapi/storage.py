"""One notion of "same storage" for every piece of tieconv that handles torch tensors.

Two tensors *share memory* when their byte extents overlap in one address space, and are the *same
view* when they also start at the same byte with the same shape, stride and dtype (so one can stand
for the other: a tied head is the same view as its embedding; the two halves of one storage share
nothing). The address space of a real tensor is its device and its extent is absolute addresses, so
two storage objects over the same bytes (memory-mapped files can do that) still count as shared. A
meta tensor has no address (`data_ptr()` is 0 for every one of them), nor does a tensor with no
bytes: for those the storage object itself is the address space and the extent is relative to it.

    >>> import torch
    >>> from tieconv.torchapi.storage import same_view, shares_memory
    >>> base = torch.zeros(12)
    >>> shares_memory(base[:6], base[6:]), shares_memory(base[:7], base[6:])
    (False, True)
    >>> same_view(base[:6], base.view(2, 6)[0]), same_view(base[:6], base[:6].view(2, 3))
    (True, False)
    >>> with torch.device("meta"):
    ...     a, b = torch.empty(4), torch.empty(4)
    >>> shares_memory(a, b), shares_memory(a, a.view(2, 2))
    (False, True)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import torch

__all__ = ["Extent", "extent", "overlap_groups", "same_view", "shares_memory", "view_key"]


class Extent(NamedTuple):
    """The bytes a tensor's elements span: `[start, end)` in the address space `space`."""

    space: Hashable
    start: int
    end: int  # equal to start for a tensor with no elements


def extent(tensor: torch.Tensor) -> Extent:
    """Where `tensor`'s bytes are: from its first element to just past its last, strides included."""
    itemsize = tensor.element_size()
    span = 0
    if tensor.numel():
        span = (1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))) * itemsize
    storage = tensor.untyped_storage()
    if tensor.device.type == "meta" or storage.data_ptr() == 0:
        # No address to compare: `_cdata` is the C++ storage's address, the same for every tensor and
        # Parameter over one storage (torch's own StorageWeakRef keys on it); valid while they live.
        start = int(tensor.storage_offset()) * itemsize
        return Extent((str(tensor.device), storage._cdata), start, start + span)
    return Extent(str(tensor.device), tensor.data_ptr(), tensor.data_ptr() + span)


def view_key(tensor: torch.Tensor) -> Hashable:
    """Equal for two tensors exactly when they are the same view of the same bytes."""
    where = extent(tensor)
    return where.space, where.start, tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype


def same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when `a` and `b` are the same elements of the same memory, seen the same way."""
    return a is b or view_key(a) == view_key(b)


def shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when writing to one of `a`, `b` could change the other (their byte extents overlap).

    Interleaved strided views (`x[::2]`, `x[1::2]`) count as sharing, as safetensors counts them;
    a tensor with no elements shares nothing.
    """
    if a is b:
        return True
    return _overlap(extent(a), extent(b))


def _overlap(a: Extent, b: Extent) -> bool:
    return a.space == b.space and a.start < b.end and b.start < a.end


def overlap_groups(tensors: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Names grouped so that the tensors of a group are connected by shared memory.

    A name that shares memory with no other is a group of one. Groups, and the names in each,
    follow the order of `tensors`.
    """
    where = {name: extent(t) for name, t in tensors.items()}
    order = {name: i for i, name in enumerate(tensors)}
    groups: list[list[str]] = []
    reach: Extent | None = None  # the current group's union so far
    # a sweep over the extents sorted by start: a name joins the group whose union it overlaps
    for name in sorted(tensors, key=lambda n: (repr(where[n].space), where[n].start, order[n])):
        e = where[name]
        if reach is not None and _overlap(reach, e):
            groups[-1].append(name)
            reach = reach._replace(end=max(reach.end, e.end))
        else:
            groups.append([name])
            reach = e
    groups = [sorted(g, key=order.__getitem__) for g in groups]
    return sorted(groups, key=lambda g: order[g[0]])
