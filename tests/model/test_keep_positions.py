"""`TransformerLM.hidden_states(keep=...)`: the last block computes only the kept positions,
and their states equal the full forward's at those positions — without a cache, on a ragged
KV cache and on rows continuing a shared prefix (`SharedPrefixKVCache`)."""

from __future__ import annotations

import pytest
import torch

from lmforge.infer.kv_cache import KVCache, SharedPrefixKVCache
from lmforge.infer.loop import extend
from lmforge.model import ModelConfig, TransformerLM
from lmforge.model.transformer import rows_at


@pytest.fixture(params=[{}, {"attention": "sdpa"}, {"num_kv_heads": 2},
                        {"norm_position": "post"}, {"positional": "nope"}, {"num_layers": 1}])
def model(request) -> TransformerLM:
    torch.manual_seed(0)
    config = {"vocab_size": 50, "context_length": 64, "d_model": 32, "num_layers": 2,
              "num_heads": 4, **request.param}
    return TransformerLM.from_config(ModelConfig(**config)).eval()


def test_kept_positions_equal_the_full_forward(model):
    ids = torch.randint(0, 50, (3, 12))
    keep = torch.tensor([[11, 3], [0, 5], [7, 7]])
    with torch.no_grad():
        want = rows_at(model.hidden_states(ids), keep)
        torch.testing.assert_close(model.hidden_states(ids, keep=keep), want)


def test_kept_positions_on_a_ragged_cache_and_a_shared_prefix(model):
    own = torch.randint(0, 50, (3, 6))
    keep = torch.tensor([[5, 1], [0, 0], [3, 4]])
    with torch.no_grad():
        for make in (lambda: _ragged(model), lambda: _shared(model)):
            want = rows_at(model.hidden_states(own, kv_cache=make()), keep)
            got = model.hidden_states(own, kv_cache=make(), keep=keep)
            torch.testing.assert_close(got, want)


def test_keep_with_packed_rows_is_refused(model):
    with pytest.raises(ValueError, match="keep and document_ids"):
        model.hidden_states(torch.zeros(1, 4, dtype=torch.long), keep=torch.zeros(1, 1).long(),
                            document_ids=torch.zeros(1, 4, dtype=torch.long))


def _ragged(model: TransformerLM) -> KVCache:
    cache = KVCache.for_model(model, 3, 30)
    extend(model, cache, [[1, 2, 3], [4, 5], [6]])
    return cache


def _shared(model: TransformerLM) -> SharedPrefixKVCache:
    prefix = KVCache.for_model(model, 1, 10)
    extend(model, prefix, [list(range(10))])
    return SharedPrefixKVCache(prefix, 3, 30)
