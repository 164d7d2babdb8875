"""Embedding and head names for checkpoints that carry no config transformers can read.

Pairs are (embedding key, head key) as stored; the first pair with a stored
member wins.  Prefixes added by wrappers (`torch.compile`'s `_orig_mod.`, DDP's
`module.`) are looked through but the stored key is what gets reported.
"""

from __future__ import annotations

from collections.abc import Iterable

GGUF_PAIRS: tuple[tuple[str, str | None], ...] = (("token_embd.weight", "output.weight"),)  # llama.cpp's: in GGUF
KNOWN_PAIRS: tuple[tuple[str, str | None], ...] = (
    ("model.embed_tokens.weight", "lm_head.weight"),  # Llama, Mistral, Qwen, Gemma, Phi...
    ("tok_embeddings.weight", "output.weight"),  # Meta original, TorchChat, torchtune
    ("model.tok_embeddings.weight", "model.output.weight"),  # TorchChat wrapped in `model.`
    ("transformer.wte.weight", "lm_head.weight"),  # GPT-2, GPT-J, nanoGPT
    ("wte.weight", "lm_head.weight"),  # old GPT-2 files
    ("transformer.wte.weight", "transformer.ff_out.weight"),  # OLMo 1 native
    ("gpt_neox.embed_in.weight", "embed_out.weight"),  # GPT-NeoX / Pythia
    ("transformer.word_embeddings.weight", "lm_head.weight"),  # Falcon, BLOOM
    ("word_embeddings.weight", "lm_head.weight"),  # BLOOM files
    ("model.decoder.embed_tokens.weight", "lm_head.weight"),  # OPT
    ("model.shared.weight", "lm_head.weight"),  # BART
    ("shared.weight", "lm_head.weight"),  # T5
    ("backbone.embeddings.weight", "lm_head.weight"),  # Mamba
    ("model.language_model.embed_tokens.weight", "lm_head.weight"),  # VLMs, transformers 5 names
    ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"),  # VLMs, older names
    ("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"),
    ("roberta.embeddings.word_embeddings.weight", "lm_head.decoder.weight"),
    ("embeddings.word_embeddings.weight", None),  # encoders without a head
    *GGUF_PAIRS,
)
WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def find_pair(keys: Iterable[str], pairs: tuple[tuple[str, str | None], ...] = KNOWN_PAIRS
              ) -> tuple[str, str | None] | None:
    """(embedding key, head key) as stored, or None when no known name is present (`pairs`: those looked for;
    a GGUF file's lone `output.weight` is llama.cpp's head, not Meta's, whose embedding is `tok_embeddings`).

    When the head is not stored, the head key returned is the family's canonical one
    (with the same wrapper prefix as the embedding).
    """
    by_plain: dict[str, str] = {}
    for key in keys:
        by_plain.setdefault(strip_wrappers(key), key)
    # a stored embedding decides the family; only then may a lone stored head
    for need_embed in (True, False):
        for embed, head in pairs:
            present = embed in by_plain if need_embed else bool(head and head in by_plain)
            if present:
                stored_embed = by_plain.get(embed)
                prefix = stored_embed[: len(stored_embed) - len(embed)] if stored_embed else ""
                stored_head = by_plain.get(head, prefix + head) if head else None
                return stored_embed or prefix + embed, stored_head
    return None
