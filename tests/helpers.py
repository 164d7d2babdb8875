"""Small builders for checkpoints the fixtures do not cover, written by the real libraries."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

LLAMA = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)


def write_config(folder: Path, **config) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))


def llama_config(**overrides) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **LLAMA, **overrides}


def write_llama(folder: Path, *, tie: bool | None, tensors: dict[str, torch.Tensor], **overrides) -> Path:
    cfg = llama_config(**overrides)
    if tie is not None:
        cfg["tie_word_embeddings"] = tie
    write_config(folder, **cfg)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def embed_and_head(seed: int = 0, same: bool = False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    embed = torch.randn(64, 16, generator=g).to(dtype)
    head = embed.clone() if same else torch.randn(64, 16, generator=g).to(dtype)
    return embed, head


# one checkpoint in each verdict: a fixture, or a builder of one (`undecided` is `llama-duplicated` not compared)
VERDICT_FIXTURES = {
    "tied": "llama-tied", "duplicated": "llama-duplicated", "untied": "llama-untied", "tieable": "llama-tieable",
    "conflict": "llama-conflict", "head-missing": "llama-head-missing", "embed-missing": "llama-embed-missing",
    "no-head": "bert-encoder", "undecided": "llama-duplicated",
}


def write_embed_missing_untied(folder: Path) -> Path:
    """`embed-missing` whose flag unties: the embedding is lost (the case `untie` refuses)."""
    _, head = embed_and_head()
    return write_llama(folder, tie=False, tensors={"lm_head.weight": head})


def stored_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors folder or file, as stored (read by safetensors itself)."""
    from safetensors.torch import load_file

    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    return {k: v for f in files for k, v in load_file(f).items()}


def finish_gguf(writer) -> None:
    """Write everything a gguf.GGUFWriter was given (header, metadata, tensors) and close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
