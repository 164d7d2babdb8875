"""What transformers knows about an architecture: tensor names, tie map, and how the flag is read.

Everything here is learned from transformers itself (a one-layer skeleton on the
meta device and the config class), never from a hand-kept table, and cached in
`$XDG_CACHE_HOME/tieconv` keyed by transformers version and architecture, because
importing any config class imports torch (seconds) and most inspections need no torch.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import tempfile
import threading
from collections.abc import Container, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

CACHE_SCHEMA = 2
FLAG = "tie_word_embeddings"
# config keys that set a model's depth; reduced to 2 so a 5,000-layer config builds in milliseconds
DEPTH_KEYS = (
    "num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
    "num_decoder_layers", "num_encoder_layers",
)
STATES = ("absent", "true", "false")
# what transformers knows about the architectures it builds, made by bench/arch_sweep.py --knowledge for one
# transformers version: read without importing torch or transformers (which costs seconds)
KNOWLEDGE_FILE = Path(__file__).with_name("architectures.json")
# the head classes tieconv judges: transformers' public auto mappings (config class -> model class) for models
# with a language-model head; the base model's only when the model type has none of these
HEAD_MAPPINGS = (
    "MODEL_FOR_CAUSAL_LM_MAPPING", "MODEL_FOR_MASKED_LM_MAPPING", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING",
    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING", "MODEL_FOR_PRETRAINING_MAPPING", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING",
    "MODEL_FOR_MULTIMODAL_LM_MAPPING",
)


@dataclass(frozen=True)
class ArchitectureInfo:
    """Names are keys as stored on disk (what `save_pretrained` writes)."""

    architecture: str
    model_type: str
    config_class: str
    base_model_prefix: str
    embed: str | None  # the input token embedding; None: the model has none
    head: str | None  # the output projection; None: the model has none
    tie_groups: dict[str, list[str]]  # source -> targets, every flag on (transformers' full tie map)
    governed: list[str]  # targets the head's flag ties: flipping it unties exactly these
    memory_names: dict[str, str]  # disk name -> name in the transformers module
    flag_owner: str  # "" (top level) or the sub-config whose flag governs the head ("text_config", "decoder")
    flag_table: dict[str, bool]  # "top,owner" state -> effective flag
    forced: bool  # no value in the file changes the flag
    default: bool  # the flag when the file omits it
    also_changes: str | None  # what else flipping the flag changes (a forward's scale, other modules), or None

    @property
    def tie_map(self) -> dict[str, str]:
        return {t: s for s, targets in self.tie_groups.items() for t in targets}

    @property
    def head_group(self) -> tuple[str, list[str]] | None:
        """(source, targets) of the group the head belongs to; None: transformers never ties the head."""
        for source, targets in self.tie_groups.items():
            if self.head is not None and (self.head == source or self.head in targets):
                return source, list(targets)
        return None

    @property
    def pair_embed(self) -> str | None:
        """The member of the head's group whose value a loader uses for the other side of the pair.

        The group's source when the head is a target (Marian: `model.shared.weight`, not the encoder's
        `embed_tokens`, itself a target); the input embedding when the head is the source (FSMT, BLT).
        """
        group = self.head_group
        if group is None:
            return self.embed
        source, targets = group
        if self.head != source:
            return source
        return self.embed if self.embed in targets else targets[0]

    def effective_flag(self, config: dict[str, Any]) -> tuple[bool, str, bool | None, bool | None]:
        """(value, source, raw top-level value, raw value in the governing sub-config) for a config.json dict."""
        top = _raw_flag(config)
        sub_cfg = config.get(self.flag_owner) if self.flag_owner else None
        sub = _raw_flag(sub_cfg) if isinstance(sub_cfg, dict) else None
        if self.head is not None and self.head_group is None:
            return False, f"never tied: {self.architecture} has no tie map for its head", top, sub
        value = self.flag_table[f"{_state(top)},{_state(sub)}"]
        if self.forced:
            source = f"forced by {self.config_class}"
        elif top is not None and top == value:
            source = f"config.json:{FLAG}"
        elif sub is not None and sub == value:
            source = f"config.json:{self.flag_owner}.{FLAG}"
        else:
            source = "class default"
        return value, source, top, sub

    @property
    def flag_path(self) -> str:
        return f"{self.flag_owner}.{FLAG}" if self.flag_owner else FLAG


def _raw_flag(config: object) -> bool | None:
    value = config.get(FLAG) if isinstance(config, dict) else None
    return value if isinstance(value, bool) else None


def _state(value: bool | None) -> str:
    return "absent" if value is None else ("true" if value else "false")


# ---------------------------------------------------------------- cache


def transformers_version() -> str:
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return "none"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tieconv"


def _cache_file() -> Path:
    return cache_dir() / f"architectures-transformers-{transformers_version()}-v{CACHE_SCHEMA}.json"


def cache_key(config: dict[str, Any]) -> str:
    """Everything in a config that changes what is learned, and nothing that does not (no sizes).

    The class, the model type, the sub-configs' model types (Llava with Gemma vs with Llama) and the
    values of per-layer type lists; the transformers version is in the file name. The tie flags are
    not part of it: `flag_table` answers for every value.
    """
    subs = sorted(f"{k}={v.get('model_type')}" for k, v in config.items()
                  if isinstance(v, dict) and isinstance(v.get("model_type"), str))
    layer_values = sorted({f"{k}={x}" for k, v in _walk(config) if k.endswith("_types") and isinstance(v, list)
                           for x in v if isinstance(x, str)})
    return json.dumps([architecture_name(config), config.get("model_type"), subs, layer_values])


def _walk(doc: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for k, v in doc.items():
        yield k, v
        if isinstance(v, dict) and isinstance(v.get("model_type"), str):
            yield from _walk(v)


@functools.cache  # a shipped file: read once per process (380 KB; `scan` inspects many checkpoints)
def _load_knowledge() -> dict[str, Any]:
    """The shipped entries, when they were made with the installed transformers version."""
    try:
        with open(KNOWLEDGE_FILE, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("transformers") != transformers_version() or \
            data.get("schema") != CACHE_SCHEMA:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _load_cache() -> dict[str, Any]:
    from ..formats.file_cache import read_private

    raw = read_private(_cache_file())  # what was learned decides the tie map: never trust a planted file
    try:
        data = json.loads(raw) if raw is not None else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _store_cache(key: str, entry: dict[str, Any] | str) -> None:
    """Write atomically; go on silently when the cache folder is not writable."""
    try:
        folder = cache_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = _load_cache()
        data[key] = entry
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".arch-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, _cache_file())
    except OSError:
        pass


# ---------------------------------------------------------------- learning


def architecture_name(config: dict[str, Any]) -> str:
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    return ""


def needs_remote_code(config: dict[str, Any]) -> bool:
    return bool(config.get("auto_map"))


def learn(config: dict[str, Any], keys: Iterable[str] | None = None) -> ArchitectureInfo | None:
    """Architecture knowledge for `config`: the shipped file, the cache, or transformers itself.

    `keys` (the stored tensor names) choose the head class when the config names no `architectures`.
    Returns None when transformers does not know the architecture (the caller falls back to the data).
    Never runs remote code.
    """
    if not architecture_name(config):
        with _offline():  # choosing by keys builds skeletons too
            name = _choose_class(config, list(keys or ()))
        if name is None:
            return None
        config = {**config, "architectures": [name]}
    key = cache_key(config)
    for entries in (_load_knowledge(), _load_cache()):
        info = _from_entry(entries.get(key))
        if info is not None:
            return info
    info = _learn_from_transformers(config, _model_class(config))
    if info is not None:
        _store_cache(key, asdict(info))
    return info


def _choose_class(config: dict[str, Any], keys: list[str]) -> str | None:
    """The class name for a config without `architectures`, cached by model type and the shape of the keys."""
    import hashlib

    shapes = sorted({re.sub(r"\d+", "#", k) for k in keys})  # layer numbers out: one entry for every size
    digest = hashlib.sha1("\n".join(shapes).encode()).hexdigest()[:16]
    key = json.dumps(["choose", config.get("model_type"), digest])
    cached = _load_cache().get(key)
    if isinstance(cached, str):
        return cached
    cls = _class_by_keys(config, set(keys))
    if cls is None:
        return None
    _store_cache(key, cls.__name__)
    return cls.__name__


def _from_entry(entry: object) -> ArchitectureInfo | None:
    if not isinstance(entry, dict):
        return None
    try:
        return ArchitectureInfo(**entry)
    except TypeError:
        return None


def _model_class(config: dict[str, Any]) -> type[Any] | None:
    import transformers

    name = architecture_name(config)
    cls: type[Any] | None = getattr(transformers, name, None) if name else None
    if cls is not None and hasattr(cls, "config_class"):
        return cls
    candidates = _head_classes(config)
    return candidates[0] if candidates else None


def _head_classes(config: dict[str, Any]) -> list[type[Any]]:
    """The head classes transformers' auto classes build for this config's model type (then its base model).

    Asked as `AutoModelFor*.from_config` asks: the model type's config class, looked up in the public
    auto mappings."""
    import transformers

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in transformers.CONFIG_MAPPING:
        return []
    config_class = transformers.CONFIG_MAPPING[model_type]
    out: list[type[Any]] = []
    for mappings in (HEAD_MAPPINGS, ("MODEL_MAPPING",)):  # the base model only when no head class exists
        for mapping in mappings:
            try:
                found = getattr(transformers, mapping)[config_class]
            except (AttributeError, KeyError, ImportError, ValueError):  # a mapping naming a class it lacks
                continue
            for cls in found if isinstance(found, (list, tuple)) else [found]:
                if isinstance(cls, type) and cls not in out:
                    out.append(cls)
        if out:
            break
    return out


def _class_by_keys(config: dict[str, Any], keys: set[str]) -> type[Any] | None:
    """Without `architectures`: the head class whose parameter names match the stored keys best.

    A BART export whose keys are `model.encoder.*` is BartForConditionalGeneration, not the first class
    the model type maps to (BartForCausalLM).
    """
    config = _as_transformers_reads(config)
    candidates = _head_classes(config)
    if len(candidates) <= 1 or not keys:
        return candidates[0] if candidates else None
    best, best_score = candidates[0], -1
    for cls in candidates:
        try:
            model, _ = _build_skeleton(cls, config)
        except Exception:  # noqa: BLE001 - a class that does not build from this config is not it
            continue
        expected = set(_disk_names(model, set(model.state_dict())).values())
        prefix = getattr(model, "base_model_prefix", "") or ""
        score = sum(1 for k in expected if stored_key(k, keys, prefix) is not None)
        score -= sum(1 for k in keys if k not in expected)  # stored keys the class would not load
        if score > best_score:
            best, best_score = cls, score
    return best


def stored_key(expected: str, stored: Container[str], prefix: str) -> str | None:
    """The stored key a transformers loader reads for `expected`, with its base-model-prefix rule.

    transformers adds or strips exactly `base_model_prefix.` (a base model's save loads into a head
    class and back); any other difference (`draft.lm_head.weight` for `lm_head.weight`) is another tensor.
    """
    if expected in stored:
        return expected
    if prefix:
        lead = prefix + "."
        other = expected[len(lead):] if expected.startswith(lead) else lead + expected
        if other in stored:
            return other
    return None


# Fields that make transformers fetch or read another model while building this one (RT-DETR,
# DETR, Mask2Former... name a backbone checkpoint): a skeleton must never touch the network or files
# outside the model folder, and needs no pretrained weights.
NETWORK_KEYS = ("backbone", "use_pretrained_backbone", "backbone_kwargs")
# Fields whose size transformers materialises (num_labels: 30,000,000 builds a 3 GB id2label), useless for tying
LABEL_KEYS = ("id2label", "label2id")


def _sanitised(config: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `config` without the fields above, at every level of nesting."""
    out = copy.deepcopy(config)
    todo = [out]
    while todo:
        d = todo.pop()
        for key in NETWORK_KEYS + LABEL_KEYS:
            d.pop(key, None)
        if "use_timm_backbone" in d:
            d["use_timm_backbone"] = False
        if isinstance(d.get("num_labels"), int) and d["num_labels"] > 2:
            d["num_labels"] = 2
        todo.extend(v for v in d.values() if isinstance(v, dict))
    return out


