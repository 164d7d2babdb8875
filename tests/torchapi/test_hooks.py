from __future__ import annotations

import pytest
import torch
import transformers

import tieconv
from tieconv.torchapi.hooks import TieMapError
from tieconv.torchapi.storage import shares_memory

transformers.logging.set_verbosity_error()


class Block(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        return x + torch.tanh(self.proj(x))


class Transformer(torch.nn.Module):
    """TorchChat's layout: tok_embeddings, layers, norm, output."""

    def __init__(self, vocab=32, dim=8, tied=False):
        super().__init__()
        self.tok_embeddings = torch.nn.Embedding(vocab, dim)
        self.layers = torch.nn.ModuleList([Block(dim), Block(dim)])
        self.norm = torch.nn.LayerNorm(dim)
        self.output = torch.nn.Linear(dim, vocab, bias=False)
        if tied:
            self.output.weight = self.tok_embeddings.weight

    def forward(self, ids):
        x = self.tok_embeddings(ids)
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x))


class Wrapper(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.model = inner
        self.extra = torch.nn.Linear(2, 2)


def checkpoint_without_head(seed=0):
    torch.manual_seed(seed)
    sd = Transformer(tied=True).state_dict()
    sd.pop("output.weight")
    return {k: v.clone() for k, v in sd.items()}


@pytest.mark.parametrize("assign", [False, True])
@pytest.mark.parametrize("strict", [True, False])
def test_tie_on_load_fills_the_head_and_shares_one_parameter(assign, strict):
    sd = checkpoint_without_head()
    model = Transformer()
    handle = tieconv.tie_on_load(model)
    assert handle.pairs == [("output.weight", "tok_embeddings.weight")]
    result = model.load_state_dict(sd, strict=strict, assign=assign)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert model.get_parameter("output.weight") is model.get_parameter("tok_embeddings.weight")
    assert torch.equal(model.output.weight, sd["tok_embeddings.weight"])
    assert len(list(model.parameters())) == len({id(p) for p in model.parameters()})


def test_meta_device_module_loads_with_assign():
    sd = checkpoint_without_head()
    with torch.device("meta"):
        model = Transformer()
    tieconv.tie_on_load(model)
    model.load_state_dict(sd, strict=True, assign=True)
    assert model.output.weight is model.tok_embeddings.weight
    assert model.output.weight.device.type == "cpu"
    ref = Transformer(tied=True)
    ref.load_state_dict({**sd, "output.weight": sd["tok_embeddings.weight"]})
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(ids), ref(ids))


def test_optimizer_steps_the_shared_matrix_once():
    model = Transformer()
    tieconv.tie_on_load(model)
    model.load_state_dict(checkpoint_without_head())
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    before = model.tok_embeddings.weight.detach().clone()
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    grad = model.tok_embeddings.weight.grad.clone()  # holds both uses' gradients, summed
    opt.step()
    torch.testing.assert_close(model.tok_embeddings.weight.detach(), before - 0.1 * grad)
    assert model.output.weight is model.tok_embeddings.weight


