"""What transformers knows about an architecture: tensor names, tie map, and how the flag is read.

Everything here is learned from transformers itself (a one-layer skeleton on the
meta device and the config class), never from a hand-kept table, and cached in
`$XDG_CACHE_HOME/tieconv` keyed by transformers version and architecture, because
importing any config class imports torch (seconds) and most inspections need no torch.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

CACHE_SCHEMA = 1
FLAG = "tie_word_embeddings"
# config keys that set a model's depth; reduced to 1 so a 5,000-layer config builds in milliseconds
DEPTH_KEYS = (
    "num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
    "num_decoder_layers", "num_encoder_layers",
)
STATES = ("absent", "true", "false")


@dataclass(frozen=True)
class ArchitectureInfo:
    """Names are keys as stored on disk (what `save_pretrained` writes)."""

    architecture: str
    model_type: str
    has_head: bool
    embed: str
    head: str | None
    tie_map: dict[str, str]  # target -> source, disk names, with the flag on
    memory_names: dict[str, str]  # disk name -> name in the transformers module
    flag_table: dict[str, bool]  # "top,text" state -> effective flag
    has_text_config: bool
    forced: bool  # the config class ignores the file's flag
    default: bool  # the flag when the file omits it
    config_class: str

    def effective_flag(self, config: dict) -> tuple[bool, str, bool | None, bool | None]:
        """(value, source, raw top-level value, raw text_config value) for a config.json dict."""
        top = _raw_flag(config)
        text_cfg = config.get("text_config")
        text = _raw_flag(text_cfg) if isinstance(text_cfg, dict) and self.has_text_config else None
        value = self.flag_table[f"{_state(top)},{_state(text)}"]
        if top is not None and top == value and not self.forced:
            source = f"config.json:{FLAG}"
        elif text is not None and text == value and not self.forced:
            source = f"config.json:text_config.{FLAG}"
        elif self.forced:
            source = f"forced by {self.config_class}"
        else:
            source = "class default"
        return value, source, top, text


def _raw_flag(config) -> bool | None:
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


def _cache_key(config: dict) -> str:
    return f"{architecture_name(config)}|{config.get('model_type')}|{'text_config' in config}"


def _load_cache() -> dict:
    try:
        with open(_cache_file(), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store_cache(key: str, info: ArchitectureInfo) -> None:
    """Write atomically; go on silently when the cache folder is not writable."""
    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        data = _load_cache()
        data[key] = asdict(info)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".arch-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, _cache_file())
    except OSError:
        pass


# ---------------------------------------------------------------- learning


def architecture_name(config: dict) -> str:
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    return ""


def needs_remote_code(config: dict) -> bool:
    return bool(config.get("auto_map"))


def learn(config: dict) -> ArchitectureInfo | None:
    """Architecture knowledge for `config`, from the cache or from transformers.

    Returns None when transformers does not know the architecture (the caller
    falls back to the data).  Never runs remote code.
    """
    key = _cache_key(config)
    cached = _load_cache().get(key)
    if isinstance(cached, dict):
        try:
            return ArchitectureInfo(**cached)
        except TypeError:
            pass
    info = _learn_from_transformers(config)
    if info is not None:
        _store_cache(key, info)
    return info


def _model_class(config: dict):
    import transformers

    name = architecture_name(config)
    cls = getattr(transformers, name, None) if name else None
    if cls is not None and hasattr(cls, "config_class"):
        return cls
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        return None
    from transformers import AutoConfig

    try:
        cfg_cls = type(AutoConfig.for_model(model_type))
    except (ValueError, KeyError):
        return None
    for auto in ("AutoModelForCausalLM", "AutoModelForSeq2SeqLM", "AutoModelForMaskedLM", "AutoModel"):
        mapping = getattr(transformers, auto)._model_mapping
        if cfg_cls in mapping:
            return mapping[cfg_cls]
    return None


# Fields that make transformers fetch or read another model while building this one (RT-DETR,
# DETR, Mask2Former... name a backbone checkpoint): a skeleton must never touch the network or files
# outside the model folder, and needs no pretrained weights.
NETWORK_KEYS = ("backbone", "use_pretrained_backbone", "backbone_kwargs")
# Fields whose size transformers materialises (num_labels: 30,000,000 builds a 3 GB id2label), useless for tying
LABEL_KEYS = ("id2label", "label2id")


def _sanitised(config: dict) -> dict:
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


_OFFLINE = threading.Lock()


@contextmanager
def _offline():
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


def _reduced(config: dict, tie: bool | None) -> dict:
    """A copy of `config` at depth 1 (and per-layer lists cut to match), flags set to `tie`."""
    out = _sanitised(config)
    for d in [out] + [v for k, v in out.items() if k.endswith("_config") and isinstance(v, dict)]:
        for key in DEPTH_KEYS:
            if isinstance(d.get(key), int) and d[key] > 1:
                d[key] = 1
        for key, value in list(d.items()):
            if key in ("layer_types", "mlp_only_layers", "block_types") and isinstance(value, list):
                d[key] = value[:1]
            elif key in ("block_sizes", "block_repeats") and isinstance(value, list) and value:
                d[key] = [1]  # Funnel: one block of one layer
        if tie is not None and d is out:
            d[FLAG] = tie
    if tie is not None and isinstance(out.get("text_config"), dict):
        out["text_config"][FLAG] = tie
    for k in ("auto_map", "quantization_config"):
        out.pop(k, None)
    return out


MAX_FULL_DEPTH = 1000  # a hostile config's layer count must not cost minutes


def _build_skeleton(cls, config: dict):
    import torch

    cfg = cls.config_class.from_dict(_reduced(config, True))
    try:
        with torch.device("meta"):
            return cls(cfg), cfg
    except Exception:  # noqa: BLE001 - some classes reject a reduced depth: build at full depth on meta
        depths = [v for k, v in config.items() if k in DEPTH_KEYS and isinstance(v, int)]
        if any(d > MAX_FULL_DEPTH for d in depths):
            raise
        cfg = cls.config_class.from_dict({**_sanitised(config), FLAG: True})
        with torch.device("meta"):
            return cls(cfg), cfg


def _learn_from_transformers(config: dict) -> ArchitectureInfo | None:
    import logging

    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with _offline():
        return _learn_offline(config)


def _learn_offline(config: dict) -> ArchitectureInfo | None:
    cls = _model_class(config)
    if cls is None:
        return None
    model, cfg = _build_skeleton(cls, config)
    modules = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    inp = model.get_input_embeddings()
    out = model.get_output_embeddings()
    embed_mem = f"{modules[id(inp)]}.weight"
    head_mem = f"{modules[id(out)]}.weight" if out is not None and id(out) in modules else None
    tie_mem = model.get_expanded_tied_weights_keys(all_submodels=True)

    names = {embed_mem, *tie_mem, *tie_mem.values()} | ({head_mem} if head_mem else set())
    disk = _disk_names(model, names)

    info_cfg = _flag_owner(model, cfg, head_mem, tie_mem)
    table, has_text = _flag_table(cls.config_class, config, info_cfg)
    return ArchitectureInfo(
        architecture=cls.__name__,
        model_type=str(getattr(cfg, "model_type", config.get("model_type", ""))),
        has_head=head_mem is not None,
        embed=disk[embed_mem],
        head=disk[head_mem] if head_mem else None,
        tie_map={disk[t]: disk[s] for t, s in tie_mem.items()},
        memory_names={disk[n]: n for n in names},
        flag_table=table,
        has_text_config=has_text,
        forced=table["false,absent"] is True,
        default=table["absent,absent"],
        config_class=cls.config_class.__name__,
    )


def _disk_names(model, names: set[str]) -> dict[str, str]:
    """Memory name -> the key `save_pretrained` writes (transformers 5 renames some on load)."""
    import torch

    try:
        from transformers.core_model_loading import revert_weight_conversion

        placeholders = {n: torch.empty(0) for n in names}  # distinct objects, so identity maps back
        reverted = revert_weight_conversion(model, dict(placeholders))
        back = {id(t): k for k, t in reverted.items()}
        return {n: back.get(id(t), n) for n, t in placeholders.items()}
    except Exception:  # noqa: BLE001 - older transformers: names are not renamed
        return {n: n for n in names}


def _flag_owner(model, cfg, head_mem, tie_mem) -> str:
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


def _flag_table(config_class, config: dict, owner: str) -> tuple[dict[str, bool], bool]:
    """Evaluate the config class on every combination of the top-level and text_config flag."""
    base = {k: v for k, v in config.items() if k not in (FLAG, "auto_map", "quantization_config")}
    has_text = isinstance(config.get("text_config"), dict) or "text_config" in getattr(config_class, "sub_configs", {})
    table = {}
    for top in STATES:
        for text in STATES if has_text else ("absent",):
            doc = copy.deepcopy(base)
            if top != "absent":
                doc[FLAG] = top == "true"
            if has_text:
                sub = dict(doc.get("text_config") or {})
                sub.pop(FLAG, None)
                if text != "absent":
                    sub[FLAG] = text == "true"
                doc["text_config"] = sub
            cfg = config_class.from_dict(_reduced(doc, None))
            target = getattr(cfg, owner) if owner else cfg
            table[f"{top},{text}"] = bool(getattr(target, FLAG, False))
    if not has_text:
        for top in STATES:
            for text in STATES[1:]:
                table[f"{top},{text}"] = table[f"{top},absent"]
    return table, has_text