_OFFLINE = threading.RLock()


@contextmanager
def _offline() -> Iterator[None]:
    """huggingface_hub offline for the whole process while a skeleton is built.

    Setting HF_HUB_OFFLINE in the environment after huggingface_hub is imported has no effect;
    its `constants.HF_HUB_OFFLINE` is read at each request, and process-global, so builds that
    set and restore it hold one lock.
    """
    from huggingface_hub import constants

    with _OFFLINE:
        before = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = before


def _reduced(config: dict[str, Any], tie: bool | None) -> dict[str, Any]:
    """A copy of `config` at depth 2 (per-layer lists and overrides cut to the first and last layer's),
    flags set to `tie`."""
    out = _sanitised(config)
    for d in [out] + [v for k, v in out.items() if k.endswith("_config") and isinstance(v, dict)]:
        before = dict(d)
        depths = {d[key] for key in DEPTH_KEYS if isinstance(d.get(key), int) and d[key] > 2}
        for key in DEPTH_KEYS:
            if isinstance(d.get(key), int) and d[key] > 2:
                d[key] = 2
        for key, value in list(d.items()):
            # per-layer lists (layer_types, mlp_layer_types...) follow the depth; first and last keep a
            # pattern's kinds (sliding..., full)
            if key in ("block_sizes", "block_repeats") and isinstance(value, list) and value:
                d[key] = [1]  # Funnel: one block of one layer
            elif isinstance(value, list) and len(value) > 2 and (
                    key in ("layer_types", "mlp_only_layers", "block_types") or len(value) in depths):
                d[key] = _per_layer_list(value)
            elif isinstance(value, dict) and value and depths and all(str(k).isdigit() for k in value):
                d[key] = _per_layer_dict(value, max(depths))
        if depths:  # counts that split the stack (Dory's blocks sum to the depth) keep describing it
            _layer_counts_follow_depth(before, d, max(depths))
        if tie is not None and d is out:
            d[FLAG] = tie
    if tie is not None:  # every sub-config's flag, so the skeleton shows transformers' full tie map
        for key, value in out.items():
            if isinstance(value, dict) and (key == "text_config" or "model_type" in value or FLAG in value):
                value[FLAG] = tie
    for k in ("auto_map", "quantization_config"):
        out.pop(k, None)
    return out


