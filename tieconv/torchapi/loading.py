"""`load_state_dict`: any checkpoint layout tieconv reads, as a dict of tensors, tied the way you ask."""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable
from typing import TYPE_CHECKING, cast

from ..errors import RefusedError
from ..inspection.inspector import inspect
from ..inspection.report import Report, TensorInfo
from ..inspection.verdicts import TABLE, Load, Member
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
    if report.head is not None and report.embed is not None:  # both null for models without a token embedding
        if tie is None:
            _follow_the_checkpoint(state_dict, report)
        elif tie:
            _tie(state_dict, report, keep)
        else:
            _untie(state_dict, report)
    if str(device) != "cpu":
        state_dict = _move(state_dict, device)
    if strip_prefix:
        state_dict = {k.removeprefix(strip_prefix): t for k, t in state_dict.items()}
    return state_dict


def _tie_targets(state_dict: dict[str, torch.Tensor], report: Report) -> tuple[list[str], list[str]]:
    """(the embedding's tie-map targets, those that tying makes the embedding's tensor: absent, a
    bit-identical copy, or the head)."""
    e, h = cast(TensorInfo, report.embed).key, cast(TensorInfo, report.head).key
    targets = [t for t, s in report.tie_map.items() if s == e] or [h]
    return targets, [t for t in targets if t not in state_dict or t in report.reclaimable_keys or t == h]


def _follow_the_checkpoint(state_dict: dict[str, torch.Tensor], report: Report) -> None:
    """`tie=None`: what the verdict's row says a load does (`verdicts.Load`)."""
    e, h = cast(TensorInfo, report.embed).key, cast(TensorInfo, report.head).key
    row = TABLE[report.verdict]
    message = row.load_message.format(path=report.path, embed=e, head=h)
    if row.load is Load.REFUSE:
        raise RefusedError(message)
    if row.load is Load.WARN:
        warnings.warn(message, stacklevel=3)
    elif row.load is Load.EMBED_FROM_HEAD and report.tie_flag.value is not False:
        state_dict[e] = state_dict[h]
    elif row.load is Load.SHARE:
        _share(state_dict, e, _tie_targets(state_dict, report)[1])


def _tie(state_dict: dict[str, torch.Tensor], report: Report, keep: str | None) -> None:
    """`tie=True`: the head (and every tie-map target) is the embedding's tensor; `keep` chooses between two."""
    e, h = cast(TensorInfo, report.embed).key, cast(TensorInfo, report.head).key
    if e not in state_dict:
        state_dict[e] = state_dict[h]
    chooses = TABLE[report.verdict].tie.keep is Member.CHOSEN  # the two differ: `tie` needs --keep too
    if chooses and h in state_dict and state_dict[h] is not state_dict[e]:
        if keep is None:
            raise RefusedError(f"{report.path}: {h} and {e} differ; pass keep='embed' or keep='head' to choose")
        if keep == "head":
            state_dict[e] = state_dict[h]
    _share(state_dict, e, _tie_targets(state_dict, report)[1])


def _untie(state_dict: dict[str, torch.Tensor], report: Report) -> None:
    """`tie=False`: the embedding and every tie-map target are tensors of their own."""
    e, h = cast(TensorInfo, report.embed).key, cast(TensorInfo, report.head).key
    targets = _tie_targets(state_dict, report)[0]
    if e not in state_dict:
        state_dict[e] = state_dict[h].clone()
    for t in targets:
        if t not in state_dict or shares_memory(state_dict[t], state_dict[e]):
            state_dict[t] = state_dict[e].clone()


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
