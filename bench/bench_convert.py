"""Benchmark `tieconv tie` against `cp -r` of the same input, measured alternately in one run.

Uses the duplicated variant of bench_inspect.py's Llama-3.2-1B-shaped checkpoint (3.0 GB in ~1 GB
shards, the head in the last shard). Prints:
  1. `tieconv tie` (default verification: the loader-level diff, sampled bytes) / `cp -r` (goal <= 1.0);
  2. `tieconv tie --verify full` (the same diff over every byte) / `cp -r`, to choose the default;
  3. tieconv's peak RSS (goal <= 512 MB);
  4. `tieconv tie --link` wall time / `cp -r` wall time (goal <= 0.35).

Usage:  python bench/bench_convert.py [--dir bench/out] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inspect import make_checkpoint, measure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=str(Path(__file__).resolve().parent / "out"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    base = Path(args.dir)
    src = base / "llama-1b-duplicated"
    make_checkpoint(src, duplicated=True)
    work = base / "convert-out"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    env = {**os.environ, "XDG_CACHE_HOME": tempfile.mkdtemp(prefix="tieconv-bench-cache-")}
    tieconv = [sys.executable, "-m", "tieconv.cli", "tie", str(src)]
    measure(tieconv + [str(work / "warm")], env)  # learn the architecture once; warm the page cache
    shutil.rmtree(work / "warm")

    rows = {"cp": [], "cpsync": [], "tie": [], "full": [], "link": []}
    rss = 0
    for i in range(args.repeat):
        for name, cmd in (("cp", ["cp", "-r", str(src), str(work / "cp")]),
                          # tieconv fsyncs its output before putting it in place: the durable reference
                          ("cpsync", ["sh", "-c", f"cp -r '{src}' '{work / 'cpsync'}' && sync"]),
                          ("tie", tieconv + [str(work / "tie")]),
                          ("full", tieconv + [str(work / "full"), "--verify", "full"]),
                          ("link", tieconv + [str(work / "link"), "--link"])):
            subprocess.run(["sync"])
            wall, peak = measure(cmd, env)
            rows[name].append(wall)
            if name not in ("cp", "cpsync"):
                rss = max(rss, peak)
            shutil.rmtree(work / name)
    med = {k: statistics.median(v) for k, v in rows.items()}
    shards = len(list(src.glob("*.safetensors")))
    size = sum(f.stat().st_size for f in src.iterdir()) / 1e9
    print(f"input: {src} ({size:.1f} GB, {shards} shards); median of {args.repeat}, alternated")
    print(f"tieconv tie:        {med['tie']:.2f} s vs cp -r {med['cp']:.2f} s -> ratio {med['tie'] / med['cp']:.2f} (goal <= 1.0)")
    print(f"tieconv tie:        {med['tie']:.2f} s vs cp -r && sync {med['cpsync']:.2f} s -> ratio "
          f"{med['tie'] / med['cpsync']:.2f} (both durable on disk)")
    print(f"tie --verify full:  {med['full']:.2f} s vs cp -r {med['cp']:.2f} s -> ratio {med['full'] / med['cp']:.2f} "
          f"({med['full'] / med['tie'] - 1:+.0%} against the default)")
    print(f"tieconv tie --link: {med['link']:.2f} s vs cp -r {med['cp']:.2f} s -> ratio {med['link'] / med['cp']:.2f} (goal <= 0.35)")
    print(f"peak RSS of tieconv tie: {rss} MB (goal <= 512)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