MAX_FULL_DEPTH = 1000  # a hostile config's layer count must not cost minutes


def _build_skeleton(cls: type[Any], config: dict[str, Any], tie: bool | None = True) -> tuple[Any, Any]:
    import torch

    cfg = cls.config_class.from_dict(_reduced(config, tie))
    try:
        with torch.device("meta"):
            return cls(cfg), cfg
    except Exception:  # noqa: BLE001 - some classes reject a reduced depth: build at full depth on meta
        depths = [v for k, v in config.items() if k in DEPTH_KEYS and isinstance(v, int)]
        if any(d > MAX_FULL_DEPTH for d in depths):
            raise
        cfg = cls.config_class.from_dict({**_sanitised(config), FLAG: True} if tie else _sanitised(config))
        with torch.device("meta"):
            return cls(cfg), cfg


def _learn_from_transformers(config: dict[str, Any], cls: type[Any] | None = None) -> ArchitectureInfo | None:
    import logging

    import transformers

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    logging.getLogger("transformers").setLevel(logging.ERROR)
    config = _as_transformers_reads(config)
    with _offline():
        return _learn_offline(config, cls)


def _learn_offline(config: dict[str, Any], cls: type[Any] | None = None) -> ArchitectureInfo | None:
    cls = cls or _model_class(config)
    if cls is None:
        return None
    model, cfg = _build_skeleton(cls, config)
    embed_mem = _parameter_name(model, _embedding(model, "get_input_embeddings"))
    head_mem = _parameter_name(model, _embedding(model, "get_output_embeddings")) if embed_mem else None
    tie_mem = model.get_expanded_tied_weights_keys(all_submodels=True)

    owner = _flag_owner(model, cfg, head_mem, tie_mem)
    if not owner and (isinstance(config.get("text_config"), dict) or "text_config" in getattr(cls.config_class, "sub_configs", {})):
        owner = "text_config"  # multimodal configs that take the text model's flag (Llava) read it there
    table = _flag_table(cls.config_class, config, owner)
    governed_mem: list[str] = []
    also_changes = None
    if head_mem and head_mem in {*tie_mem, *tie_mem.values()} and len(set(table.values())) > 1:
        off_doc = _with_flag(config, False, owner)
        off_model, _ = _build_skeleton(cls, off_doc, tie=None)
        off_map = off_model.get_expanded_tied_weights_keys(all_submodels=True)
        governed_mem = sorted(t for t in tie_mem if t not in off_map)
        on_names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        off_names = {n for n, _ in off_model.named_parameters(remove_duplicate=False)}
        if on_names != off_names:
            extra = sorted(on_names ^ off_names)
            also_changes = f"it builds other modules ({', '.join(extra[:3])}{'...' if len(extra) > 3 else ''})"
        else:
            also_changes = _forward_changes(cls, config, owner)
        del off_model

    names = {*tie_mem, *tie_mem.values()} | {n for n in (embed_mem, head_mem) if n}
    disk = _disk_names(model, names)
    groups: dict[str, list[str]] = {}
    for target, source in tie_mem.items():
        groups.setdefault(disk[source], []).append(disk[target])
    return ArchitectureInfo(
        architecture=cls.__name__,
        model_type=str(getattr(cfg, "model_type", config.get("model_type", ""))),
        config_class=cls.config_class.__name__,
        base_model_prefix=getattr(cls, "base_model_prefix", "") or "",
        embed=disk[embed_mem] if embed_mem else None,
        head=disk[head_mem] if head_mem else None,
        tie_groups={s: sorted(t) for s, t in sorted(groups.items())},
        governed=sorted(disk[t] for t in governed_mem),
        memory_names={disk[n]: n for n in names},
        flag_owner=owner,
        flag_table=table,
        forced=len(set(table.values())) == 1,
        default=table["absent,absent"],
        also_changes=also_changes,
    )


