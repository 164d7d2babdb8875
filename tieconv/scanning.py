"""`scan`: find every checkpoint below some folders (default: the Hugging Face cache) and inspect each."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import InputError, TieconvError
from .report import PROBLEM_VERDICTS, human_bytes

MODEL_FOLDER_MARKERS = (
    "config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
    "pytorch_model.bin.index.json", "adapter_config.json", "params.json", "modules.json",
)
CHECKPOINT_SUFFIXES = (".safetensors", ".gguf", ".pt", ".pth", ".bin", ".ckpt")


@dataclass
class ScanRow:
    name: str
    path: str
    verdict: str  # a verdict, or "unreadable"
    layout: str | None
    bytes_total: int
    reclaimable_bytes: int
    error: str | None = None


@dataclass
class ScanResult:
    roots: list[str]
    rows: list[ScanRow] = field(default_factory=list)

    @property
    def problems(self) -> list[ScanRow]:
        return [r for r in self.rows if r.verdict in PROBLEM_VERDICTS]

    def to_dict(self) -> dict:
        readable = [r for r in self.rows if r.error is None]
        return {
            "roots": self.roots,
            "rows": [asdict(r) for r in self.rows],
            "totals": {
                "models": len(readable),
                "unreadable": len(self.rows) - len(readable),
                "bytes_total": sum(r.bytes_total for r in readable),
                "reclaimable_bytes": sum(r.reclaimable_bytes for r in readable),
                "problems": len(self.problems),
            },
        }


def default_roots() -> list[Path]:
    from huggingface_hub import constants  # cheap: honours HF_HOME / HF_HUB_CACHE

    return [Path(constants.HF_HUB_CACHE)]


def find_checkpoints(root: Path) -> list[tuple[str, Path]]:
    """(display name, path) of each cached repo revision, model folder and loose checkpoint file below root."""
    found: list[tuple[str, Path]] = []
    if root.is_file():
        return [(root.name, root)]
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames.sort()
        if here.name.startswith("models--") and (here / "snapshots").is_dir():
            repo = here.name[len("models--"):].replace("--", "/")
            for rev in sorted((here / "snapshots").iterdir()):
                if rev.is_dir():  # a snapshot linked out of the cache is listed, then refused by scan()
                    found.append((f"{repo}@{rev.name[:8]}", rev))
            dirnames.clear()
            continue
        if here != root and here.name.startswith("."):
            dirnames.clear()
            continue
        if any(m in filenames for m in MODEL_FOLDER_MARKERS):
            found.append((str(here.relative_to(root)) if here != root else here.name, here))
            dirnames.clear()
            continue
        for name in sorted(filenames):
            if name.endswith(CHECKPOINT_SUFFIXES):
                path = here / name
                found.append((str(path.relative_to(root)), path))
    return found


def _refuse_snapshot_link(path: Path) -> None:
    """A cache snapshot folder that is a link leaving its repo is never followed."""
    if path.is_symlink() and path.parent.name == "snapshots":
        repo = path.parent.parent.resolve()
        if not path.resolve().is_relative_to(repo):
            raise InputError(f"{path}: is a link to {path.resolve()}, outside the cache; not followed")


def scan(roots=None, *, compare: bool = True) -> ScanResult:
    """Inspect every checkpoint below `roots` (default: the Hugging Face cache); never stops on a bad one.

    Example:
        >>> import tieconv
        >>> result = tieconv.scan(["fixtures"])
        >>> len(result.rows) > 10
        True
    """
    from .inspection import inspect
    from .progress import bar

    paths = [Path(r) for r in roots] if roots else default_roots()
    result = ScanResult([str(p) for p in paths])
    targets = []
    for root in paths:
        if not root.exists():
            result.rows.append(ScanRow(str(root), str(root), "unreadable", None, 0, 0, f"{root}: no such file or folder"))
            continue
        targets += find_checkpoints(root)
    with bar(len(targets), "scanning", unit="model") as progress:
        for name, path in targets:
            try:
                _refuse_snapshot_link(path)
                report = inspect(path, compare=compare)
                result.rows.append(ScanRow(name, str(path), report.verdict, report.layout, report.bytes.total,
                                           report.reclaimable_bytes))
            except TieconvError as exc:
                result.rows.append(ScanRow(name, str(path), "unreadable", None, 0, 0, str(exc)))
            except Exception as exc:  # noqa: BLE001 - one broken model must not stop a scan
                result.rows.append(ScanRow(name, str(path), "unreadable", None, 0, 0,
                                           f"{path}: internal error ({type(exc).__name__}: {exc})"[:300]))
            progress.update(1)
    result.rows.sort(key=lambda r: (r.error is not None, -r.reclaimable_bytes, r.name))
    return result


def render(result: ScanResult) -> str:
    rows = result.rows
    width = max([len(r.name) for r in rows] + [5])
    lines = [f"{'model':<{width}}  {'verdict':<13}  {'size':>9}  {'reclaimable':>11}"]
    for r in rows:
        if r.error:
            lines.append(f"{r.name:<{width}}  {'unreadable':<13}  {'-':>9}  {'-':>11}  warning: {r.error}")
        else:
            lines.append(f"{r.name:<{width}}  {r.verdict:<13}  {human_bytes(r.bytes_total):>9}  "
                         f"{human_bytes(r.reclaimable_bytes):>11}")
    totals = result.to_dict()["totals"]
    lines.append(f"{totals['models']} models, {human_bytes(totals['bytes_total'])}, reclaimable "
                 f"{human_bytes(totals['reclaimable_bytes'])}; {totals['problems']} with a problem, "
                 f"{totals['unreadable']} unreadable")
    return "\n".join(lines)
