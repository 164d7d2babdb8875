"""Every architecture transformers knows, with transformers itself as the oracle.

For every (model type, head class) pair in the installed transformers' CausalLM, MaskedLM, Seq2SeqLM,
ImageTextToText, Pretraining, SpeechSeq2Seq and multimodal-LM auto mappings:

1. build a tiny config with one generic shrinking rule (`tiny_config`) and the model from it;
2. write five states with transformers' own `save_pretrained` (and safetensors for the two edits):
   tied (flag on), untied (flag off), tieable (flag off, the tie group's targets equal to their source),
   duplicated (tied + the head stored as a copy), conflict (tied + a different head stored);
3. check tieconv's verdict and keys against what was written;
4. for every conversion tieconv performs, reload input and output in transformers (different seeds, so a
   parameter a loader starts at random shows up as a difference) and compare every weight and the logits.

A class that does not build with the shrinking rule, or that transformers cannot reload from its own
`save_pretrained` (two loads with different seeds disagree), is listed with transformers' error: the
summary's "N of M classes right" has no silent exclusions.

Usage:  nice python bench/arch_sweep.py [--out bench/out/arch_sweep.json] [--only NAME ...] [--limit N]
(about an hour for ~400 classes on one core; results are appended as they come, and a rerun resumes).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

MAPPINGS = (
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
    "MODEL_FOR_PRETRAINING_MAPPING_NAMES", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
    "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES",
)
FLAG = "tie_word_embeddings"
SECONDS_PER_CLASS = 240


# ---------------------------------------------------------------- which classes


def enumerate_classes() -> list[tuple[str, str]]:
    """(model type, head class name) pairs, deduplicated, in a stable order."""
    from transformers.models.auto import modeling_auto

    pairs = set()
    for mapping in MAPPINGS:
        for model_type, names in getattr(modeling_auto, mapping, {}).items():
            for name in names if isinstance(names, (list, tuple)) else [names]:
                pairs.add((model_type, name))
    return sorted(pairs)


# ---------------------------------------------------------------- the shrinking rule (tieconv's own, one rule)


def tiny_config(config_class, flag: bool | None = None, architecture: str | None = None):
    """The class's default config shrunk by tieconv's rule, tie flags set to `flag` at every level that has one."""
    doc = tiny_config_doc(config_class, architecture)
    if flag is not None:
        _set_flag(doc, flag)
    return config_class.from_dict(doc)


def tiny_config_doc(config_class, architecture: str | None = None) -> dict:
    from tieconv.knowledge.architecture import tiny_config_dict

    doc = tiny_config_dict(config_class().to_dict())
    if architecture:
        doc["architectures"] = [architecture]
    return doc


def config_class_for(model_type: str, cls):
    """The config class `cls` is built from for `model_type`, as transformers' auto classes choose it.

    The model type's own (a model type may reuse another's class: exaone -> Llama), except when the class
    takes one of its sub-configs (`Qwen3_5ForCausalLM` under `qwen3_5` reads the text config, as
    `AutoModelForCausalLM.from_config` does; `MusicgenForCausalLM` the decoder's)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    mapped = CONFIG_MAPPING[model_type]
    own = getattr(cls, "config_class", None)
    if own is not None and own is not mapped and own in getattr(mapped, "sub_configs", {}).values():
        return own
    return mapped


def _set_flag(doc: dict, flag: bool) -> None:
    doc[FLAG] = flag
    for value in doc.values():
        if isinstance(value, dict) and ("model_type" in value or FLAG in value):
            _set_flag(value, flag)


# ---------------------------------------------------------------- the oracle


def _head_and_embed(model):
    """(input embedding weight, output embedding weight or None), or (None, None) without a token embedding."""
    import torch

    try:
        inp = model.get_input_embeddings()
    except (NotImplementedError, AttributeError, TypeError):
        inp = None
    if inp is None or not isinstance(getattr(inp, "weight", None), torch.Tensor) or inp.weight.dim() != 2:
        return None, None
    try:
        out = model.get_output_embeddings()
    except (NotImplementedError, AttributeError, TypeError):
        out = None
    head = getattr(out, "weight", None) if out is not None else None
    if not isinstance(head, torch.Tensor) or head.dim() != 2:
        head = None
    return inp.weight, head


def _saved(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _key_of(tensors: dict, value, exclude=()) -> str | None:
    import torch

    hits = [k for k, t in tensors.items() if k not in exclude and t.shape == value.shape and torch.equal(t, value)]
    return hits[0] if len(hits) == 1 else None


def _add_tensor(folder: Path, key: str, value) -> None:
    from safetensors.torch import load_file, save_file

    files = sorted(folder.glob("*.safetensors"))
    if len(files) != 1:
        raise RuntimeError(f"expected one safetensors file, got {len(files)}")
    tensors = load_file(files[0])
    tensors[key] = value.detach().clone().contiguous()
    save_file(tensors, files[0], metadata={"format": "pt"})


def _logits(model):
    """The forward's logits for a fixed token prompt, or None when the class needs other inputs."""
    import torch

    with torch.no_grad():
        try:
            from tieconv.knowledge.architecture import tiny_inputs

            out = model(**tiny_inputs(model))
        except Exception:  # noqa: BLE001 - speech/vision-only inputs: weights are compared instead
            return None
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        logits = out[0]
    return logits if isinstance(logits, torch.Tensor) else None


def _load(cls, folder: Path, seed: int):
    import torch

    torch.manual_seed(seed)
    with _quiet():
        return cls.from_pretrained(folder).eval()


def _differences(a, b) -> list[str]:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    diffs = sorted(set(sa) ^ set(sb))
    for k in sorted(set(sa) & set(sb)):
        x, y = sa[k], sb[k]
        if x.shape != y.shape or not torch.equal(x, y):
            diffs.append(k)
    la, lb = _logits(a), _logits(b)
    # logits within float noise (an MoE's reduction order); a random or wrongly scaled head is off by > 1e-2
    if la is not None and lb is not None and (la.shape != lb.shape or not torch.allclose(la, lb, rtol=0, atol=1e-4)):
        diffs.append(f"logits (max abs diff {(la - lb).abs().max().item() if la.shape == lb.shape else 'shape'})")
    return diffs


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _error(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).strip().splitlines())  # validators put the cause below
    if exc.__cause__ is not None and str(exc.__cause__) not in text:
        text += f" ({type(exc.__cause__).__name__}: {str(exc.__cause__).strip()})"
    return f"{type(exc).__name__}: {text[:300]}"


class _Timeout(Exception):
    pass


def judge_class(model_type: str, class_name: str, work: Path) -> dict:
    """Everything the sweep asks about one class; see the module docstring."""
    import torch
    import transformers

    import tieconv

    result: dict = {"model_type": model_type, "class": class_name, "states": {}, "conversions": [], "problems": []}
    cls = getattr(transformers, class_name, None)
    if cls is None:
        result["status"] = "not-importable"
        return result
    config_class = config_class_for(model_type, cls)
    try:
        with _quiet():
            tied_cfg = tiny_config(config_class, True)
            torch.manual_seed(0)
            tied_model = cls(tied_cfg).eval()
            untied_cfg = tiny_config(config_class, False)
            torch.manual_seed(0)
            untied_model = cls(untied_cfg).eval()
    except Exception as exc:  # noqa: BLE001 - recorded with transformers' own error
        result["status"] = "does-not-build"
        result["error"] = _error(exc)
        result["default_config"] = _default_builds(cls, config_class)
        return result

    embed_w, head_w = _head_and_embed(tied_model)
    if embed_w is None or head_w is None:
        # no token embedding, or no output embedding: one save, verdict no-head (or whatever the data says)
        folder = work / "plain"
        try:
            with _quiet():
                untied_model.save_pretrained(folder)
        except Exception as exc:  # noqa: BLE001
            result["status"] = "does-not-save"
            result["error"] = _error(exc)
            return result
        expected = "no-head"
        state = _check_state(tieconv, folder, expected, None, None, token_embedding=embed_w is not None)
        result["states"]["plain"] = state
        result["kind"] = "no-token-embedding" if embed_w is None else "no-head"
        result["status"] = "judged"
        if not state["ok"]:
            result["problems"].append(f"plain: {state['why']}")
        return result

    ties = head_w is embed_w or _tied_in_map(tied_model, head_w)
    result["flag_changes_forward"] = _flag_changes_forward(tied_model, untied_model)
    u_embed, u_head = _head_and_embed(untied_model)
    forced = u_head is not None and u_head is u_embed  # the flag off still ties: nothing can untie it
    result["kind"] = "ties" if ties else "never-ties"
    result["forced"] = forced

    folders = {}
    try:
        with _quiet(), torch.no_grad():
            # tied: the flag on, the model's own save
            folders["tied"] = work / "tied"
            tied_model.save_pretrained(folders["tied"])
            # untied: distinctive head values, so its key can be found by value
            if not forced:
                u_head.copy_(torch.randn_like(u_head) * 0.02 + 0.5)
                untied_values = (u_embed.detach().clone(), u_head.detach().clone())
                folders["untied"] = work / "untied"
                untied_model.save_pretrained(folders["untied"])
                # tieable: every target of the flag's tie map equal to its source, flag still off
                tie_map = tied_model.get_expanded_tied_weights_keys(all_submodels=True)
                params = dict(untied_model.named_parameters(remove_duplicate=False))
                for target, source in tie_map.items():
                    if target in params and source in params and params[target].shape == params[source].shape:
                        params[target].copy_(params[source])
                if not ties and u_head.shape == u_embed.shape:
                    u_head.copy_(u_embed)
                folders["tieable"] = work / "tieable"
                untied_model.save_pretrained(folders["tieable"])
    except Exception as exc:  # noqa: BLE001
        result["status"] = "does-not-save"
        result["error"] = _error(exc)
        return result

    tied_files = _saved(folders["tied"])
    head_key = embed_key = None
    if "untied" in folders:
        untied_files = _saved(folders["untied"])
        head_key = _key_of(untied_files, untied_values[1])
        embed_key = _key_of(untied_files, untied_values[0], exclude={head_key})
    if head_key is None and not ties:
        head_key = _key_of(tied_files, head_w.detach())
    if head_key is None:  # a forced flag (T5): the tied save does not store the head; its name in memory
        head_key = next((n for n, p in tied_model.named_parameters(remove_duplicate=False)
                         if p is head_w and n.endswith(("lm_head.weight", "output_projection.weight"))), None)
    if ties:
        # the group's stored member in the tied save is what a loader fills the head from
        stored = _key_of(tied_files, head_w.detach())
        if stored is not None and stored != head_key:
            embed_key = stored
    result["head_key"], result["embed_key"] = head_key, embed_key
    if head_key is None:
        result["status"] = "unjudged"
        result["error"] = "could not find the head's saved key by value"
        return result

    # can transformers reload its own save? two loads, two seeds
    for state in [s for s in ("tied", "untied") if s in folders]:
        try:
            a, b = _load(cls, folders[state], 1), _load(cls, folders[state], 2)
            diffs = _differences(a, b)
        except Exception as exc:  # noqa: BLE001
            diffs = [_error(exc)]
        if diffs:
            result["status"] = "cannot-reload"
            result["error"] = f"{state}: {diffs[:3]}"
            return result

    if ties and head_key not in tied_files:
        with torch.no_grad():
            folders["duplicated"] = work / "duplicated"
            shutil.copytree(folders["tied"], folders["duplicated"])
            _add_tensor(folders["duplicated"], head_key, head_w)
            folders["conflict"] = work / "conflict"
            shutil.copytree(folders["tied"], folders["conflict"])
            _add_tensor(folders["conflict"], head_key, head_w * 0.5 + 0.25)

    # a forced flag (T5): the data decides, and transformers keeps a stored, different head as its own
    expected = {"tied": "tied" if ties else "untied", "untied": "untied", "tieable": "tieable",
                "duplicated": "duplicated", "conflict": "untied" if forced else "conflict"}
    if head_w.shape != embed_w.shape:  # never equal, so never tieable
        expected["tieable"] = "untied"
    for state, folder in folders.items():
        check = _check_state(tieconv, folder, expected[state], head_key, embed_key)
        result["states"][state] = check
        if not check["ok"]:
            result["problems"].append(f"{state}: {check['why']}")

    for state, folder in folders.items():
        loaded = {}
        for action in ("tie", "untie"):
            conv = _check_conversion(tieconv, cls, folder, work / f"{state}-{action}", action, loaded)
            conv["state"] = state
            result["conversions"].append(conv)
            if conv["outcome"] == "lossy":
                result["problems"].append(f"{action} {state}: lossless claimed, but {conv['why']}")
            elif conv["outcome"] == "error":
                result["problems"].append(f"{action} {state}: {conv['why']}")
    expected_done = [("tie", "duplicated")]
    if not result["flag_changes_forward"]:  # flipping such a flag cannot be lossless: refusing is right
        expected_done += [("untie", "tied"), ("untie", "duplicated"), ("untie", "conflict")]
        if ties:
            expected_done.append(("tie", "tieable"))
    for action, state in expected_done:
        conv = next((c for c in result["conversions"] if c["state"] == state and c["action"] == action), None)
        if conv and conv["outcome"] == "refused":
            result["problems"].append(f"{action} {state}: refused ({conv['why']})")
    result["status"] = "judged"
    return result


def _default_builds(cls, config_class) -> str:
    """Whether transformers builds the class from its own default config (full size, on the meta device):
    "builds" means only the shrinking rule's config is refused; otherwise transformers' own error."""
    import torch

    try:
        with _quiet(), torch.device("meta"):
            cls(config_class())
    except Exception as exc:  # noqa: BLE001
        return _error(exc)
    return "builds"


def _flag_changes_forward(tied_model, untied_model) -> bool:
    """The flag-off model given the flag-on model's very weights: does a forward change?"""
    import copy

    import torch

    probe = copy.deepcopy(untied_model)
    with torch.no_grad(), _quiet():
        probe.load_state_dict(tied_model.state_dict(), strict=False)
        a, b = _logits(tied_model), _logits(probe)
    return a is not None and b is not None and a.shape == b.shape and not torch.allclose(a, b, rtol=0, atol=1e-4)


def _tied_in_map(model, head) -> bool:
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    name = names.get(id(head))
    return name is not None and name in model.get_expanded_tied_weights_keys(all_submodels=True)


def _check_state(tieconv, folder: Path, expected: str, head_key, embed_key, token_embedding=True) -> dict:
    try:
        report = tieconv.inspect(folder)
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "why": f"inspect failed: {_error(exc)}", "verdict": None}
    got_head = report.head.key if report.head else None
    got_embed = report.embed.key if report.embed else None
    why = []
    if report.verdict != expected:
        why.append(f"verdict {report.verdict} (expected {expected}: {report.reason})")
    if expected != "no-head" and head_key and got_head != head_key:
        why.append(f"head {got_head} (expected {head_key})")
    if expected != "no-head" and embed_key and got_embed != embed_key:
        why.append(f"embed {got_embed} (expected {embed_key})")
    if expected == "no-head" and (got_head is not None or (got_embed is not None and not token_embedding)):
        why.append(f"no-head with keys {got_embed}, {got_head} (expected {'no head' if token_embedding else 'none'})")
    return {"ok": not why, "why": "; ".join(why), "verdict": report.verdict, "head": got_head, "embed": got_embed,
            "flag": report.tie_flag.source}


