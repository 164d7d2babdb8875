"""Architecture knowledge against transformers itself: a representative subset of bench/arch_sweep.py.

Each judged class is built tiny with tieconv's one shrinking rule, saved by transformers in five states
(tied, untied, tieable, duplicated, conflict), inspected, converted, and every conversion tieconv calls
lossless is reloaded in transformers and compared weight by weight and logit by logit. The full sweep
(every class transformers knows) is `python bench/arch_sweep.py`; its figure is in the README.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
import transformers
from safetensors.torch import save_file

import tieconv
from tieconv.knowledge import architecture as arch

from ..conftest import ROOT
from ..helpers import embed_and_head, llama_config, write_config, write_llama

_spec = importlib.util.spec_from_file_location("arch_sweep", ROOT / "bench" / "arch_sweep.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

# one class of every family the every-architecture sweep found wrong, and the common decoders
FAMILIES = [
    ("marian", "MarianMTModel"),  # the input embedding is itself a target: the group's source is model.shared
    ("prophetnet", "ProphetNetForCausalLM"),
    ("blip-2", "Blip2ForConditionalGeneration"),  # "forced" read from false,absent -> true: it is not
    ("llava", "LlavaForConditionalGeneration"),
    ("encoder-decoder", "EncoderDecoderModel"),  # the head ties to the decoder's embedding
    ("t5gemma", "T5GemmaForConditionalGeneration"),
    ("switch_transformers", "SwitchTransformersForConditionalGeneration"),  # the flag also scales
    ("fsmt", "FSMTForConditionalGeneration"),  # the head is the tie source
    ("qwen2_audio", "Qwen2AudioForConditionalGeneration"),  # no tie map for the head: tie refuses
    ("bigbird_pegasus", "BigBirdPegasusForCausalLM"),
    ("bailing_hybrid", "BailingHybridForCausalLM"),  # saved as model.word_embeddings
    ("inkling2_text", "Inkling2ForCausalLM"),  # the head saved as model.llm.unembed (a converter pads it)
    ("molmo2", "Molmo2ForConditionalGeneration"),  # the embedding saved in two parts, joined on load
    ("wav2vec2", "Wav2Vec2ForPreTraining"),  # no token embedding: no-head, keys null
    ("vit_mae", "ViTMAEForPreTraining"),
    ("bart", "BartForConditionalGeneration"),  # the flag governs the encoder/decoder embeddings too
    ("t5", "T5ForConditionalGeneration"),  # a truly forced flag
    ("llama", "LlamaForCausalLM"),
    ("qwen2", "Qwen2ForCausalLM"),
    ("gemma2", "Gemma2ForCausalLM"),
    ("gpt2", "GPT2LMHeadModel"),
    ("bert", "BertForMaskedLM"),
]


_JUDGED: dict = {}


def judged(model_type: str, name: str, tmp_path_factory) -> dict:
    """One judgment per class per session, shared by the tests that look at it."""
    if (model_type, name) not in _JUDGED:
        _JUDGED[model_type, name] = sweep.judge_class(model_type, name, tmp_path_factory.mktemp(name))
    return _JUDGED[model_type, name]


@pytest.mark.parametrize("model_type,name", FAMILIES, ids=[n for _, n in FAMILIES])
def test_transformers_agrees(model_type, name, tmp_path_factory):
    result = judged(model_type, name, tmp_path_factory)
    assert result["status"] == "judged", result.get("error")
    assert result["problems"] == []
    lossless = [c for c in result["conversions"] if c["outcome"] == "lossless"]
    if result.get("kind") == "ties":
        # the conversions that must happen did, and transformers loads them unchanged
        done = {(c["action"], c["state"]) for c in lossless}
        if "duplicated" in result["states"]:
            assert ("tie", "duplicated") in done
        if not result.get("forced") and not result["flag_changes_forward"]:
            assert ("untie", "tied") in done


def test_marian_group_source_is_the_embedding(tmp_path_factory):
    result = judged("marian", "MarianMTModel", tmp_path_factory)
    tied = result["states"]["tied"]
    assert (tied["verdict"], tied["embed"], tied["head"]) == ("tied", "model.shared.weight", "lm_head.weight")
    assert result["states"]["duplicated"]["verdict"] == "duplicated"


def test_no_tie_map_refuses_tie(tmp_path_factory):
    result = judged("qwen2_audio", "Qwen2AudioForConditionalGeneration", tmp_path_factory)
    assert result["kind"] == "never-ties"
    tie_tieable = next(c for c in result["conversions"] if (c["action"], c["state"]) == ("tie", "tieable"))
    assert tie_tieable["outcome"] == "refused" and "never ties" in tie_tieable["why"]


def test_flag_that_scales_is_not_flipped(tmp_path_factory):
    result = judged("switch_transformers", "SwitchTransformersForConditionalGeneration", tmp_path_factory)
    untie = next(c for c in result["conversions"] if (c["action"], c["state"]) == ("untie", "tied"))
    assert untie["outcome"] == "refused" and "changes the forward" in untie["why"]


def test_no_token_embedding_is_no_head(tmp_path):
    cfg = transformers.Wav2Vec2Config(**sweep.tiny_config_doc(transformers.Wav2Vec2Config))
    transformers.Wav2Vec2ForPreTraining(cfg).save_pretrained(tmp_path)
    report = tieconv.inspect(tmp_path)
    assert report.verdict == "no-head" and report.tie_group is None
    assert (report.to_dict()["embed"], report.to_dict()["head"]) == (None, None)
    with pytest.raises(tieconv.RefusedError):
        tieconv.tie(tmp_path, tmp_path.parent / "never")


def _learned(model_type: str, name: str) -> arch.ArchitectureInfo:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return arch._learn_from_transformers(sweep.tiny_config_doc(CONFIG_MAPPING[model_type], name),
                                         getattr(transformers, name))


def test_wrapped_embedding_key_is_the_parameter():
    info = _learned("neomme", "NeoMMEForMaskedLM")
    assert info.embed == "model.embed_tokens.word_embeddings.weight"
    assert info.tie_groups["model.embed_tokens.word_embeddings.weight"] == ["lm_head.weight"]


def test_key_renamed_by_a_converter_that_makes_a_new_tensor():
    """Inkling2 pads its head back to the stored vocabulary on save: the tensor is new, the key still renamed."""
    info = _learned("inkling2_text", "Inkling2ForCausalLM")
    assert (info.embed, info.head) == ("model.llm.embed.weight", "model.llm.unembed.weight")
    assert info.memory_names["model.llm.unembed.weight"] == "lm_head.weight"


def test_a_parameter_saved_in_parts_is_named_by_its_first_part():
    """Molmo2 saves its embedding as `wte.embedding` (the base vocabulary) and `wte.new_embedding`, joined on
    load; it never ties its head, so a stored head is `untied` whatever the parts hold."""
    info = _learned("molmo2", "Molmo2ForConditionalGeneration")
    assert (info.embed, info.head, info.tie_groups) == ("model.transformer.wte.embedding", "lm_head.weight", {})


def test_flag_governs_other_groups():
    info = _learned("florence2", "Florence2ForConditionalGeneration")
    assert info.flag_owner == "text_config" and not info.forced
    assert "model.language_model.encoder.embed_tokens.weight" in info.governed  # untie materialises it too
    assert info.pair_embed == "model.language_model.shared.weight"


def test_forced_only_when_no_value_changes_it():
    assert _learned("t5", "T5ForConditionalGeneration").forced is True
    blip = _learned("blip-2", "Blip2ForConditionalGeneration")
    assert blip.forced is False and blip.flag_owner == "text_config"


# ---------------------------------------------------------------- the cache key


def test_cache_key_has_what_changes_the_answer_and_no_sizes():
    llava_gemma = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
                   "text_config": {"model_type": "gemma", "hidden_size": 2048}}
    llava_llama = {**llava_gemma, "text_config": {"model_type": "llama", "hidden_size": 2048}}
    bigger = {**llava_gemma, "text_config": {"model_type": "gemma", "hidden_size": 4096}, "tie_word_embeddings": True}
    assert arch.cache_key(llava_gemma) != arch.cache_key(llava_llama)
    assert arch.cache_key(llava_gemma) == arch.cache_key(bigger)
    sliding = {**llava_gemma, "layer_types": ["sliding_attention", "full_attention"]}
    assert arch.cache_key(sliding) != arch.cache_key(llava_gemma)
    assert arch.cache_key(sliding) == arch.cache_key({**sliding, "layer_types": ["full_attention",
                                                                                  "sliding_attention"] * 20})


def test_llava_gemma_then_llava_llama(tmp_path):
    """The second Llava must not inherit the first's default flag (Gemma ties by default, Llama does not)."""
    vision = {"model_type": "clip_vision_model", "num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32,
              "num_attention_heads": 2, "image_size": 8, "patch_size": 4}
    text = {k: v for k, v in llama_config().items() if k not in ("architectures", "model_type")}
    embed, _ = embed_and_head()
    verdicts = []
    for text_type in ("gemma", "llama"):
        folder = tmp_path / text_type
        write_config(folder, architectures=["LlavaForConditionalGeneration"], model_type="llava",
                     vision_config=vision, text_config={"model_type": text_type, **text, "head_dim": 8})
        save_file({"model.language_model.embed_tokens.weight": embed}, folder / "model.safetensors")
        verdicts.append(tieconv.inspect(folder).verdict)
    assert verdicts == ["tied", "head-missing"]