def _as_transformers_reads(config: dict[str, Any]) -> dict[str, Any]:
    """config.json as transformers' own reader returns it: `{"__float__": "Infinity"}` back to a float."""
    from transformers import PretrainedConfig

    decode = getattr(PretrainedConfig, "_decode_special_floats", None)
    return decode(config) if decode is not None else config


def _embedding(model: Any, getter: str) -> Any:
    """The module `get_input_embeddings`/`get_output_embeddings` returns, or None (speech, vision models)."""
    try:
        return getattr(model, getter)()
    except (NotImplementedError, AttributeError, TypeError, ValueError):
        return None


def _parameter_name(model: Any, module: Any) -> str | None:
    """The parameter's own name (`model.embed_tokens.word_embeddings.weight` for a wrapper), not the module's."""
    weight = getattr(module, "weight", None) if module is not None else None
    if weight is None or getattr(weight, "dim", lambda: 0)() != 2:
        return None
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is weight]
    if not names:
        return None
    module_names = [n for n, m in model.named_modules(remove_duplicate=False) if m is module]
    own = [f"{m}.weight" for m in module_names if f"{m}.weight" in names]
    return own[0] if own else names[0]


def _with_flag(config: dict[str, Any], value: bool, owner: str) -> dict[str, Any]:
    """`config` with the flag set as a conversion writes it: at the top level and in the governing sub-config."""
    out = copy.deepcopy(config)
    out[FLAG] = value
    if owner:
        sub = out.get(owner)
        out[owner] = {**(sub if isinstance(sub, dict) else {}), FLAG: value}
    return out


def _forward_changes(cls: type[Any], config: dict[str, Any], owner: str) -> str | None:
    """Build a tiny model with the flag on, give a flag-off model the very same weights, compare a forward.

    A flag that also scales (SwitchTransformers multiplies the decoder output by d_model**-0.5 only when
    it ties) changes logits although every tensor is the same: a conversion that flips it cannot be lossless.
    """
    import torch

    try:
        doc = tiny_config_dict(_reduced(config, None))  # sanitised and one layer deep, as every build here
        on = cls.config_class.from_dict(_with_flag(doc, True, owner))
        off = cls.config_class.from_dict(_with_flag(doc, False, owner))
        torch.manual_seed(0)
        a = cls(on).eval()
        b = cls(off).eval()
        b.load_state_dict(a.state_dict(), strict=False)
        inputs = tiny_inputs(a)
        with torch.no_grad():
            la, lb = _logits(a(**inputs)), _logits(b(**inputs))
    except Exception:  # noqa: BLE001 - a class that needs other inputs (speech, vision): not checked
        return None
    if la is None or lb is None or la.shape != lb.shape or torch.equal(la, lb):
        return None
    return f"it changes the forward with identical weights (logits differ by {(la - lb).abs().max().item():.3g})"


def _logits(out: Any) -> Any:
    import torch

    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        logits = out[0]
    return logits if isinstance(logits, torch.Tensor) else None