def _check_conversion(tieconv, cls, src: Path, dst: Path, action: str, loaded: dict) -> dict:
    entry = {"action": action}
    try:
        with _quiet():
            result = getattr(tieconv, action)(src, dst)
    except tieconv.RefusedError as exc:
        return {**entry, "outcome": "refused", "why": str(exc)[:300]}
    except Exception as exc:  # noqa: BLE001
        return {**entry, "outcome": "error", "why": _error(exc)}
    if result.plan.nothing_to_do:
        return {**entry, "outcome": "nothing"}
    try:
        if "input" not in loaded:
            loaded["input"] = _load(cls, src, 1)
        diffs = _differences(loaded["input"], _load(cls, dst, 2))
    except Exception as exc:  # noqa: BLE001
        return {**entry, "outcome": "lossy", "why": f"transformers cannot load the output: {_error(exc)}"}
    # `tieconv diff` is not its own judge: what it says (without loading) must match what transformers did
    entry["diff_agrees"], diff_line = _diff_agrees(tieconv, src, dst, result, not diffs)
    if not entry["diff_agrees"]:
        return {**entry, "outcome": "lossy" if diffs else "error",
                "why": f"tieconv diff disagrees with transformers: {diff_line}"}
    if diffs:
        return {**entry, "outcome": "lossy", "why": f"reloads differ in {diffs[:4]}"}
    return {**entry, "outcome": "lossless", "verdict": result.verdict}


