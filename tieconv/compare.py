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


def _row_chunks(xa, xb):
    """Matching slices of two same-shape tensors, each at most CHUNK_BYTES once widened to float64."""
    if xa.dim() == 0:
        yield xa, xb
        return
    step = max(1, CHUNK_BYTES // max(1, xa[0].numel() * 8))
    for start in range(0, xa.shape[0], step):
        yield xa[start : start + step], xb[start : start + step]


def equal_after_cast(ckpt: Checkpoint, a: str, b: str) -> bool:
    """For tensors of different dtypes: are they equal once both are cast to the wider one?"""
    import torch

    if ckpt.tensors[a].shape != ckpt.tensors[b].shape:
        return False
    xa, xb = ckpt.load_tensor(a), ckpt.load_tensor(b)
    wide = torch.promote_types(xa.dtype, xb.dtype)
    return all(torch.equal(pa.to(wide), pb.to(wide)) for pa, pb in _row_chunks(xa, xb))


def difference(ckpt: Checkpoint, a: str, b: str) -> dict[str, float]:
    """Max abs difference, relative difference (max abs diff / max abs of a), cosine similarity."""
    max_diff = max_a = dot = na = nb = 0.0
    for pa, pb in _row_chunks(ckpt.load_tensor(a), ckpt.load_tensor(b)):
        pa, pb = pa.double(), pb.double()
        if pa.numel():
            max_diff = max(max_diff, (pa - pb).abs().max().item())
            max_a = max(max_a, pa.abs().max().item())
        dot += (pa * pb).sum().item()
        na += (pa * pa).sum().item()
        nb += (pb * pb).sum().item()
    cosine = dot / ((na**0.5) * (nb**0.5)) if na and nb else float("nan")
    return {
        "max_abs_diff": max_diff,
        "relative_diff": max_diff / max_a if max_a else float("inf") if max_diff else 0.0,
        "cosine_similarity": cosine,
    }
