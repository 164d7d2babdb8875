"""Benchmark `tieconv inspect` against references measured in the same run.

Makes a Llama-3.2-1B-shaped bf16 checkpoint (vocab 128256, hidden 2048, 16 layers: 1.24B parameters),
sharded in ~1 GB files, in two variants: tied (no head stored) and duplicated (head stored, identical).
Each measurement is a whole process, alternated with its reference, page cache warm:

  1. header-decidable verdict (tied): `tieconv inspect` (warm tieconv cache) vs
     `huggingface_hub.get_local_safetensors_metadata` on the same folder;
  2. the comparison (duplicated): `tieconv inspect` vs GNU `cmp` over exactly the two tensors' byte ranges;
  3. peak RSS of tieconv in both cases (mapped pages count too).

Usage:  python bench/bench_inspect.py [--dir bench/out] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

VOCAB, HIDDEN, LAYERS, INTER, KV = 128256, 2048, 16, 8192, 512
SHARD_BYTES = 1_000_000_000


def tensors_of_layer(i: int) -> list[tuple[str, tuple[int, ...]]]:
    p = f"model.layers.{i}."
    return [
        (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)), (p + "self_attn.k_proj.weight", (KV, HIDDEN)),
        (p + "self_attn.v_proj.weight", (KV, HIDDEN)), (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
        (p + "mlp.gate_proj.weight", (INTER, HIDDEN)), (p + "mlp.up_proj.weight", (INTER, HIDDEN)),
        (p + "mlp.down_proj.weight", (HIDDEN, INTER)), (p + "input_layernorm.weight", (HIDDEN,)),
        (p + "post_attention_layernorm.weight", (HIDDEN,)),
    ]


def make_checkpoint(folder: Path, duplicated: bool) -> None:
    """Write shards with safetensors' own writer, one shard's tensors in memory at a time."""
    import torch
    from safetensors.torch import save_file

    if (folder / "model.safetensors.index.json").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    embed = torch.randn(VOCAB, HIDDEN, generator=g, dtype=torch.float32).to(torch.bfloat16)
    entries = [("model.embed_tokens.weight", None)]
    for i in range(LAYERS):
        entries += tensors_of_layer(i)
    entries.append(("model.norm.weight", (HIDDEN,)))
    if duplicated:
        entries.append(("lm_head.weight", None))
    shards, current, size = [], [], 0
    for name, shape in entries:
        nbytes = VOCAB * HIDDEN * 2 if shape is None else 2 * int(torch.tensor(shape).prod())
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)
    weight_map = {}
    for n, shard in enumerate(shards, 1):
        fname = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        sd = {}
        for name, shape in shard:
            sd[name] = embed.clone() if shape is None else torch.full(shape, 0.01 * (len(sd) + 1), dtype=torch.bfloat16)
            weight_map[name] = fname
        save_file(sd, folder / fname, metadata={"format": "pt"})
        del sd
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB, "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": 32,
        "num_key_value_heads": 8, "tie_word_embeddings": True, "torch_dtype": "bfloat16"}))


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, float]:
    """Wall seconds, peak RSS in MB and CPU seconds (user + system, kernel copies included) of `cmd`."""
    wrapper = [sys.executable, "-c", (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); w = time.perf_counter() - t; "
        "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
        "print(w, u.ru_maxrss, u.ru_utime + u.ru_stime); sys.exit(0 if r.returncode in (0, 1) else 3)"
    )] + cmd
    out = subprocess.run(wrapper, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{cmd} failed: {out.stderr[-400:]}")
    wall, rss_kb, cpu = out.stdout.split()
    return float(wall), int(rss_kb) // 1024, float(cpu)


def byte_range(folder: Path, key: str) -> tuple[Path, int, int]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tieconv.formats.checkpoint import open_checkpoint

    ckpt = open_checkpoint(folder)
    t = ckpt.tensors[key]
    return folder / t.file, t.offset, t.nbytes


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes (--dir for its checkpoints, --repeat), with tieconv measured as
    installed."""
    measure_as_installed()
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=str(Path(__file__).resolve().parent / "out"))
    parser.add_argument("--repeat", type=int, default=3)
    return parser


def measure_as_installed() -> None:
    """Time tieconv as an installed copy runs: pip compiles bytecode at install time, and with
    PYTHONDONTWRITEBYTECODE (set in some environments) every run would compile every tieconv module from
    source, 0.1-0.4 s here. The benchmarks' child processes inherit this environment."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def main() -> None:
    parser = bench_parser(__doc__)
    args = parser.parse_args()
    base = Path(args.dir)
    tied, dup = base / "llama-1b-tied", base / "llama-1b-duplicated"
    print("making checkpoints (once) ...", flush=True)
    make_checkpoint(tied, duplicated=False)
    make_checkpoint(dup, duplicated=True)
    tieconv = [sys.executable, "-m", "tieconv.cli", "inspect"]
    cache = tempfile.mkdtemp(prefix="tieconv-bench-cache-")
    env = {**os.environ, "XDG_CACHE_HOME": cache}

    cold, cold_rss, _ = measure(tieconv + [str(tied)], env)  # first run: learns the architecture from transformers
    hub = [sys.executable, "-c", "import sys; from huggingface_hub import get_local_safetensors_metadata as g; "
           "g(sys.argv[1])", str(tied)]
    # warm the page cache for the comparison
    for f in dup.glob("*.safetensors"):
        subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL)
    (fa, oa, n), (fb, ob, _) = byte_range(dup, "model.embed_tokens.weight"), byte_range(dup, "lm_head.weight")
    cmp = ["cmp", f"--bytes={n}", f"--ignore-initial={oa}:{ob}", str(fa), str(fb)]

    rows = {"tied: tieconv": [], "tied: hub": [], "dup: tieconv": [], "dup: cmp": []}
    rss = {"tied": 0, "dup": 0}
    for _ in range(args.repeat):
        w, r, _ = measure(tieconv + [str(tied)], env); rows["tied: tieconv"].append(w); rss["tied"] = max(rss["tied"], r)
        rows["tied: hub"].append(measure(hub)[0])
        w, r, _ = measure(tieconv + [str(dup)], env); rows["dup: tieconv"].append(w); rss["dup"] = max(rss["dup"], r)
        rows["dup: cmp"].append(measure(cmp)[0])
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"checkpoint: vocab {VOCAB}, hidden {HIDDEN}, {LAYERS} layers, bf16, ~1 GB shards; median of {args.repeat}")
    print(f"header verdict (tied):   tieconv {med['tied: tieconv']:.2f} s vs huggingface_hub "
          f"{med['tied: hub']:.2f} s  -> ratio {med['tied: tieconv'] / med['tied: hub']:.2f} (goal <= 1.5)")
    print(f"comparison (duplicated): tieconv {med['dup: tieconv']:.2f} s vs cmp {med['dup: cmp']:.2f} s"
          f"  -> ratio {med['dup: tieconv'] / med['dup: cmp']:.2f} (goal <= 1.5)")
    print(f"peak RSS: tied {rss['tied']} MB, duplicated {rss['dup']} MB (goal <= 512)")
    print(f"first run (cold tieconv cache, learns the architecture): {cold:.2f} s, {cold_rss} MB")


if __name__ == "__main__":
    main()