def _diff_agrees(tieconv, src: Path, dst: Path, result, transformers_equal: bool) -> tuple[bool, str]:
    """The conversion's own verification question, asked again: is OUT what a loader builds from IN, except
    the planned change? It must answer as transformers' reload did."""
    from tieconv.conversion.convert import _expected_values
    from tieconv.inspection.equivalence import compare_reports

    before = tieconv.inspect(src)
    after = tieconv.inspect(dst, compare=False)
    found = compare_reports(before, after, expected_values=_expected_values(result.plan, before),
                            expected_config=dict(result.plan.config_changes))
    return found.equivalent == transformers_equal, found.headline()


# ---------------------------------------------------------------- running and summing up


def summarize(results: list[dict]) -> dict:
    judged = [r for r in results if r.get("status") == "judged"]
    right = [r for r in judged if not r["problems"]]
    excluded = [r for r in results if r.get("status") != "judged"]
    lossy = sorted({r["class"] for r in judged for c in r["conversions"] if c["outcome"] == "lossy"})
    return {
        "classes": len(results),
        "judged": len(judged),
        "right": len(right),
        "wrong": sorted(f"{r['model_type']}/{r['class']}" for r in judged if r["problems"]),
        "lossless_claimed_but_not": lossy,
        "excluded": {f"{r['model_type']}/{r['class']}": f"{r['status']}: {r.get('error', '')}" for r in excluded},
        "excluded_by_reason": _reasons(excluded),
        "line": f"{len(right)} of {len(judged)} classes right; {len(excluded)} of {len(results)} not judged "
                f"(transformers cannot build them tiny or reload its own save)",
    }


