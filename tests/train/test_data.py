"""Token files, random batches, the resumable sampler and the in-order eval iterator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmforge.train import (
    BatchSampler,
    TokenDataError,
    get_batch,
    iterate_eval_batches,
    open_tokens,
)


@pytest.fixture
def token_file(tmp_path):
    def write(values, dtype) -> str:
        path = tmp_path / f"tokens_{np.dtype(dtype).name}.npy"
        np.save(path, np.asarray(values, dtype=dtype))
        return str(path)

    return write


def test_windows_are_slices_at_uniform_starts_and_y_is_x_shifted(token_file):
    rng = np.random.default_rng(0)
    tokens = open_tokens(token_file(rng.integers(0, 50_000, 5_000), np.uint16))
    x, y = get_batch(tokens, 16, 32, "cpu", rng=np.random.default_rng(7))
    # the same seed on an array of positions reveals the starts that were drawn
    pos, _ = get_batch(np.arange(len(tokens)), 16, 32, "cpu", rng=np.random.default_rng(7))
    assert x.shape == y.shape == (16, 32) and x.dtype == y.dtype == torch.int64
    for row_x, row_y, row_pos in zip(x, y, pos, strict=True):
        s = int(row_pos[0])
        assert torch.equal(row_pos, torch.arange(s, s + 32))
        assert row_x.tolist() == tokens[s : s + 32].tolist()
        assert row_y.tolist() == tokens[s + 1 : s + 33].tolist()


def test_every_start_including_the_last_is_reachable():
    tokens = np.arange(10)
    x, y = get_batch(tokens, 2_000, 4, "cpu", rng=np.random.default_rng(1))
    assert set(x[:, 0].tolist()) == set(range(6))  # starts 0..len-T-1 = 0..5
    assert int(y.max()) == 9  # the final token is a target


@pytest.mark.parametrize(("dtype", "top"), [(np.uint16, 65_535), (np.uint32, 4_000_000_000)])
def test_memmapped_uint16_and_uint32_files_give_exact_int64_ids(token_file, dtype, top):
    values = np.array([top, 0, 1, top - 1, 7, top, 3, 2], dtype=dtype)
    tokens = open_tokens(token_file(values, dtype))
    assert isinstance(tokens, np.memmap) and tokens.dtype == dtype
    x, y = get_batch(tokens, 64, 3, "cpu", rng=np.random.default_rng(2))
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        s = next(i for i in range(len(values) - 3) if values[i : i + 3].tolist() == row_x)
        assert row_y == values[s + 1 : s + 4].tolist()
    assert int(x.max()) <= top and top in x.flatten().tolist() + y.flatten().tolist()


def test_open_tokens_errors_say_what_to_do(tmp_path, token_file):
    with pytest.raises(TokenDataError, match="lmforge tokenizer encode"):
        open_tokens(tmp_path / "missing.npy")
    (tmp_path / "text.npy").write_text("not an array")
    with pytest.raises(TokenDataError, match=r"not a readable \.npy"):
        open_tokens(tmp_path / "text.npy")
    with pytest.raises(TokenDataError, match="must be 1-D"):
        open_tokens(token_file(np.zeros((2, 3)), np.uint16))
    with pytest.raises(TokenDataError, match="must be integers"):
        open_tokens(token_file(np.zeros(5), np.float32))
    with pytest.raises(TokenDataError, match="at least 2"):
        open_tokens(token_file([5], np.uint16))


def test_context_longer_than_the_data_is_a_clear_error():
    with pytest.raises(TokenDataError, match="has 8 tokens; context_length 8 needs at least 9"):
        get_batch(np.arange(8), 1, 8, "cpu")
    with pytest.raises(TokenDataError, match="needs at least"):
        BatchSampler(np.arange(8), 1, 9, "cpu", seed=0)


def test_sampler_resumes_the_exact_batch_sequence_through_json():
    tokens = np.arange(1_000, dtype=np.uint16)
    straight = BatchSampler(tokens, 4, 16, "cpu", seed=3)
    expected = [straight.next()[0] for _ in range(10)]

    first = BatchSampler(tokens, 4, 16, "cpu", seed=3)
    for _ in range(5):
        first.next()
    saved = json.loads(json.dumps(first.state_dict()))
    resumed = BatchSampler(tokens, 4, 16, "cpu", seed=99)  # the seed is overridden by the state
    resumed.load_state_dict(saved)
    assert resumed.batches_drawn == 5
    for want in expected[5:]:
        assert torch.equal(resumed.next()[0], want)


def test_sampler_state_from_a_different_geometry_is_rejected():
    saved = BatchSampler(np.arange(100), 4, 8, "cpu", seed=0).state_dict()
    other = BatchSampler(np.arange(100), 2, 8, "cpu", seed=0)
    with pytest.raises(TokenDataError, match="batch_size: saved 4 vs now 2"):
        other.load_state_dict(saved)


@pytest.mark.parametrize(("n", "max_tokens"), [(101, None), (100, None), (1_000, 250), (5, None)])
def test_eval_iterator_covers_every_target_exactly_once_in_order(n, max_tokens):
    tokens = np.arange(n, dtype=np.uint32)
    batches = list(iterate_eval_batches(tokens, 3, 10, "cpu", max_tokens=max_tokens))
    xs = torch.cat([x.flatten() for x, _ in batches])
    ys = torch.cat([y.flatten() for _, y in batches])
    count = n - 1 if max_tokens is None else max_tokens
    assert ys.tolist() == list(range(1, count + 1))
    assert xs.tolist() == list(range(count))
    assert all(x.shape[0] <= 3 and x.shape[1] <= 10 for x, _ in batches)
    assert all(torch.equal(y[:, :-1], x[:, 1:]) for x, y in batches)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 22])
def test_check_token_ids_finds_the_first_bad_id_across_chunks(token_file, chunk):
    from lmforge.train.data import check_token_ids

    path = token_file([1, 2, 3, 4, 5, 9, 2, 12, 3], np.uint16)
    tokens = open_tokens(path)
    check_token_ids(tokens, 13, chunk=chunk)
    with pytest.raises(TokenDataError, match=r"x\.npy: token id 9 at position 5 is outside "
                                             r"\[0, 8\).*model\.vocab_size to at least 10"):
        check_token_ids(tokens, 8, name="x.npy", chunk=chunk)
    with pytest.raises(TokenDataError, match=r"token id -1 at position 102 .*never negative"):
        check_token_ids(np.array([0, 5, -1, -7]), 8, offset=100, chunk=chunk)


def test_check_token_ids_skips_a_dtype_that_cannot_exceed_the_vocabulary():
    from lmforge.train.data import check_token_ids

    class Unreadable:
        dtype = np.dtype(np.uint8)

        def __len__(self) -> int:
            return 10

        def __getitem__(self, index):
            raise AssertionError("a uint8 file cannot hold an id >= 256: nothing to read")

    check_token_ids(Unreadable(), 256)