# ---------------------------------------------------------------- the class and the prefix rule


def test_class_chosen_by_keys_without_architectures(tmp_path):
    cfg = transformers.BartConfig(**sweep.tiny_config_doc(transformers.BartConfig))
    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(cfg)
    model.save_pretrained(tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    doc.pop("architectures")
    (tmp_path / "config.json").write_text(json.dumps(doc))
    report = tieconv.inspect(tmp_path)
    assert report.architecture == "BartForConditionalGeneration"
    assert (report.verdict, report.embed.key, report.head.key) == ("tied", "model.shared.weight", "lm_head.weight")
    out = tmp_path.parent / "untied"
    tieconv.untie(tmp_path, out)
    a = transformers.BartForConditionalGeneration.from_pretrained(tmp_path)
    b = transformers.BartForConditionalGeneration.from_pretrained(out)
    ids = torch.arange(3, 9).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids, decoder_input_ids=ids).logits, b(input_ids=ids, decoder_input_ids=ids).logits)


def test_draft_head_is_not_the_head(tmp_path):
    embed, other = embed_and_head()
    folder = write_llama(tmp_path / "m", tie=True, tensors={"model.embed_tokens.weight": embed,
                                                            "draft.lm_head.weight": other})
    report = tieconv.inspect(folder)
    assert (report.verdict, report.head.key, report.head.stored) == ("tied", "lm_head.weight", False)
    tieconv.tie(folder, tmp_path / "out", force=True)  # a normalised copy keeps the draft head
    from safetensors import safe_open

    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert set(f.keys()) == {"model.embed_tokens.weight", "draft.lm_head.weight"}


