"""Benchmark `tieconv tie` of a GGUF file against `cp` of it, measured alternately in one run.

Writes (once, into --dir) a GGUF of Llama-3.2-1B's embedding shape with gguf's own writer: vocabulary
128,256 x hidden 2,048 in F16, the head a copy of the embedding (so the file is `tieable`), plus four
layers' worth of F16 matrices: about 1.1 GB of random bytes. Prints, median of --repeat rounds:
  1. `tieconv tie` wall time / `cp && sync` of the input (tie's output is durable when it is put in place);
  2. tieconv's peak RSS (goal: flat, far below the file: the tensors are copied in the kernel).
Every command starts with the input in the page cache and nothing dirty (`sync`, untimed, before each).

Usage:  python bench/bench_gguf.py [--dir bench/out] [--repeat 3]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inspect import bench_parser, measure  # noqa: E402

VOCAB, HIDDEN, LAYERS = 128_256, 2_048, 4


def make_gguf(path: Path) -> None:
    import gguf
    import numpy as np

    if path.exists():
        return
    rng = np.random.default_rng(0)
    embed = rng.standard_normal((VOCAB, HIDDEN), dtype=np.float32).astype(np.float16)
    writer = gguf.GGUFWriter(path.with_suffix(".tmp"), arch="llama")
    writer.add_block_count(LAYERS)
    writer.add_embedding_length(HIDDEN)
    writer.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(VOCAB)])
    writer.add_tensor("token_embd.weight", embed)
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.ffn_down.weight",
                          rng.standard_normal((HIDDEN, 4 * HIDDEN), dtype=np.float32).astype(np.float16))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    writer.add_tensor("output.weight", embed)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    path.with_suffix(".tmp").rename(path)


def main() -> None:
    parser = bench_parser(__doc__)
    args = parser.parse_args()
    src = Path(args.dir) / "llama-1b-shape-tieable.gguf"
    print("making the GGUF (once) ...", flush=True)
    make_gguf(src)
    out, ref = src.with_name("gguf-tied.gguf"), src.with_name("gguf-copy.gguf")
    env = dict(os.environ)
    tie = [sys.executable, "-m", "tieconv.cli", "tie", str(src), str(out)]
    copy = ["sh", "-c", f"cp '{src}' '{ref}' && sync"]
    subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # into the page cache
    ties, copies, peaks = [], [], []
    for _ in range(args.repeat):
        for target in (out, ref):
            target.unlink(missing_ok=True)
        subprocess.run(["sync"])
        wall, rss, _ = measure(tie, env)
        ties.append(wall)
        peaks.append(rss)
        subprocess.run(["sync"])
        copies.append(measure(copy, env)[0])
    written = out.stat().st_size
    for target in (out, ref):
        target.unlink(missing_ok=True)
    a, b = statistics.median(ties), statistics.median(copies)
    print(f"{src.name}: {src.stat().st_size / 1e9:.2f} GB; tie writes {written / 1e9:.2f} GB")
    print(f"tieconv tie {a:.2f} s (runs {', '.join(f'{t:.2f}' for t in ties)}); cp && sync {b:.2f} s "
          f"(runs {', '.join(f'{t:.2f}' for t in copies)}): ratio {a / b:.2f}")
    print(f"peak RSS of tieconv tie: {max(peaks)} MB")


if __name__ == "__main__":
    main()
