"""Benchmark `tieconv diff` against GNU `cmp` of the same files, measured alternately in one run.

Uses the duplicated variant of bench_inspect.py's Llama-3.2-1B-shaped checkpoint (3.0 GB in 3 shards)
and an identical copy of it (`cp -r`, made once). `cmp` stops at the first difference, so only identical
inputs make a fair reference: both read every byte of both sides. `cmp` runs over every file of the folder
(shards, index, config) in one shell. Prints:
  1. `tieconv diff A COPY` wall time / `cmp` of every file pair wall time (goal <= 1.2);
  2. tieconv's peak RSS.

Usage:  python bench/bench_diff.py [--dir bench/out] [--repeat 3]
"""

from __future__ import annotations

import os
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inspect import bench_parser, make_checkpoint, measure



def main() -> None:
    parser = bench_parser(__doc__)
    args = parser.parse_args()
    base = Path(args.dir)
    src = base / "llama-1b-duplicated"
    make_checkpoint(src, duplicated=True)
    copy = base / "diff-copy"
    if not copy.is_dir():
        shutil.copytree(src, copy)
    env = {**os.environ, "XDG_CACHE_HOME": tempfile.mkdtemp(prefix="tieconv-bench-cache-")}
    tieconv = [sys.executable, "-m", "tieconv.cli", "diff", str(src), str(copy), "--check"]
    names = sorted(p.name for p in src.iterdir() if p.is_file())
    cmp = ["sh", "-c", " && ".join(f"cmp {shlex.quote(str(src / n))} {shlex.quote(str(copy / n))}" for n in names)]
    total = sum((src / n).stat().st_size for n in names)
    measure(tieconv, env)  # learn the architecture once; warm the page cache
    measure(cmp, env)

    rows = {"cmp": [], "diff": []}
    rss = 0
    for _ in range(args.repeat):
        for name, cmd in (("cmp", cmp), ("diff", tieconv)):
            wall, peak, _ = measure(cmd, env)
            rows[name].append(wall)
            if name == "diff":
                rss = max(rss, peak)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"inputs: {src} and an identical copy ({total / 1e9:.1f} GB each, {len(names)} files); "
          f"median of {args.repeat}, alternated, page cache warm")
    print(f"tieconv diff: {med['diff']:.2f} s vs cmp {med['cmp']:.2f} s -> ratio {med['diff'] / med['cmp']:.2f} "
          "(goal <= 1.2)")
    print(f"peak RSS of tieconv diff: {rss} MB")


if __name__ == "__main__":
    main()