def test_base_prefix_rule_is_exact():
    assert arch.stored_key("model.embed_tokens.weight", {"embed_tokens.weight"}, "model") == "embed_tokens.weight"
    assert arch.stored_key("lm_head.weight", {"model.lm_head.weight"}, "model") == "model.lm_head.weight"
    assert arch.stored_key("lm_head.weight", {"draft.lm_head.weight"}, "model") is None


# ---------------------------------------------------------------- the shipped knowledge file


def test_knowledge_file_matches_a_fresh_run():
    data = json.loads(arch.KNOWLEDGE_FILE.read_text())
    assert data["schema"] == arch.CACHE_SCHEMA
    if data["transformers"] != arch.transformers_version():
        pytest.skip(f"knowledge made with transformers {data['transformers']}")
    for entry in data["entries"].values():  # every entry reads back as what live learning returns
        assert arch._from_entry(entry) is not None
    subset = [("llama", "LlamaForCausalLM"), ("gemma2", "Gemma2ForCausalLM"), ("t5", "T5ForConditionalGeneration"),
              ("marian", "MarianMTModel"), ("llava", "LlavaForConditionalGeneration"),
              ("inkling2_text", "Inkling2ForCausalLM"), ("qwen3_5", "Qwen3_5ForCausalLM")]
    for model_type, name in subset:
        cls = getattr(transformers, name)
        doc = sweep.tiny_config_doc(sweep.config_class_for(model_type, cls), name)
        fresh = arch._learn_from_transformers(doc, cls)
        assert data["entries"][arch.cache_key(doc)] == json.loads(json.dumps(asdict(fresh))), name