def tiny_inputs(model: Any) -> dict[str, Any]:
    """A fixed short token prompt (and decoder prompt for encoder-decoders)."""
    import torch

    ids = torch.arange(3, 11).unsqueeze(0)
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(model.config, "is_encoder_decoder", False):
        kwargs["decoder_input_ids"] = ids[:, :4]
    return kwargs


# ---------------------------------------------------------------- the shrinking rule

TINY_HIDDEN, TINY_HEADS, TINY_KV_HEADS, TINY_LAYERS, TINY_VOCAB = 64, 4, 2, 2, 256
TINY_HEAD_DIM = TINY_HIDDEN // TINY_HEADS
HIDDEN_KEYS = {"hidden_size", "d_model", "n_embd", "n_embed", "embed_dim", "dim", "hidden_dim", "model_dim",
               "embedding_size", "word_embed_proj_dim", "projection_dim", "text_embed_dim", "emb_dim"}
HEAD_KEYS = {"num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads",
             "decoder_attention_heads", "num_attention_heads_per_layer", "decoder_num_heads"}
KV_KEYS = {"num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num", "n_head_kv"}
HEAD_DIM_KEYS = {"head_dim", "d_head"}
LAYER_KEYS = {"num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
              "num_decoder_layers", "num_encoder_layers", "depth", "num_text_layers", "decoder_depth"}
# State-space blocks: heads x head size must equal expand x hidden (Mamba-2, Bamba, GraniteMoeHybrid)
SSM_KEYS = (("num_heads", "head_dim", "expand"), ("mamba_n_heads", "mamba_d_head", "mamba_expand"))
SSM_WIDTH_KEYS = ("mamba_d_ssm",)  # where set, the width heads x head size must equal instead (Falcon-H1)
# Widths: an int under such a name that equals a hidden size in the default is that hidden size
WIDTH_SUFFIXES = ("_dim", "_size", "_groups", "_channels")
# ...unless the name says it counts something else (entries, positions, pixels, samples, tokens)
NOT_WIDTHS = ("vocab", "codebook_size", "position", "window", "image", "patch", "sampling", "chunk", "bucket",
              "max_", "length", "kernel", "stride", "batch", "frame", "_id")


def tiny_config_dict(config: dict[str, Any]) -> dict[str, Any]:
    """One shrinking rule for every config and its sub-configs: hidden 64, intermediate 2x, 2 layers
    (per-layer lists cut to match), 4 heads (2 key/value) of 16, vocab 256, special token ids moved into it.

    Sizes the default leaves unset (None: derived by the model, or left to a released config) are filled
    with the tiny value, and sizes that must agree keep agreeing: every `*hidden_size` of a sub-config is
    the one tiny hidden size, a multi-head default stays multi-head, lists of parts that sum to a size
    (rotary sections, axial embeddings) are rescaled to the new size, bottlenecks keep their fraction of the
    hidden size, layer counts that split the stack shrink part by part (a count equal to the depth stays
    equal to it), per-layer lists of sizes shrink, and per-layer lists of layer indices point at the kept
    layers. Across sub-configs:
    widths the default sets equal to a hidden size (an adapter's input, a codec's groups) stay equal to it,
    and layer indices into a stack (a vision feature layer) point into the tiny stack.
    """
    doc = _shrink(config)
    _follow_hidden_sizes(config, doc, _hidden_sizes(config))
    _layer_indices_in_depth(doc)
    _token_ids_in_vocab(doc, list(range(TINY_VOCAB - 64, TINY_VOCAB)))
    for k in ("auto_map", "quantization_config", "_name_or_path"):
        doc.pop(k, None)
    return doc


def _tiny_size(key: str, value: int | None) -> int | None:
    """The tiny value of one size field, or None to leave it (`value` None: the default leaves it unset)."""
    def smaller(tiny: int) -> int | None:
        return tiny if value is None or value > tiny else None

    if key in HIDDEN_KEYS or "hidden_size" in key:  # text_hidden_size, hidden_size_global...
        return smaller(TINY_HIDDEN)
    if value is None:  # only what a model needs and transformers derives the same way
        if key in HEAD_KEYS or key in KV_KEYS:
            return TINY_HEADS
        if key in HEAD_DIM_KEYS:
            return TINY_HEAD_DIM
        if key == "vocab_size" or key in LAYER_KEYS:
            return TINY_VOCAB if key == "vocab_size" else TINY_LAYERS
        return None
    if "intermediate_size" in key or key.endswith(("ffn_dim", "d_ff", "n_inner", "mlp_dim")):
        return 2 * TINY_HIDDEN if value > 0 else None
    if key in LAYER_KEYS:
        return smaller(TINY_LAYERS)
    if key in HEAD_KEYS or key.endswith(("attention_heads", "num_heads", "_n_heads")):  # decoder_..., index_...
        return smaller(TINY_HEADS)
    if key in KV_KEYS:
        return smaller(TINY_KV_HEADS)
    if key in HEAD_DIM_KEYS:
        return smaller(TINY_HEAD_DIM)
    if "vocab_size" in key or key.endswith("_vocab"):  # vocab_size_per_layer_input, hash_byte_group_vocab
        return smaller(TINY_VOCAB)
    if "experts" in key and "per_tok" not in key:
        return smaller(4)
    if key.endswith("per_tok") or key in ("top_k", "moe_topk"):
        return smaller(2)
    if key.endswith("_rank") and value > TINY_HIDDEN:
        return TINY_HIDDEN // 2
    return None


