"""Inspect at size: a DeepSeek-V3-shaped index (~92k tensors, 161 shards) and the cold start.

1. Writes a sparse checkpoint of DeepSeek-V3's shape (61 layers, 256 routed experts, vocab 129280,
   hidden 7168, FP8 weights): real safetensors headers, data left as holes, so ~690 GB of shards take
   a few MB of disk. The embedding and head get a few distinct bytes, so comparing them stops early.
2. Times, each as a whole process with the page cache warm, `tieconv inspect` (tieconv's cache warm)
   against `huggingface_hub.get_local_safetensors_metadata` on the same folder, and prints the ratio.
   Each pair of runs is alternated, so both see the same machine load; the median of the runs and the
   spread of the per-pair ratios (the run-to-run noise) are printed.
3. Times the cold start (an empty tieconv cache) of `tieconv inspect` on a tiny Llama checkpoint (in the
   shipped knowledge file) and a tiny Llava with a Mistral text model (not in it: learned live), and says
   whether torch or transformers was imported (they are not for architectures in the shipped knowledge
   file made with the installed transformers).
4. With --tie: `tieconv tie --link` on a duplicated copy of the checkpoint (shards hard-linked, the head
   set equal to the embedding), against `cp` of exactly the bytes it writes (the head's shard, rewritten
   without the head) followed by `sync`: a ratio near 1 means the conversion costs what its writes cost.
   It also prints how much of tie's own time went to writing (copies and the fsync pass) and to the rest.
   This writes about 3.7 GB of real bytes per run (deleted after).

Usage:  python bench/bench_index.py [--dir bench/out/deepseek-v3-shape] [--repeat 3] [--tie] [--cold-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_inspect import measure_as_installed  # bench/ is on sys.path when run as a script

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


def spread(ratios: list[float]) -> str:
    return f"per-run ratios {min(ratios):.2f}-{max(ratios):.2f}, median {statistics.median(ratios):.2f}"


def make_duplicated(folder: Path, dup: Path) -> None:
    """`folder` with the head equal to the embedding: every shard hard-linked but the head's, which is copied
    sparsely with the embedding's first bytes written over the head's (the rest of both are holes)."""
    if (dup / "model.safetensors.index.json").exists():
        return
    dup.mkdir(parents=True)
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    head_shard = weight_map["lm_head.weight"]
    for f in folder.iterdir():
        if f.name == head_shard:
            subprocess.run(["cp", "--sparse=always", str(f), str(dup / f.name)], check=True)
        elif f.suffix == ".safetensors":
            os.link(f, dup / f.name)
        else:
            shutil.copy(f, dup / f.name)

    def data_offset(shard: Path, key: str) -> int:
        with open(shard, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            return 8 + n + json.loads(f.read(n))[key]["data_offsets"][0]

    embed_shard = folder / weight_map["model.embed_tokens.weight"]
    with open(embed_shard, "rb") as f:
        f.seek(data_offset(embed_shard, "model.embed_tokens.weight"))
        first = f.read(64)
    with open(dup / head_shard, "r+b") as f:
        f.seek(data_offset(dup / head_shard, "lm_head.weight"))
        f.write(first)


def bench_tie_link(folder: Path, repeat: int) -> None:
    dup = folder.with_name(folder.name + "-duplicated")
    make_duplicated(folder, dup)
    out, ref = dup.with_name("tie-link-out"), dup.with_name("tie-link-ref")
    # `tieconv tie --link`, with the time spent writing (the copy and the fsync pass) measured inside it
    tie = [sys.executable, "-c", f"""if True:
        import time, sys
        import tieconv.conversion.convert as convert, tieconv.conversion.writer as writer
        spent = [0.0]
        def timed(real):
            def run(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return real(*args, **kwargs)
                finally:
                    spent[0] += time.perf_counter() - start
            return run
        convert._write_safetensors_files = timed(convert._write_safetensors_files)
        writer.fsync_tree = timed(writer.fsync_tree)
        from tieconv.cli import main
        try:
            main(["tie", {str(dup)!r}, {str(out)!r}, "--link"])
        except SystemExit as done:
            assert not done.code, done.code
        print(spent[0])"""]
    walls, copies, writes, written = [], [], [], 0
    for i in range(repeat + 1):  # the first run learns and warms; not counted
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(["sync"])
        start = time.perf_counter()
        done = subprocess.run(tie, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
        rewritten = [f for f in out.iterdir() if f.is_file() and f.stat().st_nlink == 1 and f.suffix == ".safetensors"]
        written = sum(f.stat().st_size for f in rewritten)
        ref.mkdir(exist_ok=True)
        subprocess.run(["sync"])
        start = time.perf_counter()
        subprocess.run(["sh", "-c", " && ".join(f"cp --sparse=never '{f}' '{ref / f.name}'" for f in rewritten)
                        + " && sync"], check=True)
        copy = time.perf_counter() - start
        shutil.rmtree(ref)
        if i:
            walls.append(wall)
            copies.append(copy)
            writes.append(float(done.stdout.split()[-1]))
    shutil.rmtree(out, ignore_errors=True)
    a, b, w = statistics.median(walls), statistics.median(copies), statistics.median(writes)
    print(f"tie --link: {a:.2f} s, writing {written / 1e9:.2f} GB; cp of those bytes + sync {b:.2f} s: ratio {a / b:.2f} "
          f"({spread([x / y for x, y in zip(walls, copies)])}); of tie's time, writing took {w:.2f} s and "
          f"everything else (start, inspect, plan, verify) {statistics.median([x - y for x, y in zip(walls, writes)]):.2f} s")


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
    print(f"warm inspect {a:.2f} s, huggingface_hub.get_local_safetensors_metadata {b:.2f} s: ratio {a / b:.2f} "
          f"(median of {repeat}; {spread([x / y for x, y in zip(ours, theirs)])}; goal <= 0.5)")


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
    measure_as_installed()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="bench/out/deepseek-v3-shape")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tie", action="store_true", help="also time tie --link (writes ~3.7 GB per run)")
    ap.add_argument("--cold-only", action="store_true", help="only the cold starts, not the 92k-tensor index")
    args = ap.parse_args()
    if not args.cold_only:
        index_ratio(Path(args.dir).resolve(), args.repeat)
        if args.tie:
            bench_tie_link(Path(args.dir).resolve(), args.repeat)
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