def test_cold_start_in_knowledge_file_imports_neither_torch_nor_transformers(tmp_path):
    embed, _ = embed_and_head()
    folder = write_llama(tmp_path / "m", tie=True, tensors={"model.embed_tokens.weight": embed})
    code = ("import sys, tieconv; r = tieconv.inspect(%r); "
            "print(r.verdict, 'torch' in sys.modules, 'transformers' in sys.modules)" % str(folder))
    env = {"XDG_CACHE_HOME": str(tmp_path / "empty-cache"), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["tied", "False", "False"]


# ---------------------------------------------------------------- the shrinking rule


def test_shrinking_keeps_what_transformers_requires_to_agree():
    doc = arch.tiny_config_dict({
        "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 32, "d_head": 128,
        "num_hidden_layers": 72, "kv_source_layers": list(range(70)) + [69, 69],
        "rope_parameters": {"mrope_section": [16, 24, 24]}, "head_dim": None, "vocab_size": None,
        "vision_config": {"model_type": "v", "hidden_size": 1536, "out_hidden_size": 4096, "depths": [3, 3, 8]},
        "mamba_n_heads": 128, "mamba_d_head": 64, "mamba_expand": 2})
    assert (doc["hidden_size"], doc["num_attention_heads"], doc["num_key_value_heads"]) == (64, 4, 4)  # still MHA
    assert doc["d_head"] == 16 and doc["head_dim"] == 16 and doc["vocab_size"] == arch.TINY_VOCAB  # unset: filled
    assert doc["kv_source_layers"] == [0, 1]  # the kept layers point at kept layers
    assert sum(doc["rope_parameters"]["mrope_section"]) == 16 // 2  # rotary sections sum to half the head
    assert doc["vision_config"]["out_hidden_size"] == doc["hidden_size"] and doc["vision_config"]["depths"] == [1, 1, 1]
    assert doc["mamba_n_heads"] * doc["mamba_d_head"] == doc["mamba_expand"] * doc["hidden_size"]


@pytest.mark.parametrize("model_type,name", [
    ("inkling2", "Inkling2ForConditionalGeneration"), ("mamba2", "Mamba2ForCausalLM"),
    ("xlnet", "XLNetLMHeadModel"), ("qwen3_5", "Qwen3_5ForCausalLM"), ("esmc", "EsmcForMaskedLM"),
    ("falcon_h1", "FalconH1ForCausalLM"), ("aria", "AriaForConditionalGeneration"),
])
def test_classes_the_old_rule_could_not_build_now_build(model_type, name):
    cls = getattr(transformers, name)
    with torch.device("meta"):
        cls(sweep.tiny_config(sweep.config_class_for(model_type, cls), True))


def _tiny_build(model_type: str, name: str) -> tuple[dict, int]:
    """The class's tiny config (as a dict) and the parameter count of the model transformers builds from it."""
    cls = getattr(transformers, name)
    config = sweep.tiny_config(sweep.config_class_for(model_type, cls), True)
    with torch.device("meta"):
        model = cls(config)
    return config.to_dict(), sum(p.numel() for p in model.parameters())


TINY_PARAMETERS = 2_000_000  # a Llama at the tiny sizes has about 100k; the full-size defaults have billions


def test_widths_equal_to_a_hidden_size_follow_it():
    # Dots3Note: each adapter's input width is its encoder's hidden size, its output the text hidden size
    doc, parameters = _tiny_build("dots3_note", "Dots3NoteForConditionalGeneration")
    vision, audio, text = doc["vision_config"], doc["audio_config"], doc["text_config"]
    assert vision["adapter_in_dim"] == vision["hidden_size"] and audio["adapter_input_size"] == audio["hidden_size"]
    assert vision["adapter_out_dim"] == audio["adapter_out_dim"] == text["hidden_size"] == arch.TINY_HIDDEN
    assert parameters < TINY_PARAMETERS
    # Kyutai STT: the codec's depthwise upsampling has as many groups as channels
    doc, parameters = _tiny_build("kyutai_speech_to_text", "KyutaiSpeechToTextForConditionalGeneration")
    assert doc["codec_config"]["upsample_groups"] == doc["codec_config"]["hidden_size"] == arch.TINY_HIDDEN


def test_a_bottleneck_keeps_its_fraction_of_the_hidden_size():
    # FunAsrNano: the adaptor's intermediate size is the text hidden size // 4 (not the usual 2x)
    doc, parameters = _tiny_build("fun_asr_nano", "FunAsrNanoForConditionalGeneration")
    assert doc["adaptor_config"]["intermediate_size"] == doc["text_config"]["hidden_size"] // 4
    assert parameters < TINY_PARAMETERS


def test_layer_counts_that_split_the_stack_shrink_part_by_part():
    # Dory: input + recurrent + output blocks sum to the depth; each part keeps its first and last layer, so
    # the (attention, mlp) pairs its config stores stay pairs
    doc, parameters = _tiny_build("dory", "DoryForCausalLM")
    assert doc["n_input_layers"] + doc["n_recurrent_layers"] + doc["n_output_layers"] == doc["num_hidden_layers"]
    assert doc["num_hidden_layers"] <= 2 * 3 and parameters < TINY_PARAMETERS
    # Gemma 3n: the last 15 of 35 layers reuse the KV cache of earlier layers of their kind; the layers before
    # them and the shared ones each keep a sliding and a full layer
    doc, parameters = _tiny_build("gemma3n_text", "Gemma3nForCausalLM")
    shared = doc["num_kv_shared_layers"]
    assert 0 < shared < doc["num_hidden_layers"] <= 4
    assert set(doc["layer_types"][:-shared]) == set(doc["layer_types"]) == {"sliding_attention", "full_attention"}
    assert len(doc["intermediate_size"]) == doc["num_hidden_layers"] and max(doc["intermediate_size"]) <= 128
    assert parameters < TINY_PARAMETERS


def test_live_learning_keeps_counts_that_split_the_stack_describing_it(tmp_path, monkeypatch):
    """The skeleton tieconv learns from is cut to a shallow depth; Dory's validator requires its input,
    recurrent and output blocks to sum to the depth, so they are cut part by part too (its released
    72-layer config, not in the knowledge file: learned live)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    doc = transformers.DoryConfig().to_dict()
    reduced = arch._reduced(doc, True)
    assert reduced["n_input_layers"] + reduced["n_recurrent_layers"] + reduced["n_output_layers"] \
        == reduced["num_hidden_layers"] < doc["num_hidden_layers"]
    transformers.DoryConfig.from_dict(reduced)  # its validator accepts it
    write_config(tmp_path, **{**doc, "architectures": ["DoryForCausalLM"], "tie_word_embeddings": True})
    save_file({"backbone.embeddings.weight": torch.zeros(8, 4)}, tmp_path / "model.safetensors")  # as it saves
    report = tieconv.inspect(tmp_path)
    assert (report.verdict, report.embed.key, report.head.key) == ("tied", "backbone.embeddings.weight",
                                                                   "lm_head.weight")
    assert not any("could not build" in n for n in report.notes), report.notes


def test_a_layer_count_equal_to_the_depth_stays_equal():
    # Gemma 4 unified assistant: every layer reads the KV cache of the target model
    doc, parameters = _tiny_build("gemma4_unified_assistant", "Gemma4UnifiedAssistantForCausalLM")
    assert doc["text_config"]["num_kv_shared_layers"] == doc["text_config"]["num_hidden_layers"] == arch.TINY_LAYERS
    assert parameters < TINY_PARAMETERS


def test_layer_indices_into_a_stack_point_into_the_tiny_stack():
    # Molmo2: the adapter reads vision layers [24, 18] of 25; the tiny vision tower has 2
    doc, parameters = _tiny_build("molmo2", "Molmo2ForConditionalGeneration")
    assert doc["adapter_config"]["vision_feature_layer"] == [1, 0]
    assert doc["vision_config"]["num_hidden_layers"] == arch.TINY_LAYERS and parameters < TINY_PARAMETERS
