"""Time and peak memory of tieconv on each hostile input of issue 14, at the red-team's sizes, and at the limits.

Each case is a whole `tieconv` process (CPU time and its own peak RSS are reported: on a shared
machine wall time mostly measures the neighbours) under a 4 GiB address-space limit (killed after 120 s), with an
empty tieconv cache where the case must build a skeleton. Goal: each within 10 s and 1 GB.

Usage:  python bench/bench_hostile.py [--dir bench/out/hostile] [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hostile_cases import CASES, FIXTURES, Case, run  # noqa: E402

GOAL_SECONDS, GOAL_BYTES = 10, 1 << 30


def header_at_the_limit(tmp: Path, full: bool) -> list[str]:
    from tieconv.formats.safetensors_header import MAX_TENSORS_PER_FILE

    entry = '"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
    text = ("{" + ",".join(entry % i for i in range(MAX_TENSORS_PER_FILE)) + "}").encode()
    (tmp / "limit.safetensors").write_bytes(len(text).to_bytes(8, "little") + text)
    return ["inspect", str(tmp / "limit.safetensors"), "--embed", "t0"]


def shards_at_the_limit(tmp: Path, full: bool) -> list[str]:
    """tie on an index of MAX_SHARDS real shards, one tensor each, the head a duplicate of the embedding."""
    import torch
    from safetensors.torch import save_file

    from tieconv.formats.checkpoint import MAX_SHARDS

    folder = tmp / "shards"
    folder.mkdir()
    shutil.copy(FIXTURES / "llama-duplicated" / "config.json", folder)
    embed = torch.randn(64, 16)
    weight_map = {}
    for i in range(MAX_SHARDS):
        name = f"model-{i + 1:05d}-of-{MAX_SHARDS:05d}.safetensors"
        key = {0: "model.embed_tokens.weight", 1: "lm_head.weight"}.get(i, f"model.extra.{i}.weight")
        save_file({key: embed.clone() if i < 2 else torch.zeros(4)}, folder / name, metadata={"format": "pt"})
        weight_map[key] = name
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return ["tie", str(folder), str(tmp / "out"), "-q"]


def config_at_the_limit(tmp: Path, full: bool) -> list[str]:
    from tieconv.formats.checkpoint import MAX_CONFIG_BYTES, MAX_CONFIG_VALUES

    folder = tmp / "m"
    shutil.copytree(FIXTURES / "llama-duplicated", folder)
    config = json.loads((folder / "config.json").read_text())
    keys = MAX_CONFIG_VALUES - 100
    config.update({f"k{i}": 0 for i in range(keys)})
    config["padding"] = "x" * (MAX_CONFIG_BYTES - len(json.dumps(config)) - 100)
    (folder / "config.json").write_text(json.dumps(config))
    return ["inspect", str(folder)]


AT_THE_LIMITS = [
    Case("header of 200,000 zero-size tensors (the limit)", header_at_the_limit, "refuse"),
    Case(f"tie on an index of 4,096 shards (the limit)", shards_at_the_limit, "ok"),
    Case("config of 16 MB and 50,000 values (the limits)", config_at_the_limit, "ok", fresh_cache=True),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default=str(ROOT / "bench" / "out" / "hostile"))
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    work = Path(args.dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"{'case':<52} {'exit':>4} {'wall s':>7} {'CPU s':>6} {'peak RSS':>9}  goal (CPU)")
    worst = 0.0
    for i, case in enumerate(CASES + AT_THE_LIMITS):
        if args.only not in case.name:
            continue
        tmp = work / f"case-{i:02d}"
        tmp.mkdir()
        argv = case.build(tmp, True)
        env = {"XDG_CACHE_HOME": str(tmp / "fresh-cache")} if case.fresh_cache else None
        outcome = run(argv, address_space_bytes=4 << 30, timeout=120, env=env)
        peak = outcome.peak_rss_bytes
        ok = outcome.code is not None and outcome.cpu_seconds <= GOAL_SECONDS and peak is not None and peak <= GOAL_BYTES
        worst = max(worst, outcome.cpu_seconds)
        shown = f"{peak / 2**20:6.0f} MB" if peak else "     -   "
        print(f"{case.name[:52]:<52} {str(outcome.code):>4} {outcome.seconds:7.2f} {outcome.cpu_seconds:6.2f} "
              f"{shown}  {'ok' if ok else 'MISSED'}", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"most CPU: {worst:.2f} s")


if __name__ == "__main__":
    main()