def test_untie_on_load_gives_two_parameters_that_diverge():
    model = Transformer(tied=True)
    tieconv.untie_on_load(model)
    model.load_state_dict(checkpoint_without_head())
    assert model.output.weight is not model.tok_embeddings.weight
    assert model.output.weight.untyped_storage().data_ptr() != model.tok_embeddings.weight.untyped_storage().data_ptr()
    assert torch.equal(model.output.weight, model.tok_embeddings.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step()
    assert not torch.equal(model.output.weight, model.tok_embeddings.weight)


def test_nested_module_with_a_prefix():
    sd = {f"model.{k}": v for k, v in checkpoint_without_head().items()}
    outer = Wrapper(Transformer())
    sd.update({f"extra.{k}": v for k, v in outer.extra.state_dict().items()})
    handle = tieconv.tie_on_load(outer.model)
    outer.load_state_dict(sd, strict=True, assign=True)
    assert outer.model.output.weight is outer.model.tok_embeddings.weight
    handle.remove()
    fresh = Wrapper(Transformer())
    with pytest.raises(RuntimeError, match="output.weight"):
        fresh.load_state_dict(sd, strict=True)  # without the hook the head is missing


def test_different_matrices_raise_or_keep():
    torch.manual_seed(1)
    sd = Transformer().state_dict()
    model = Transformer()
    tieconv.tie_on_load(model)
    with pytest.raises(TieMapError, match="different values"):
        model.load_state_dict(sd)
    for keep, key in (("embed", "tok_embeddings.weight"), ("head", "output.weight")):
        model = Transformer()
        tieconv.tie_on_load(model, keep=keep)
        model.load_state_dict(sd)
        assert torch.equal(model.tok_embeddings.weight, sd[key]) and model.output.weight is model.tok_embeddings.weight


def distinct_embedding_and_head(seed=2):
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in Transformer().state_dict().items()}  # untied: E and H differ


HOOKS = {
    "untie": lambda m: tieconv.untie_on_load(m),
    "tie keep=embed": lambda m: tieconv.tie_on_load(m, keep="embed"),
    "tie keep=head": lambda m: tieconv.tie_on_load(m, keep="head"),
}


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("assign", [False, True])
@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("hook", list(HOOKS))
def test_distinct_embedding_and_head_load_as_the_hook_says(hook, strict, assign, device, nested):
    if device == "meta" and not assign:
        pytest.skip("copying into meta parameters keeps no values; meta modules load with assign=True")
    sd = distinct_embedding_and_head()
    E, H = sd["tok_embeddings.weight"], sd["output.weight"]
    assert not torch.equal(E, H)
    with torch.device(device):
        model = Transformer(tied=True)  # built tied: one Parameter for both
        root = Wrapper(model) if nested else model
    if nested:
        sd = {f"model.{k}": v for k, v in sd.items()} | {f"extra.{k}": v for k, v in root.extra.state_dict().items()}
    HOOKS[hook](model)
    root.load_state_dict(sd, strict=strict, assign=assign)
    embedding, head = model.tok_embeddings.weight, model.output.weight
    assert embedding.device.type == head.device.type == "cpu"
    if hook == "untie":
        assert torch.equal(embedding, E) and torch.equal(head, H)
        assert head is not embedding and not shares_memory(head, embedding)
    else:
        assert head is embedding and torch.equal(embedding, E if hook == "tie keep=embed" else H)


@pytest.mark.parametrize("tied", [False, True])
def test_a_pair_absent_from_the_state_dict_stays_as_it_was(tied):
    model = Transformer(tied=tied)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tieconv.tie_on_load(model)
    sd = {k: v for k, v in distinct_embedding_and_head().items() if k.startswith("layers.")}
    result = model.load_state_dict(sd, strict=False)
    assert (model.output.weight is model.tok_embeddings.weight) == tied
    assert set(result.missing_keys) >= {"tok_embeddings.weight", "output.weight"}
    assert torch.equal(model.output.weight, before["output.weight"])
    assert torch.equal(model.tok_embeddings.weight, before["tok_embeddings.weight"])
    assert torch.equal(model.layers[0].proj.weight, sd["layers.0.proj.weight"])


