"""Inspect at size: a DeepSeek-V3-shaped index (~92k tensors, 161 shards) and the cold start.

1. Writes a sparse checkpoint of DeepSeek-V3's shape (61 layers, 256 routed experts, vocab 129280,
   hidden 7168, FP8 weights): real safetensors headers, data left as holes, so ~690 GB of shards take
   a few MB of disk. The embedding and head get a few distinct bytes, so comparing them stops early.
2. Times, each as a whole process with the page cache warm, `tieconv inspect` (tieconv's cache warm)
   against `huggingface_hub.get_local_safetensors_metadata` on the same folder, and prints the ratio.
3. Times the cold start (an empty tieconv cache) of `tieconv inspect` on a tiny Llama checkpoint (in the
   shipped knowledge file) and a tiny Llava with a Mistral text model (not in it: learned live), and says
   whether torch or transformers was imported (they are not for architectures in the shipped knowledge
   file made with the installed transformers).

Usage:  python bench/bench_index.py [--dir bench/out/deepseek-v3-shape] [--repeat 3] [--cold-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB, HIDDEN, LAYERS, DENSE_LAYERS, EXPERTS, MOE_INTER, INTER, SHARDS = 129280, 7168, 61, 3, 256, 2048, 18432, 161
Q_LORA, KV_LORA, HEADS, QK_HEAD, V_HEAD, ROPE = 1536, 512, 128, 192, 128, 64


def tensors() -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) in DeepSeek-V3's order: FP8 matrices with their F32 inverse scales."""
    out = [("model.embed_tokens.weight", "BF16", (VOCAB, HIDDEN))]

    def fp8(name, rows, cols):
        out.append((name + ".weight", "F8_E4M3", (rows, cols)))
        out.append((name + ".weight_scale_inv", "F32", ((rows + 127) // 128, (cols + 127) // 128)))

    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out.append((p + "input_layernorm.weight", "BF16", (HIDDEN,)))
        out.append((p + "post_attention_layernorm.weight", "BF16", (HIDDEN,)))
        fp8(p + "self_attn.q_a_proj", Q_LORA, HIDDEN)
        out.append((p + "self_attn.q_a_layernorm.weight", "BF16", (Q_LORA,)))
        fp8(p + "self_attn.q_b_proj", HEADS * QK_HEAD, Q_LORA)
        fp8(p + "self_attn.kv_a_proj_with_mqa", KV_LORA + ROPE, HIDDEN)
        out.append((p + "self_attn.kv_a_layernorm.weight", "BF16", (KV_LORA,)))
        fp8(p + "self_attn.kv_b_proj", HEADS * (QK_HEAD - ROPE + V_HEAD), KV_LORA)
        fp8(p + "self_attn.o_proj", HIDDEN, HEADS * V_HEAD)
        if i < DENSE_LAYERS:
            for m, (r, c) in {"gate_proj": (INTER, HIDDEN), "up_proj": (INTER, HIDDEN),
                              "down_proj": (HIDDEN, INTER)}.items():
                fp8(p + f"mlp.{m}", r, c)
            continue
        out.append((p + "mlp.gate.weight", "BF16", (EXPERTS, HIDDEN)))
        out.append((p + "mlp.gate.e_score_correction_bias", "F32", (EXPERTS,)))
        for e in [f"experts.{j}" for j in range(EXPERTS)] + ["shared_experts"]:
            for m, (r, c) in {"gate_proj": (MOE_INTER, HIDDEN), "up_proj": (MOE_INTER, HIDDEN),
                              "down_proj": (HIDDEN, MOE_INTER)}.items():
                fp8(p + f"mlp.{e}.{m}", r, c)
    out.append(("model.norm.weight", "BF16", (HIDDEN,)))
    out.append(("lm_head.weight", "BF16", (VOCAB, HIDDEN)))
    return out


SIZES = {"BF16": 2, "F32": 4, "F8_E4M3": 1}


def make_checkpoint(folder: Path) -> None:
    """Shards with real safetensors headers and holes for data (ftruncate): sparse, a few MB on disk."""
    if (folder / "model.safetensors.index.json").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    entries = tensors()
    per_shard = -(-len(entries) // SHARDS)
    weight_map = {}
    for s in range(SHARDS):
        chunk = entries[s * per_shard:(s + 1) * per_shard]
        name = f"model-{s + 1:05d}-of-{SHARDS:05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for key, dtype, shape in chunk:
            n = SIZES[dtype]
            for d in shape:
                n *= d
            header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[key] = name
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        with open(folder / name, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            start = f.tell()
            for key, _, _ in chunk:  # a few distinct bytes: the embedding/head comparison stops at once
                if key in ("model.embed_tokens.weight", "lm_head.weight"):
                    f.seek(start + header[key]["data_offsets"][0])
                    f.write(os.urandom(64))
            f.truncate(start + offset)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": VOCAB,
              "hidden_size": HIDDEN, "intermediate_size": INTER, "moe_intermediate_size": MOE_INTER,
              "num_hidden_layers": LAYERS, "first_k_dense_replace": DENSE_LAYERS, "n_routed_experts": EXPERTS,
              "n_shared_experts": 1, "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
              "q_lora_rank": Q_LORA, "kv_lora_rank": KV_LORA, "qk_nope_head_dim": QK_HEAD - ROPE,
              "qk_rope_head_dim": ROPE, "v_head_dim": V_HEAD, "tie_word_embeddings": False}
    (folder / "config.json").write_text(json.dumps(config))


def timed(code: str, env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - start, out.stdout.strip()


def index_ratio(folder: Path, repeat: int) -> None:
    """Warm inspect of the DeepSeek-V3-shaped index against huggingface_hub's header parse."""
    make_checkpoint(folder)
    n = len(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"])
    print(f"{folder}: {n} tensors in {SHARDS} shards")

    inspect = f"import tieconv; r = tieconv.inspect({str(folder)!r}); print(r.verdict)"
    hub = f"from huggingface_hub import get_local_safetensors_metadata as g; g({str(folder)!r})"
    print("warming:", timed(inspect)[1])  # learns the architecture, fills the page cache
    ours, theirs = [], []
    for _ in range(repeat):
        ours.append(timed(inspect)[0])
        theirs.append(timed(hub)[0])
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"warm inspect {a:.2f} s, huggingface_hub.get_local_safetensors_metadata {b:.2f} s: ratio {a / b:.2f}")


def cold_start(label: str, folder: Path, repeat: int) -> None:
    """The first inspect with an empty tieconv cache, and whether it imported torch or transformers."""
    code = ("import sys, tieconv; r = tieconv.inspect(%r); "
            "print(r.verdict, 'torch' in sys.modules, 'transformers' in sys.modules)" % str(folder))
    times = []
    for _ in range(repeat):
        env = {**os.environ, "XDG_CACHE_HOME": tempfile.mkdtemp(prefix="cold-cache-")}
        t, out = timed(code, env)
        times.append(t)
    verdict, torch_in, tf_in = out.split()
    print(f"cold start (empty cache, {label}): {statistics.median(times):.2f} s; "
          f"verdict {verdict}, imported torch: {torch_in}, transformers: {tf_in}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="bench/out/deepseek-v3-shape")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cold-only", action="store_true", help="only the cold starts, not the 92k-tensor index")
    args = ap.parse_args()
    if not args.cold_only:
        index_ratio(Path(args.dir).resolve(), args.repeat)
    from safetensors.torch import save_file
    import torch

    tiny = Path(tempfile.mkdtemp(prefix="cold-"))
    (tiny / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64, "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "tie_word_embeddings": True}))
    save_file({"model.embed_tokens.weight": torch.zeros(64, 16)}, tiny / "model.safetensors")
    cold_start("LlamaForCausalLM, in the knowledge file", tiny, args.repeat)
    # Llava with a Mistral text model: the file has Llava with its default (Llama) text model only
    import transformers

    other = Path(tempfile.mkdtemp(prefix="cold-"))
    transformers.LlavaConfig(
        text_config=transformers.MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                               num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1),
        vision_config=transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2, image_size=8, patch_size=4),
        architectures=["LlavaForConditionalGeneration"]).to_json_file(other / "config.json")
    save_file({"model.language_model.embed_tokens.weight": torch.zeros(64, 16)}, other / "model.safetensors")
    cold_start("Llava with a Mistral text model, not in the knowledge file", other, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
