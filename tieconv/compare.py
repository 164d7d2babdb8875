"""Streamed comparison of two stored tensors, in bounded memory."""

from __future__ import annotations

from .checkpoint import CHUNK_BYTES, Checkpoint


def bytes_identical(ckpt: Checkpoint, a: str, b: str, chunk_bytes: int = CHUNK_BYTES) -> bool:
    """True when the stored bytes of keys `a` and `b` are equal (both sizes must match)."""
    ta, tb = ckpt.tensors[a], ckpt.tensors[b]
    if ta.nbytes != tb.nbytes or ta.dtype != tb.dtype or ta.shape != tb.shape:
        return False
    if ta.storage == tb.storage:
        return True
    from .progress import bar

    # each stream has its own buffer, so a's chunk stays valid while b's is read
    with bar(ta.nbytes, "comparing") as progress:
        for chunk_a, chunk_b in zip(ckpt.iter_bytes(a, chunk_bytes), ckpt.iter_bytes(b, chunk_bytes)):
            if chunk_a != chunk_b:
                return False
            progress.update(len(chunk_a))
    return True


def equal_after_cast(ckpt: Checkpoint, a: str, b: str, rows_per_chunk: int | None = None) -> bool:
    """For tensors of different dtypes: are they equal once both are cast to the wider one?"""
    import torch

    ta, tb = ckpt.tensors[a], ckpt.tensors[b]
    if ta.shape != tb.shape:
        return False
    xa, xb = ckpt.load_tensor(a), ckpt.load_tensor(b)
    wide = torch.promote_types(xa.dtype, xb.dtype)
    rows = xa.shape[0] if xa.dim() else 1
    step = rows_per_chunk or max(1, (CHUNK_BYTES // max(1, xa[0].numel() * 8)) if xa.dim() else 1)
    for start in range(0, rows, step):
        pa = xa[start : start + step].to(wide) if xa.dim() else xa.to(wide)
        pb = xb[start : start + step].to(wide) if xb.dim() else xb.to(wide)
        if not torch.equal(pa, pb):
            return False
    return True


def difference(ckpt: Checkpoint, a: str, b: str) -> dict[str, float]:
    """Max abs difference, relative difference (max abs diff / max abs of a), cosine similarity."""
    xa = ckpt.load_tensor(a)
    xb = ckpt.load_tensor(b)
    rows = xa.shape[0] if xa.dim() else 1
    step = max(1, CHUNK_BYTES // max(1, (xa[0].numel() if xa.dim() else 1) * 8))
    max_diff = 0.0
    max_a = 0.0
    dot = na = nb = 0.0
    for start in range(0, rows, step):
        pa = (xa[start : start + step] if xa.dim() else xa).double()
        pb = (xb[start : start + step] if xb.dim() else xb).double()
        max_diff = max(max_diff, (pa - pb).abs().max().item() if pa.numel() else 0.0)
        max_a = max(max_a, pa.abs().max().item() if pa.numel() else 0.0)
        dot += (pa * pb).sum().item()
        na += (pa * pa).sum().item()
        nb += (pb * pb).sum().item()
    cosine = dot / ((na**0.5) * (nb**0.5)) if na and nb else float("nan")
    return {
        "max_abs_diff": max_diff,
        "relative_diff": max_diff / max_a if max_a else float("inf") if max_diff else 0.0,
        "cosine_similarity": cosine,
    }
