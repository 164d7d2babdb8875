"""Load hooks that re-tie or untie when a state dict is loaded into a module.

TorchChat's approach (a load-state-dict pre-hook that fills `output.weight` from
`tok_embeddings.weight`), done generally: any prefix, any `strict`, `assign=True`
and meta-device modules, every target of a transformers tie map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import TieMapError
from ..knowledge.names import KNOWN_PAIRS
from .storage import same_view, shares_memory

if TYPE_CHECKING:
    import torch
    from torch.utils.hooks import RemovableHandle

# torch calls a load-state-dict pre-hook with (module, state_dict, prefix, local_metadata, strict,
# missing_keys, unexpected_keys, error_msgs) and a post-hook with (module, incompatible_keys)
_PreHook = Callable[[Any, dict[str, Any], str, dict[str, Any], bool, list[str], list[str], list[str]], None]
_PostHook = Callable[[Any, Any], None]

__all__ = ["HookHandle", "TieMapError", "find_tie_pairs", "tie_on_load", "untie_on_load"]


def _parameter_names(module: torch.nn.Module) -> set[str]:
    return {n for n, _ in module.named_parameters(remove_duplicate=False)}


def find_tie_pairs(module: torch.nn.Module, embed: str | None = None, head: str | None = None) -> list[tuple[str, str]]:
    """(target, source) parameter names, relative to `module`, that tying makes one Parameter.

    Explicit names win; then a transformers model's whole tie map (taken with the flag forced on,
    because the instance's map is empty when its config unties); then TorchChat/Meta, nanoGPT and
    the other known names.
    """
    names = _parameter_names(module)
    if embed or head:
        if not (embed and head):
            raise TieMapError("pass both embed= and head=, or neither")
        missing = [n for n in (embed, head) if n not in names]
        if missing:
            raise TieMapError(f"{type(module).__name__} has no parameter {missing[0]!r}")
        return [(head, embed)]
    pairs = _transformers_tie_map(module)
    if pairs:
        return pairs
    for known_embed, known_head in KNOWN_PAIRS:
        if known_head and known_embed in names and known_head in names:
            return [(known_head, known_embed)]
    candidates = sorted(n for n in names if any(w in n for w in ("emb", "wte", "head", "output", "shared")))
    raise TieMapError(
        f"cannot tell the embedding and the head of {type(module).__name__} apart; candidates: "
        f"{', '.join(candidates[:8]) or 'none'}; pass embed= and head="
    )


def _transformers_tie_map(module: torch.nn.Module) -> list[tuple[str, str]]:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return []
    if not isinstance(module, PreTrainedModel):
        return []
    configs: list[tuple[Any, bool | None]] = []
    for sub in module.modules():
        if isinstance(sub, PreTrainedModel):
            for cfg in (sub.config, getattr(sub.config, "text_config", None)):
                if cfg is not None and all(cfg is not c for c, _ in configs):
                    configs.append((cfg, getattr(cfg, "tie_word_embeddings", None)))
    try:
        for cfg, _ in configs:
            cfg.tie_word_embeddings = True
        mapping = module.get_expanded_tied_weights_keys(all_submodels=True)
    finally:
        for cfg, value in configs:
            cfg.tie_word_embeddings = value
    names = _parameter_names(module)
    return [(t, s) for t, s in mapping.items() if t in names and s in names]


def _owner(module: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    *path, leaf = name.split(".")
    return (module.get_submodule(".".join(path)) if path else module), leaf


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    if same_view(a, b):
        return True
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.device.type == "meta" or b.device.type == "meta":
        return False  # no values to compare
    return bool(torch.equal(a, b))


@dataclass
class HookHandle:
    """Returned by `tie_on_load` / `untie_on_load`; `remove()` unregisters the hooks."""

    pairs: list[tuple[str, str]]  # (head-side target, embedding-side source), relative to the module
    _handles: list[RemovableHandle] = field(default_factory=list, repr=False)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _register(module: torch.nn.Module, pairs: list[tuple[str, str]], pre_hook: _PreHook,
              post_hook: _PostHook | None = None) -> HookHandle:
    handle = HookHandle(pairs)
    # torch leaves the two register functions unannotated
    register_pre = module.register_load_state_dict_pre_hook
    handle._handles.append(register_pre(pre_hook))  # type: ignore[no-untyped-call,unused-ignore]
    if post_hook is not None:
        register_post = module.register_load_state_dict_post_hook
        handle._handles.append(register_post(post_hook))  # type: ignore[no-untyped-call,unused-ignore]
    return handle


def tie_on_load(module: torch.nn.Module, embed: str | None = None, head: str | None = None, *,
                keep: str | None = None) -> HookHandle:
    """Make `module.load_state_dict(sd)` tie the head to the embedding.

    A state dict without the head loads with any `strict` (the pre-hook fills it from the
    embedding; a state dict with only the head fills the embedding); afterwards
    `module.get_parameter(head) is module.get_parameter(embed)`: one Parameter, one storage.
    Works with `assign=True`, on meta-device modules, and for a module nested in a larger one
    (keys carry its prefix). If the state dict holds both and they differ, raises
    `TieMapError`, or with `keep="embed"|"head"` uses that one's values. A pair neither of whose
    keys is in the state dict (`strict=False`) is left as the module had it.

    The head's Parameter is replaced by the embedding's (and `assign=True` replaces every
    Parameter): build the optimizer after loading. One built before still holds the old head,
    which no longer takes part in the model.

    Example:
        >>> import torch, tieconv
        >>> class LM(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.tok_embeddings = torch.nn.Embedding(8, 4)
        ...         self.output = torch.nn.Linear(4, 8, bias=False)
        >>> model = LM()
        >>> handle = tieconv.tie_on_load(model)
        >>> _ = model.load_state_dict({"tok_embeddings.weight": torch.randn(8, 4)}, strict=True)
        >>> model.output.weight is model.tok_embeddings.weight
        True
        >>> handle.remove()
    """
    if keep not in (None, "embed", "head"):
        raise TieMapError(f"keep must be 'embed' or 'head', not {keep!r}")
    pairs = find_tie_pairs(module, embed, head)
    loaded: list[tuple[str, str]] = []  # the pairs this load brings values for: only those are tied

    def pre_hook(mod: torch.nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                 strict: bool, missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        loaded.clear()
        for target, source in pairs:
            tk, sk = prefix + target, prefix + source
            if tk in state_dict and sk in state_dict:
                if not _same_values(state_dict[tk], state_dict[sk]):
                    if keep is None:
                        raise TieMapError(
                            f"the state dict holds {tk} and {sk} with different values; "
                            "pass keep='embed' or keep='head' to choose"
                        )
                    if keep == "head":
                        state_dict[sk] = state_dict[tk]
                state_dict[tk] = state_dict[sk]
            elif sk in state_dict:
                state_dict[tk] = state_dict[sk]
            elif tk in state_dict:
                state_dict[sk] = state_dict[tk]
            else:
                continue
            loaded.append((target, source))

    def post_hook(mod: torch.nn.Module, incompatible_keys: Any) -> None:
        for target, source in loaded:
            owner, leaf = _owner(mod, target)
            shared = mod.get_parameter(source)
            if getattr(owner, leaf) is not shared:
                setattr(owner, leaf, shared)
        loaded.clear()

    return _register(module, pairs, pre_hook, post_hook)


def untie_on_load(module: torch.nn.Module, embed: str | None = None, head: str | None = None) -> HookHandle:
    """Make `module.load_state_dict(sd)` leave the head its own Parameter with its own storage.

    Before anything is copied, a head that is the embedding's Parameter (or shares its memory)
    gets a Parameter of its own, so a state dict with different embedding and head loads both
    as they are, with any `strict`, with `assign=True` and on meta-device modules. A head
    missing from the state dict is filled with a copy of the embedding (and the other way
    round), so fine-tuning can move the two apart.

    The new head Parameter is not in an optimizer built before loading: build it after. (A
    transformers model whose config still ties re-ties if `tie_weights()` is called again.)

    Example:
        >>> import torch, tieconv
        >>> class LM(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.tok_embeddings = torch.nn.Embedding(8, 4)
        ...         self.output = torch.nn.Linear(4, 8, bias=False)
        ...         self.output.weight = self.tok_embeddings.weight
        >>> model = LM()
        >>> _ = tieconv.untie_on_load(model)
        >>> _ = model.load_state_dict({"tok_embeddings.weight": torch.zeros(8, 4),
        ...                            "output.weight": torch.ones(8, 4)})
        >>> model.output.weight is model.tok_embeddings.weight
        False
        >>> model.tok_embeddings.weight.sum().item(), model.output.weight.sum().item()
        (0.0, 32.0)
    """
    import torch

    pairs = find_tie_pairs(module, embed, head)

    def pre_hook(mod: torch.nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                 strict: bool, missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        for target, source in pairs:
            # the head's own Parameter first: loading copies into Parameters, and into a shared one
            # the head's values would overwrite the embedding's
            owner, leaf = _owner(mod, target)
            head_param, embed_param = getattr(owner, leaf), mod.get_parameter(source)
            if shares_memory(head_param, embed_param):
                setattr(owner, leaf, torch.nn.Parameter(head_param.detach().clone(),
                                                        requires_grad=head_param.requires_grad))
            tk, sk = prefix + target, prefix + source
            if tk not in state_dict and sk in state_dict:
                state_dict[tk] = state_dict[sk].clone()
            elif sk not in state_dict and tk in state_dict:
                state_dict[sk] = state_dict[tk].clone()
            elif tk in state_dict and shares_memory(state_dict[tk], state_dict[sk]):
                state_dict[tk] = state_dict[tk].clone()  # with assign=True the head would take the same tensor

    return _register(module, pairs, pre_hook)
