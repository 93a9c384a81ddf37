"""Independent reference: our TransformerLM equals HF LlamaForCausalLM on the same weights."""

import pytest
import torch

from lmforge.model import ModelConfig, TransformerLM
from lmforge.model.hf import (
    adjacent_to_half_split,
    from_llama_state_dict,
    half_split_to_adjacent,
    llama_config_kwargs,
    to_llama_state_dict,
)

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency")


def _llama(config: ModelConfig):
    hf_config = transformers.LlamaConfig(**llama_config_kwargs(config))
    hf_config._attn_implementation = "eager"
    return transformers.LlamaForCausalLM(hf_config).eval()


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("attention", ["reference", "sdpa"])
def test_logits_equal_hf_llama_with_mapped_weights(tie, attention):
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=97, context_length=32, d_model=64, num_layers=2, num_heads=4, d_ff=96,
        rope_theta=500.0, tie_embeddings=tie, attention=attention,
    )
    ours = TransformerLM.from_config(config).eval()
    llama = _llama(config)
    missing, unexpected = llama.load_state_dict(
        to_llama_state_dict(ours.state_dict(), config), strict=False
    )
    assert not unexpected
    assert all("rotary" in name for name in missing)
    ids = torch.randint(0, 97, (3, 32))
    with torch.no_grad():
        expected = llama(ids).logits
        got = ours(ids)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_mapping_round_trip_and_permutation_inverse():
    torch.manual_seed(1)
    w = torch.randn(8 * 6, 5)
    assert torch.equal(half_split_to_adjacent(adjacent_to_half_split(w, 6), 6), w)
    # Hand-checked on one head of size 4: our rows (0,1,2,3) = pairs (0,1),(2,3) -> (0,2,1,3).
    rows = torch.arange(4.0)[:, None]
    assert adjacent_to_half_split(rows, 1).flatten().tolist() == [0, 2, 1, 3]
    config = ModelConfig(vocab_size=11, context_length=8, d_model=16, num_layers=2, num_heads=2)
    state = TransformerLM.from_config(config).state_dict()
    back = from_llama_state_dict(to_llama_state_dict(state, config), config)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_ablations_have_no_llama_form():
    config = ModelConfig(vocab_size=11, context_length=8, d_model=16, num_layers=1, num_heads=2,
                         positional="nope")
    with pytest.raises(ValueError, match="positional"):
        llama_config_kwargs(config)