def _shrink(d: dict[str, Any]) -> dict[str, Any]:
    out = dict(d)
    old_layers = {v for k, v in d.items() if k in LAYER_KEYS and isinstance(v, int) and v > TINY_LAYERS}
    depth = max(old_layers, default=TINY_LAYERS)
    for key, value in d.items():
        if isinstance(value, dict) and value and all(str(k).isdigit() and int(k) < depth for k in value):
            out[key] = _per_layer_dict(value, depth)  # keyed by layer index (not Aria's patches -> queries)
        elif isinstance(value, dict):
            out[key] = _shrink(value)
        elif not isinstance(key, str) or isinstance(value, bool):
            continue
        elif isinstance(value, list):
            if old_layers and len(value) in old_layers:
                out[key] = _sizes_shrunk(key, _per_layer_list(value))
            elif key == "depths" and all(isinstance(v, int) and v > 1 for v in value):
                out[key] = [1] * len(value)  # layers per stage (Swin, audio codecs): one each
        elif value is None or isinstance(value, int):
            tiny = _tiny_size(key, value)
            if tiny is not None:
                out[key] = tiny
    _keep_agreements(d, out, max(old_layers, default=0))
    return out


def _sizes_shrunk(key: str, values: list[Any]) -> list[Any]:
    """A per-layer list of a size (Gemma 3n's intermediate size per layer) shrunk as that size is."""
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return values
    return [v if (tiny := _tiny_size(key, v)) is None else tiny for v in values]


def _per_layer_list(values: list[Any], depth: int = TINY_LAYERS) -> list[Any]:
    """Per-layer lists follow the depth: the first layers and the last keep a pattern's kinds (sliding..., full).

    A list of layer indices (each layer names itself or an earlier one: KV sharing) is renumbered so the
    kept layers point at kept layers."""
    kept = values[:depth - 1] + values[-1:]
    if all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= i for i, v in enumerate(values)):
        last = len(values) - 1
        return kept[:-1] + [depth - 1 if kept[-1] == last else min(kept[-1], depth - 1)]
    return kept