def test_an_optimizer_built_before_the_load_holds_replaced_parameters():
    """Why the README builds the optimizer after loading: the hooks replace Parameters."""
    model = Transformer()
    old_head = model.output.weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tieconv.tie_on_load(model)
    model.load_state_dict(checkpoint_without_head())  # assign=False: the embedding's Parameter stays
    held = {id(p) for group in opt.param_groups for p in group["params"]}
    assert id(model.tok_embeddings.weight) in held  # still trained, as the tied head too
    assert old_head is not model.output.weight and id(old_head) in held  # an orphan the model no longer uses

    model = Transformer()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tieconv.tie_on_load(model)
    model.load_state_dict(checkpoint_without_head(), assign=True)  # every Parameter replaced
    held = {id(p) for group in opt.param_groups for p in group["params"]}
    assert not held & {id(p) for p in model.parameters()}

    model = Transformer(tied=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tieconv.untie_on_load(model)
    model.load_state_dict(checkpoint_without_head())
    held = {id(p) for group in opt.param_groups for p in group["params"]}
    assert id(model.tok_embeddings.weight) in held and id(model.output.weight) not in held  # the new head


def test_tie_map_error_is_exported():
    assert tieconv.TieMapError is TieMapError and issubclass(TieMapError, tieconv.TieconvError)
    assert "TieMapError" in tieconv.__all__


def test_unknown_names_list_candidates():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb_in = torch.nn.Embedding(4, 2)
            self.head_out = torch.nn.Linear(2, 4)

    with pytest.raises(TieMapError, match="emb_in.weight.*head_out"):
        tieconv.tie_on_load(Odd())
    handle = tieconv.tie_on_load(Odd(), embed="emb_in.weight", head="head_out.weight")
    assert handle.pairs == [("head_out.weight", "emb_in.weight")]


# ---------------------------------------------------------------- transformers models

IDS = torch.tensor([[1, 5, 9, 3, 7]])


def build(name):
    torch.manual_seed(0)
    if name == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, tie_word_embeddings=True))
    if name == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0))
    if name == "t5":
        return transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0))
    if name == "bert":
        return transformers.BertForMaskedLM(transformers.BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    raise ValueError(name)


def run(model):
    model.eval()
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            return model(IDS, decoder_input_ids=IDS).logits
        return model(IDS).logits


@pytest.mark.parametrize("name", ["llama", "gpt2", "t5", "bert"])
def test_transformers_models_round_trip_through_save_and_hooks(tmp_path, name):
    original = build(name)
    result = tieconv.save(original, tmp_path / "ckpt")
    assert result.dropped and result.bytes_saved > 0
    sd = tieconv.load_state_dict(tmp_path / "ckpt", tie=False)  # a copy for every target, as a pipeline might
    for target in result.dropped:
        sd.pop(target, None)  # and a checkpoint that lacks the tied names
    fresh = build(name)  # built normally: non-persistent buffers (rotary inv_freq) stay
    handle = tieconv.tie_on_load(fresh)
    fresh.load_state_dict(sd, strict=True, assign=True)
    for target, source in handle.pairs:
        assert fresh.get_parameter(target) is fresh.get_parameter(source), target
    assert torch.equal(run(fresh), run(original))
    assert tieconv.inspect(tmp_path / "ckpt").verdict == "tied"


def test_untie_on_load_for_a_transformers_model(tmp_path):
    original = build("llama")
    tieconv.save(original, tmp_path / "ckpt")
    fresh = build("llama")
    tieconv.untie_on_load(fresh)
    fresh.load_state_dict(tieconv.load_state_dict(tmp_path / "ckpt"))
    assert fresh.lm_head.weight is not fresh.model.embed_tokens.weight
    assert torch.equal(run(fresh), run(original))


def test_untie_on_load_keeps_a_tied_transformers_models_two_matrices():
    sd = {k: v.clone() for k, v in build("llama").state_dict().items()}
    sd["lm_head.weight"] = torch.randn_like(sd["lm_head.weight"])  # a fine-tuned head
    config = build("llama").config
    config.tie_word_embeddings = False
    reference = transformers.LlamaForCausalLM(config)
    reference.load_state_dict(sd)
    fresh = build("llama")
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    tieconv.untie_on_load(fresh)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.model.embed_tokens.weight, sd["model.embed_tokens.weight"])
    assert torch.equal(fresh.lm_head.weight, sd["lm_head.weight"])
    assert torch.equal(run(fresh), run(reference))
