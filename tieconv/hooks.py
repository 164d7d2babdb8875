"""Load hooks that re-tie or untie when a state dict is loaded into a module.

TorchChat's approach (a load-state-dict pre-hook that fills `output.weight` from
`tok_embeddings.weight`), done generally: any prefix, any `strict`, `assign=True`
and meta-device modules, every target of a transformers tie map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import TieconvError
from .names import KNOWN_PAIRS


class TieMapError(TieconvError):
    """The module's embedding and head could not be found, or a state dict holds two different matrices."""


def _parameter_names(module) -> set[str]:
    return {n for n, _ in module.named_parameters(remove_duplicate=False)}


def find_tie_pairs(module, embed: str | None = None, head: str | None = None) -> list[tuple[str, str]]:
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


def _transformers_tie_map(module) -> list[tuple[str, str]]:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return []
    if not isinstance(module, PreTrainedModel):
        return []
    configs = []
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


def _owner(module, name: str):
    *path, leaf = name.split(".")
    owner = module
    for part in path:
        owner = getattr(owner, part)
    return owner, leaf


def _same(a, b) -> bool:
    if a is b:
        return True
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.device.type == "meta" or b.device.type == "meta":
        return False
    return bool(torch.equal(a, b))


@dataclass
class HookHandle:
    """Returned by `tie_on_load` / `untie_on_load`; `remove()` unregisters the hooks."""

    pairs: list[tuple[str, str]]
    _handles: list = field(default_factory=list, repr=False)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _register(module, pairs, pre_hook, post_hook) -> HookHandle:
    handle = HookHandle(pairs)
    handle._handles.append(module.register_load_state_dict_pre_hook(pre_hook))
    handle._handles.append(module.register_load_state_dict_post_hook(post_hook))
    return handle


def tie_on_load(module, embed: str | None = None, head: str | None = None, *, keep: str | None = None) -> HookHandle:
    """Make `module.load_state_dict(sd)` tie the head to the embedding.

    A state dict without the head loads with any `strict` (the pre-hook fills it from the
    embedding; a state dict with only the head fills the embedding); afterwards
    `module.get_parameter(head) is module.get_parameter(embed)`: one Parameter, one storage.
    Works with `assign=True`, on meta-device modules, and for a module nested in a larger one
    (keys carry its prefix). If the state dict holds both and they differ, raises
    `TieMapError`, or with `keep="embed"|"head"` uses that one's values.

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

    def pre_hook(mod, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for target, source in pairs:
            tk, sk = prefix + target, prefix + source
            if tk in state_dict and sk in state_dict:
                if not _same(state_dict[tk], state_dict[sk]):
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

    def post_hook(mod, incompatible_keys):
        for target, source in pairs:
            owner, leaf = _owner(mod, target)
            shared = mod.get_parameter(source)
            if getattr(owner, leaf) is not shared:
                setattr(owner, leaf, shared)

    return _register(module, pairs, pre_hook, post_hook)


def untie_on_load(module, embed: str | None = None, head: str | None = None) -> HookHandle:
    """Make `module.load_state_dict(sd)` leave the head its own Parameter with its own storage.

    A head missing from the state dict is filled with a copy of the embedding, so fine-tuning
    can move the two apart.

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
        >>> _ = model.load_state_dict({"tok_embeddings.weight": torch.randn(8, 4)})
        >>> model.output.weight is model.tok_embeddings.weight
        False
    """
    import torch

    pairs = find_tie_pairs(module, embed, head)

    def pre_hook(mod, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for target, source in pairs:
            tk, sk = prefix + target, prefix + source
            if tk not in state_dict and sk in state_dict:
                state_dict[tk] = state_dict[sk].clone()
            elif sk not in state_dict and tk in state_dict:
                state_dict[sk] = state_dict[tk].clone()

    def post_hook(mod, incompatible_keys):
        for target, source in pairs:
            owner, leaf = _owner(mod, target)
            head_param, embed_param = getattr(owner, leaf), mod.get_parameter(source)
            if head_param is embed_param or (
                head_param.device.type != "meta" and head_param.untyped_storage().data_ptr()
                == embed_param.untyped_storage().data_ptr()
            ):
                setattr(owner, leaf, torch.nn.Parameter(embed_param.detach().clone(),
                                                        requires_grad=embed_param.requires_grad))

    return _register(module, pairs, pre_hook, post_hook)