def _keep_agreements(old: dict[str, Any], new: dict[str, Any], old_depth: int) -> None:
    """Sizes in one config that transformers requires to agree, kept agreeing after the shrink."""
    def size(key: str) -> Any:
        return new.get(key)

    # multi-head attention stays multi-head (some classes refuse grouped key/value heads)
    for kv in sorted(KV_KEYS & old.keys()):
        heads = next((h for h in sorted(HEAD_KEYS) if isinstance(old.get(h), int)), None)
        if heads and old[kv] == old[heads] and isinstance(size(heads), int):
            new[kv] = size(heads)
    # d_head = d_model / n_head where the default has it so
    hidden = next((k for k in sorted(HIDDEN_KEYS) if isinstance(old.get(k), int) and old[k] > 0), None)
    heads = next((h for h in sorted(HEAD_KEYS) if isinstance(old.get(h), int) and old[h] > 0), None)
    if hidden and heads:
        for hd in sorted(HEAD_DIM_KEYS & old.keys()):
            if old[hd] == old[hidden] // old[heads]:
                new[hd] = size(hidden) // size(heads)
    # state-space heads x head size = an explicit width, or expand x hidden
    for n_heads, head_dim, _ in SSM_KEYS:
        for width in SSM_WIDTH_KEYS:
            if all(isinstance(old.get(k), int) and isinstance(new.get(k), int) for k in (n_heads, head_dim, width)) \
                    and old[n_heads] * old[head_dim] == old[width]:
                new[width] = new[n_heads] * new[head_dim]
    for n_heads, head_dim, expand in SSM_KEYS:
        if hidden and all(isinstance(old.get(k), int) and isinstance(new.get(k), int)
                          for k in (n_heads, head_dim, expand)) and \
                old[n_heads] * old[head_dim] == old[hidden] * old[expand]:
            new[n_heads] = max(1, size(hidden) * new[expand] // new[head_dim])
            if new[n_heads] * new[head_dim] != size(hidden) * new[expand]:
                new[head_dim] = size(hidden) * new[expand] // new[n_heads]
    # lists of parts summing to a size (mrope_section = head_dim / 2, Reformer's axial dims = hidden)
    sizes = []
    if hidden:
        sizes.append((old[hidden], size(hidden)))
    # the rotary dimension: `qk_rope_head_dim` where attention has one (MLA), else the head size
    rope = "qk_rope_head_dim" if isinstance(old.get("qk_rope_head_dim"), int) else "head_dim"
    hd_old = old.get(rope) if isinstance(old.get(rope), int) else (
        old[hidden] // old[heads] if hidden and heads else None)
    hd_new = size(rope) if isinstance(size(rope), int) else (
        size(hidden) // size(heads) if hidden and heads else None)
    if hd_old and hd_new:
        sizes.append((hd_old // 2, hd_new // 2))
    # (in this config and its plain dicts such as rope_parameters, not in its sub-configs)
    for container in [new] + [v for v in new.values() if isinstance(v, dict) and "model_type" not in v]:
        for key, value in list(container.items()):
            if isinstance(value, (list, tuple)) and len(value) > 1 and all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                for was, now in sizes:
                    if sum(value) == was and was != now:
                        container[key] = _parts(list(value), now)
                        break
    # a bottleneck (an intermediate size a whole fraction of the hidden size) keeps its fraction, where a
    # validator derives it from a hidden size (FunAsrNano's adaptor: the text hidden size // 4)
    if hidden:
        for key, value in old.items():
            if isinstance(key, str) and "intermediate_size" in key and isinstance(value, int) and \
                    not isinstance(value, bool) and 0 < value < old[hidden] and old[hidden] % value == 0 and \
                    size(hidden) % (old[hidden] // value) == 0:
                new[key] = size(hidden) // (old[hidden] // value)
    _layer_counts_follow_depth(old, new, old_depth)


def _layer_counts_follow_depth(old: dict[str, Any], new: dict[str, Any], old_depth: int) -> None:
    """Counts of layers (`*_layers`) that describe the depth keep describing the tiny depth.

    Counts that split the stack into parts (Dory's input + recurrent + output blocks, which sum to the depth;
    Gemma 3n's last KV-sharing layers, a count that cuts the stack where its per-layer pattern repeats):
    each part shrinks as a stack of its own, to its first and last layer, and per-layer lists are cut part
    by part, so every part keeps its kinds (a part of a repeating pattern keeps its first and last kind).
    A count equal to the depth (every layer windowed, every layer shared) stays equal to it.
    """
    depth_key = next((k for k in sorted(LAYER_KEYS) if old.get(k) == old_depth), None) if old_depth else None
    if depth_key is None:
        return
    counts = [k for k, v in old.items() if k != depth_key and isinstance(k, str) and k.endswith("_layers")
              and k not in LAYER_KEYS and isinstance(v, int) and not isinstance(v, bool) and v > 0]
    parts: list[str | None] = []
    if len(counts) > 1 and sum(old[k] for k in counts) == old_depth:
        parts = list(counts)
    else:
        period = next((_period(v) for k, v in old.items() if isinstance(k, str) and k.endswith("_types")
                       and isinstance(v, list) and len(v) == old_depth and _period(v)), None)
        trailing = [k for k in counts if period and old[k] < old_depth and old[k] % period == 0
                    and old_depth % period == 0 and "every" not in k]  # every_n_layers: a period, not a part
        if len(trailing) == 1:
            parts = [None, trailing[0]]  # None: the layers before the trailing part
    if parts:
        old_sizes = [old_depth - sum(old[k] for k in parts if k) if k is None else old[k] for k in parts]
        new_sizes = [min(n, TINY_LAYERS) for n in old_sizes]
        for k, n in zip(parts, new_sizes):
            if k is not None:
                new[k] = n
        new[depth_key] = sum(new_sizes)
        for k, v in old.items():
            if isinstance(v, list) and len(v) == old_depth:
                new[k] = _sizes_shrunk(k, _per_part_list(v, old_sizes)) if not _is_layer_index_list(v) else \
                    _per_layer_list(v, new[depth_key])
    for k in counts:
        if k not in parts and old[k] == old_depth:
            new[k] = new[depth_key]


def _period(values: list[Any]) -> int | None:
    """The length of the pattern a per-layer list repeats (sliding x4, full), None if uniform or none."""
    if len({repr(v) for v in values}) < 2:
        return None
    return next((p for p in range(2, len(values) // 2 + 1)
                 if all(v == values[i % p] for i, v in enumerate(values))), None)


def _per_part_list(values: list[Any], part_sizes: list[int]) -> list[Any]:
    """A per-layer list cut part by part: each part's first and last entries."""
    out: list[Any] = []
    start = 0
    for n in part_sizes:
        part = values[start:start + n]
        out += part if n <= TINY_LAYERS else part[:TINY_LAYERS - 1] + part[-1:]
        start += n
    return out


def _is_layer_index_list(values: list[Any]) -> bool:
    """Each layer names itself or an earlier one (KV sharing)."""
    return all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= i for i, v in enumerate(values))


def _hidden_sizes(config: dict[str, Any]) -> set[int]:
    """Every hidden size in a config and its sub-configs that the rule shrinks."""
    found = {v for k, v in config.items() if isinstance(k, str) and (k in HIDDEN_KEYS or "hidden_size" in k)
             and isinstance(v, int) and not isinstance(v, bool) and v > TINY_HIDDEN}
    for value in config.values():
        if isinstance(value, dict):
            found |= _hidden_sizes(value)
    return found


def _follow_hidden_sizes(old: dict[str, Any], new: dict[str, Any], hidden_sizes: set[int]) -> None:
    """Widths the default sets equal to a hidden size, here or in another sub-config, left unchanged by the
    rest of the rule, become the tiny hidden size: transformers requires many of them to agree (an adapter's
    input and output width, WavTokenizer's codebook width, a codec's depthwise groups), and every hidden
    size is the same tiny one."""
    for key, value in old.items():
        if isinstance(value, dict) and isinstance(new.get(key), dict):
            _follow_hidden_sizes(value, new[key], hidden_sizes)
        elif isinstance(key, str) and key.endswith(WIDTH_SUFFIXES) and not any(w in key for w in NOT_WIDTHS) \
                and isinstance(value, int) and not isinstance(value, bool) and value in hidden_sizes \
                and new.get(key) == value:
            new[key] = TINY_HIDDEN


def _layer_indices_in_depth(doc: dict[str, Any]) -> None:
    """Layer indices into a stack (`*_layer`: an int or a list, Molmo2's `vision_feature_layer` [24, 18]) at or
    beyond the tiny depth point into it: the deepest at the last layer, the others at the first."""
    for key, value in doc.items():
        if isinstance(value, dict):
            _layer_indices_in_depth(value)
            continue
        if not isinstance(key, str) or not key.endswith("_layer") or key.startswith(("num_", "n_")):
            continue  # n_layer, num_attention_heads_per_layer: counts, not indices
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values) or \
                max(values) < TINY_LAYERS:
            continue
        moved = [v if v < 0 else TINY_LAYERS - 1 if v == max(values) else 0 for v in values]
        doc[key] = moved if isinstance(value, list) else moved[0]


def _parts(values: list[int], total: int) -> list[int]:
    """`values` rescaled to sum to `total`, each at least 1 where possible, the rounding put in the first."""
    scaled = [max(1, v * total // sum(values)) for v in values]
    scaled[0] += total - sum(scaled)
    return scaled if scaled[0] > 0 else values


def _per_layer_dict(overrides: dict[Any, Any], old_depth: int) -> dict[str | int, Any]:
    """Per-layer overrides keyed by layer index: the first and the last layer's, as for per-layer lists."""
    by_index = {int(k): (k, v) for k, v in overrides.items()}
    out: dict[str | int, Any] = {}
    for new, old in ((0, 0), (TINY_LAYERS - 1, old_depth - 1)):
        if old in by_index:
            k, v = by_index[old]
            out[str(new).zfill(len(str(k))) if isinstance(k, str) else new] = _shrink(v) if isinstance(v, dict) else v
    return out


def _token_ids_in_vocab(d: dict[str, Any], free: list[int]) -> None:
    for key, value in list(d.items()):
        if isinstance(value, dict):
            _token_ids_in_vocab(value, free)
        elif not isinstance(key, str) or not free:
            continue
        elif key.endswith(("_token_id", "_token_index", "_id")) and isinstance(value, int) and \
                not isinstance(value, bool) and value >= TINY_VOCAB:
            d[key] = free.pop()
        elif key.endswith("_token_id") and isinstance(value, list):
            d[key] = [v if not isinstance(v, int) or v < TINY_VOCAB or not free else free.pop() for v in value]


def _disk_names(model: Any, names: set[str]) -> dict[str, str]:
    """Memory name -> the key `save_pretrained` writes (transformers 5 renames some on load)."""
    import torch

    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # older transformers: names are not renamed
        return {n: n for n in names}

    def revert(subset: Iterable[str]) -> dict[str, str]:
        """The names followed by identity: placeholders are distinct objects, so a renamed one maps back."""
        placeholders = {n: torch.empty(0) for n in subset}
        reverted = revert_weight_conversion(model, dict(placeholders))
        back = {id(t): k for k, t in reverted.items()}
        return {n: back[id(t)] for n, t in placeholders.items() if id(t) in back}

    def revert_one(name: str) -> str:
        """A converter that makes a new tensor (Inkling2 pads its head back to the stored vocabulary:
        `lm_head.weight` is saved as `model.llm.unembed.weight`) loses identity: alone, its one output is it.
        A parameter saved in parts (Molmo2's embedding: `wte.embedding` and `wte.new_embedding`, joined on
        load) is named by its first part: the base vocabulary's rows."""
        try:
            reverted = revert_weight_conversion(model, {name: torch.empty(0)})
        except Exception:  # noqa: BLE001 - a converter that needs its whole set (split/merge): not renamed
            return name
        return next(iter(reverted), name)

    try:
        out = revert(names)
    except Exception:  # noqa: BLE001 - a converter that needs its whole set: one name at a time
        out = {}
    return {n: out[n] if n in out else revert_one(n) for n in names}


def _flag_owner(model: Any, cfg: object, head_mem: str | None, tie_mem: dict[str, str]) -> str:
    """Path of the sub-config whose flag governs the head ("" for the top-level config)."""
    from transformers import PreTrainedModel

    if head_mem is None:
        return ""
    owner = model
    for name, sub in model.named_modules():
        if isinstance(sub, PreTrainedModel) and name and head_mem.startswith(name + "."):
            if sub.get_expanded_tied_weights_keys(all_submodels=False):
                owner = sub
    if owner.config is cfg:
        return ""
    for attr, value in vars(cfg).items():
        if value is owner.config:
            return attr
    return ""


def _flag_table(config_class: Any, config: dict[str, Any], owner: str) -> dict[str, bool]:
    """Evaluate the config class on every combination of the top-level flag and the owner sub-config's flag."""
    base = {k: v for k, v in config.items() if k not in (FLAG, "auto_map", "quantization_config")}
    table = {}
    for top in STATES:
        for sub in STATES if owner else ("absent",):
            doc = copy.deepcopy(base)
            if top != "absent":
                doc[FLAG] = top == "true"
            if owner:
                part = dict(doc.get(owner) or {})
                part.pop(FLAG, None)
                if sub != "absent":
                    part[FLAG] = sub == "true"
                if part:
                    doc[owner] = part
            cfg = config_class.from_dict(_reduced(doc, None))
            target = getattr(cfg, owner) if owner else cfg
            table[f"{top},{sub}"] = bool(getattr(target, FLAG, False))
    if not owner:
        for top in STATES:
            for sub in STATES[1:]:
                table[f"{top},{sub}"] = table[f"{top},absent"]
    return table