def _reasons(excluded: list[dict]) -> dict[str, list[str]]:
    """The classes not judged, grouped by why: the README states these groups."""
    groups: dict[str, list[str]] = {}
    for r in excluded:
        error = r.get("error", "")
        if r["status"] == "does-not-build" and "requires the" in error and "library" in error:
            why = "needs a library that is not installed"
        elif r["status"] == "does-not-build" and r.get("default_config", "builds") != "builds":
            why = "transformers' own default config does not build either"
        elif r["status"] == "does-not-build":
            why = "the shrinking rule's config is refused (the default config builds)"
        else:
            why = r["status"]
        groups.setdefault(why, []).append(f"{r['model_type']}/{r['class']}")
    return {k: sorted(v) for k, v in sorted(groups.items())}


def _done_by_others(partial: Path) -> set:
    """Classes another process on the same results file has judged since this one started."""
    try:
        return {tuple(json.loads(line)[k] for k in ("model_type", "class")) for line in partial.read_text().splitlines()}
    except (OSError, ValueError):
        return set()


def write_knowledge(pairs, path: Path) -> int:
    """What tieconv learns live, for every class's tiny default config: read without torch or transformers."""
    from dataclasses import asdict

    import transformers

    from tieconv.knowledge import architecture as arch

    entries, failed = {}, {}
    for model_type, name in pairs:
        try:
            with _quiet():
                doc = tiny_config_doc(config_class_for(model_type, getattr(transformers, name)), name)
                info = arch._learn_from_transformers(doc, getattr(transformers, name))
        except Exception as exc:  # noqa: BLE001 - not shipped: learned live
            failed[name] = _error(exc)
            continue
        if info is None:
            continue
        entries[arch.cache_key(doc)] = asdict(info)
        # configs written before per-layer type lists existed key without them: same class, same answer
        bare = {k: v for k, v in doc.items() if not k.endswith("_types")}
        entries.setdefault(arch.cache_key(bare), asdict(info))
        print(f"{model_type}/{name}: learned", flush=True)
    path.write_text(json.dumps({"transformers": arch.transformers_version(), "schema": arch.CACHE_SCHEMA,
                                "made_by": "bench/arch_sweep.py --knowledge", "entries": entries},
                               indent=0, sort_keys=True) + "\n")
    print(f"{len(entries)} entries written to {path}; not learned: {failed}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/out/arch_sweep.json")
    ap.add_argument("--only", nargs="*", help="class names or model types")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--fresh", action="store_true", help="ignore earlier results in --out")
    ap.add_argument("--reverse", action="store_true",
                    help="walk the classes backwards (a second process on the same --out shares the work)")
    ap.add_argument("--knowledge", metavar="FILE",
                    help="instead of judging, learn each class from its tiny default config and write the "
                         "knowledge file tieconv ships (tieconv/knowledge/architectures.json)")
    args = ap.parse_args(argv)

    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".jsonl")
    done = {}
    if partial.exists() and not args.fresh:
        for line in partial.read_text().splitlines():
            r = json.loads(line)
            done[(r["model_type"], r["class"])] = r
    elif partial.exists():
        partial.unlink()
    pairs = enumerate_classes()
    if args.only:
        pairs = [p for p in pairs if p[0] in args.only or p[1] in args.only]
    if args.limit:
        pairs = pairs[: args.limit]
    order = list(reversed(pairs)) if args.reverse else pairs
    os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="sweep-cache-"))
    if args.knowledge:
        return write_knowledge(pairs, Path(args.knowledge))

    def on_alarm(signum, frame):
        raise _Timeout()

    signal.signal(signal.SIGALRM, on_alarm)
    for i, (model_type, name) in enumerate(order, 1):
        if (model_type, name) in done or (model_type, name) in _done_by_others(partial):
            continue
        start = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="sweep-"))
        signal.alarm(SECONDS_PER_CLASS)
        try:
            r = judge_class(model_type, name, work)
        except _Timeout:
            r = {"model_type": model_type, "class": name, "status": "timeout", "problems": [],
                 "error": f"over {SECONDS_PER_CLASS} s"}
        except Exception as exc:  # noqa: BLE001 - a harness bug must not end the sweep
            r = {"model_type": model_type, "class": name, "status": "harness-error", "problems": [],
                 "error": _error(exc), "traceback": traceback.format_exc()[-2000:]}
        finally:
            signal.alarm(0)
            shutil.rmtree(work, ignore_errors=True)
        r["seconds"] = round(time.monotonic() - start, 2)
        done[(model_type, name)] = r
        with partial.open("a") as f:
            f.write(json.dumps(r) + "\n")
        mark = "ok" if r.get("status") == "judged" and not r["problems"] else r.get("status")
        print(f"[{i}/{len(pairs)}] {model_type}/{name}: {mark} {r.get('problems', [])[:2]} ({r['seconds']} s)",
              flush=True)
    for line in partial.read_text().splitlines():  # what other processes judged too
        r = json.loads(line)
        done.setdefault((r["model_type"], r["class"]), r)
    results = [done[p] for p in pairs if p in done]
    summary = summarize(results)
    out.write_text(json.dumps({"transformers": transformers.__version__, "summary": summary, "results": results},
                              indent=1))
    print(summary["line"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
