"""`load_state_dict`: any checkpoint layout tieconv reads, as a dict of tensors, tied the way you ask."""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable
from typing import TYPE_CHECKING

from ..errors import RefusedError
from ..inspection.inspector import inspect
from .storage import shares_memory, view_key

if TYPE_CHECKING:
    import torch

    from ..formats.checkpoint import Checkpoint


def load_state_dict(path: str | os.PathLike[str], *, tie: bool | None = None, keep: str | None = None,
                    embed: str | None = None, head: str | None = None, device: str | torch.device = "cpu",
                    strip_prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Load the checkpoint at `path` as `{key: tensor}`, memory-mapped where the format allows.

    Args:
        tie: None follows the checkpoint (`tied`/`duplicated`: the head is the embedding's tensor
            object; `untied`/`tieable`: as stored; `conflict`: as stored, with a warning;
            `head-missing`: raises). True fills or replaces the head with the embedding's tensor
            (a `conflict` or `untied` raises unless `keep` is given); False gives the head its own copy.
        keep: "embed" or "head": which matrix survives when `tie=True` meets two different ones.
        embed, head: keys as stored, overriding what tieconv finds.
        device: where the tensors go ("cpu" keeps them memory-mapped). Names that are one tensor
            stay one tensor there: each view is moved once.
        strip_prefix: remove this prefix from every key that has it (e.g. "_orig_mod.").

    Example:
        >>> import tieconv
        >>> sd = tieconv.load_state_dict("fixtures/llama-tied")
        >>> sd["lm_head.weight"] is sd["model.embed_tokens.weight"]
        True
    """
    if keep not in (None, "embed", "head"):
        raise RefusedError(f"keep must be 'embed' or 'head', not {keep!r}")
    from ..formats import hub

    path = hub.local_path(path)
    report = inspect(path, embed=embed, head=head, compare=True)
    ckpt = report.checkpoint
    ckpt.check_torch_loadable()
    state_dict = _read_all(ckpt)
    v = report.verdict
    if report.head is not None and report.embed is not None:  # both null for models without a token embedding
        e, h = report.embed.key, report.head.key
        targets = [t for t, s in report.tie_map.items() if s == e] or [h]
        # the targets that tying makes the embedding's tensor: absent, a bit-identical copy, or the head
        tie_targets = [t for t in targets if t not in state_dict or t in report.reclaimable_keys or t == h]
        if tie is None:
            if v == "head-missing":
                raise RefusedError(f"{path}: the config unties but no head ({h}) is stored; "
                                   "pass tie=True to fill it from the embedding")
            if v == "conflict":
                warnings.warn(f"{path}: the config ties but {h} and {e} differ; runtimes disagree on which to use "
                              "(transformers and vLLM use the stored head, MLX-LM the embedding)", stacklevel=2)
            elif v == "embed-missing" and report.tie_flag.value is not False:
                state_dict[e] = state_dict[h]
            elif v in ("tied", "duplicated"):
                _share(state_dict, e, tie_targets)
        elif tie:
            if e not in state_dict:
                state_dict[e] = state_dict[h]
            if v in ("untied", "conflict") and h in state_dict and state_dict[h] is not state_dict[e]:
                if keep is None:
                    raise RefusedError(f"{path}: {h} and {e} differ; pass keep='embed' or keep='head' to choose")
                if keep == "head":
                    state_dict[e] = state_dict[h]
            _share(state_dict, e, tie_targets)
        else:
            if e not in state_dict:
                state_dict[e] = state_dict[h].clone()
            for t in targets:
                if t not in state_dict or shares_memory(state_dict[t], state_dict[e]):
                    state_dict[t] = state_dict[e].clone()
    if str(device) != "cpu":
        state_dict = _move(state_dict, device)
    if strip_prefix:
        state_dict = {k.removeprefix(strip_prefix): t for k, t in state_dict.items()}
    return state_dict


def _share(state_dict: dict[str, torch.Tensor], source: str, targets: list[str]) -> None:
    for t in targets:
        state_dict[t] = state_dict[source]


def _move(state_dict: dict[str, torch.Tensor], device: str | torch.device) -> dict[str, torch.Tensor]:
    """Each view moved once, so names that were one tensor (BART's four) are one tensor on `device`.

    Views that only overlap (rare outside pickles) move separately: each keeps its values, not
    the sharing.
    """
    keys = {name: view_key(t) for name, t in state_dict.items()}
    moved: dict[Hashable, torch.Tensor] = {}
    for name, t in state_dict.items():
        if keys[name] not in moved:
            moved[keys[name]] = t.to(device)
    return {name: moved[keys[name]] for name in state_dict}


def _read_all(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """Every stored tensor; safetensors files are opened once each and their tensors memory-mapped."""
    state_dict = ckpt.load_all()
    for dropped, kept in ckpt.aliases.items():  # `dropped -> kept` recorded by save_model / tieconv.save
        state_dict.setdefault(dropped, state_dict[kept])
    return {k: state_dict[k] for k in list(ckpt.tensors) + [a for a in ckpt.aliases if a not in ckpt.tensors]}
