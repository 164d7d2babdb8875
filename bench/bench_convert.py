"""Benchmark `tieconv tie` against `cp -r` of the same input, measured alternately in one run.

Uses the duplicated variant of bench_inspect.py's Llama-3.2-1B-shaped checkpoint (3.0 GB in ~1 GB
shards, the head in the last shard). Prints:
  1. `tieconv tie` (default verification: the loader-level diff, sampled bytes) / `cp -r` (goal <= 1.0),
     and / `cp -r && sync`: tie's output is durable (fsynced) when it is put in place, plain `cp -r`'s is
     still in the page cache when it exits, so `cp -r && sync` is the like-for-like reference;
  2. `tieconv tie --verify full` (the same diff over every byte) / `cp -r`, to choose the default;
  3. tieconv's peak RSS (goal <= 512 MB);
  4. `tieconv tie --link` wall time / `cp -r` wall time (goal <= 0.35).
Every command starts with the input in the page cache (a warm-up run reads it) and nothing dirty (`sync`,
untimed, before each). Each row prints its median, its spread (min-max), every sample and its CPU time
(user + system: the kernel's copying counts, waiting for the disk does not): on a shared machine the spread
is the figure to read first, and CPU time moves less with the other users' load than wall time does.

  --baseline DIR  also time `tie` from another checkout of tieconv (a `git worktree` of main, say), in the
                  same rounds, so a change is measured against the code before it in the same machine state.
  --cold          drop the page cache before every timed command (`echo 1 > /proc/sys/vm/drop_caches`:
                  root only, and it evicts every process's cache on the machine), so both read from disk.

Usage:  python bench/bench_convert.py [--dir bench/out] [--repeat 3] [--baseline DIR] [--cold]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inspect import bench_parser, make_checkpoint, measure  # noqa: E402


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--baseline", help="another tieconv checkout whose `tie` is timed in the same rounds")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each command (root)")
    args = parser.parse_args()
    base = Path(args.dir).resolve()  # absolute: the baseline runs from another folder
    src = base / "llama-1b-duplicated"
    make_checkpoint(src, duplicated=True)
    work = base / "convert-out"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    env = {**os.environ, "XDG_CACHE_HOME": tempfile.mkdtemp(prefix="tieconv-bench-cache-")}
    tieconv = [sys.executable, "-m", "tieconv.cli", "tie", str(src)]
    commands = [("cp", ["cp", "-r", str(src), str(work / "cp")]),
                # tieconv fsyncs its output before putting it in place: the durable reference
                ("cpsync", ["sh", "-c", f"cp -r '{src}' '{work / 'cpsync'}' && sync"]),
                ("tie", tieconv + [str(work / "tie")]),
                ("full", tieconv + [str(work / "full"), "--verify", "full"]),
                ("link", tieconv + [str(work / "link"), "--link"])]
    if args.baseline:  # `-m` puts the working directory first on sys.path: run from a neutral one
        base_cmd = ["env", f"PYTHONPATH={Path(args.baseline).resolve()}", "sh", "-c", 'cd / && exec "$@"', "-"]
        commands.append(("baseline", base_cmd + tieconv + [str(work / "baseline")]))
    for name, cmd in commands:  # learn the architecture once, write bytecode, warm the page cache
        if name in ("tie", "baseline"):
            measure(cmd, env)
            shutil.rmtree(work / name)

    rows: dict[str, list[float]] = {name: [] for name, _ in commands}
    cpu: dict[str, list[float]] = {name: [] for name, _ in commands}
    rss = 0
    for i in range(args.repeat):
        for name, cmd in commands:
            subprocess.run(["sync"])
            if args.cold:
                Path("/proc/sys/vm/drop_caches").write_text("1\n")
            wall, peak, seconds = measure(cmd, env)
            rows[name].append(wall)
            cpu[name].append(seconds)
            if name not in ("cp", "cpsync"):
                rss = max(rss, peak)
            shutil.rmtree(work / name)
    med = {k: statistics.median(v) for k, v in rows.items()}
    shards = len(list(src.glob("*.safetensors")))
    size = sum(f.stat().st_size for f in src.iterdir()) / 1e9
    print(f"input: {src} ({size:.1f} GB, {shards} shards); median of {args.repeat}, alternated, page cache "
          f"{'dropped before each (cold)' if args.cold else 'warm'}")
    for name, values in rows.items():
        print(f"  {name:9s} median {med[name]:.2f} s, spread {min(values):.2f}-{max(values):.2f} s: "
              + " ".join(f"{v:.2f}" for v in values) + f"; CPU median {statistics.median(cpu[name]):.2f} s")
    print(f"tieconv tie:        {med['tie']:.2f} s vs cp -r {med['cp']:.2f} s -> ratio {med['tie'] / med['cp']:.2f} (goal <= 1.0)")
    print(f"tieconv tie:        {med['tie']:.2f} s vs cp -r && sync {med['cpsync']:.2f} s -> ratio "
          f"{med['tie'] / med['cpsync']:.2f} (both durable on disk)")
    print(f"tie --verify full:  {med['full']:.2f} s vs cp -r {med['cp']:.2f} s -> ratio {med['full'] / med['cp']:.2f} "
          f"({med['full'] / med['tie'] - 1:+.0%} against the default)")
    print(f"tieconv tie --link: {med['link']:.2f} s vs cp -r {med['cp']:.2f} s -> ratio {med['link'] / med['cp']:.2f} (goal <= 0.35)")
    if args.baseline:
        print(f"baseline tie:       {med['baseline']:.2f} s ({args.baseline}) -> this checkout "
              f"{med['tie'] / med['baseline'] - 1:+.0%}")
    print(f"peak RSS of tieconv tie: {rss} MB (goal <= 512)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
