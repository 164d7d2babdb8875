"""Time `tieconv scan` over the fixtures and over a folder of 20 generated ~100M-parameter models.

The models are Llama-shaped bf16 single-file checkpoints (vocab 32000, hidden 768, 12 layers,
~110M parameters, ~220 MB each), a third tied, a third duplicated, a third untied, written once
under bench/out/scan-models. Each figure is a whole `tieconv scan` process with a warm tieconv
cache, median of 3.

Usage:  python bench/bench_scan.py [--dir bench/out] [--repeat 3]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_inspect import bench_parser  # bench/ is on sys.path when run as a script

VOCAB, HIDDEN, LAYERS, INTER = 32000, 768, 12, 2048
ROOT = Path(__file__).resolve().parent.parent


def make_models(folder: Path, count: int = 20) -> None:
    import torch
    from safetensors.torch import save_file

    for i in range(count):
        out = folder / f"model-{i:02d}"
        if (out / "model.safetensors").exists():
            continue
        out.mkdir(parents=True, exist_ok=True)
        kind = ("tied", "duplicated", "untied")[i % 3]
        g = torch.Generator().manual_seed(i)
        embed = torch.randn(VOCAB, HIDDEN, generator=g).to(torch.bfloat16)
        sd = {"model.embed_tokens.weight": embed, "model.norm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16)}
        for layer in range(LAYERS):
            p = f"model.layers.{layer}."
            for name, shape in (("self_attn.q_proj", (HIDDEN, HIDDEN)), ("self_attn.k_proj", (HIDDEN, HIDDEN)),
                                ("self_attn.v_proj", (HIDDEN, HIDDEN)), ("self_attn.o_proj", (HIDDEN, HIDDEN)),
                                ("mlp.gate_proj", (INTER, HIDDEN)), ("mlp.up_proj", (INTER, HIDDEN)),
                                ("mlp.down_proj", (HIDDEN, INTER))):
                sd[p + name + ".weight"] = torch.full(shape, 0.01, dtype=torch.bfloat16)
        if kind == "duplicated":
            sd["lm_head.weight"] = embed.clone()
        elif kind == "untied":
            sd["lm_head.weight"] = torch.randn(VOCAB, HIDDEN, generator=g).to(torch.bfloat16)
        save_file(sd, out / "model.safetensors", metadata={"format": "pt"})
        (out / "config.json").write_text(json.dumps({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB,
            "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": LAYERS,
            "num_attention_heads": 12, "tie_word_embeddings": kind != "untied"}))


def timed(cmd, env) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start



def main() -> None:
    parser = bench_parser(__doc__)
    args = parser.parse_args()
    models = Path(args.dir) / "scan-models"
    make_models(models)
    env = {**os.environ, "XDG_CACHE_HOME": tempfile.mkdtemp(prefix="tieconv-bench-cache-")}
    scan = [sys.executable, "-m", "tieconv.cli", "scan", "--quiet"]
    timed(scan + [str(ROOT / "fixtures")], env)  # warm the architecture cache
    for f in models.rglob("*.safetensors"):
        subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL)
    fixtures = statistics.median(timed(scan + [str(ROOT / "fixtures")], env) for _ in range(args.repeat))
    big = statistics.median(timed(scan + [str(models)], env) for _ in range(args.repeat))
    size = sum(f.stat().st_size for f in models.rglob("*.safetensors"))
    print(f"tieconv scan fixtures/ (21 checkpoints): {fixtures:.2f} s")
    print(f"tieconv scan of 20 ~110M-parameter models ({size / 1e9:.1f} GB): {big:.2f} s")


if __name__ == "__main__":
    main()
