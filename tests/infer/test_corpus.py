"""`lmforge.infer.corpus` and `lmforge generate-corpus`: a model's continuations as a token file.

Reference: every record must be a window of the source followed by `generate_batch`'s greedy
continuation of it alone, then the eos id.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lmforge.cli import main
from lmforge.config import DataConfig, TrainConfig, save_config
from lmforge.infer import generate_batch
from lmforge.infer.corpus import sample_corpus, write_corpus
from lmforge.model import ModelConfig, TransformerLM
from lmforge.tokenizer import Tokenizer
from lmforge.train.checkpoint import save_run_checkpoint
from lmforge.train.optim import AdamW

SOURCE = (np.arange(500) * 7 % 251).astype(np.uint16)


def _model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(260, 24, 32, 2, 4).eval()


def _records(ids: np.ndarray, length: int) -> np.ndarray:
    assert len(ids) % length == 0
    return ids.reshape(-1, length)


def test_records_are_source_windows_and_their_greedy_continuations():
    model = _model()
    ids = sample_corpus(model, SOURCE, 100, prompt_len=5, new_tokens=7, batch_size=3, eos_id=256)
    records = _records(ids, 5 + 7 + 1)
    assert len(ids) >= 100 and len(records) == 9  # whole batches of 3 records of 13 ids
    text = SOURCE.tobytes()
    for record in records:
        prompt, continuation = record[:5].tolist(), record[5:12].tolist()
        assert np.asarray(prompt, dtype=np.uint16).tobytes() in text  # a window of the source
        assert continuation == generate_batch(model, [prompt], 7)[0]
        assert record[12] == 256
    again = sample_corpus(model, SOURCE, 100, prompt_len=5, new_tokens=7, batch_size=3, eos_id=256)
    assert np.array_equal(ids, again)  # seeded


def test_write_corpus_round_trips_as_a_token_file(tmp_path):
    ids = sample_corpus(_model(), SOURCE, 20, prompt_len=4, new_tokens=4, batch_size=2)
    path = write_corpus(tmp_path / "greedy.npy", ids, vocab_size=260)
    loaded = np.load(path)
    assert loaded.dtype == np.uint16 and np.array_equal(loaded, ids)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prompt_len": 20, "new_tokens": 10}, "context_length=24"),
    ({"batch_size": 0}, ">= 1"),
    ({"prompt_len": 8, "new_tokens": 8, "source": SOURCE[:8]}, "more than prompt_len=8"),
])
def test_bad_settings_are_refused(kwargs, message):
    source = kwargs.pop("source", SOURCE)
    with pytest.raises(ValueError, match=message):
        sample_corpus(_model(), source, 10, **kwargs)


def test_cli_writes_the_corpus_of_a_run(tmp_path):
    model = _model()
    config = ModelConfig(vocab_size=260, context_length=24, d_model=32, num_layers=2, num_heads=4)
    np.save(tmp_path / "train.npy", SOURCE)
    run = tmp_path / "run"
    run.mkdir()
    save_config(TrainConfig(model=config, data=DataConfig(train=str(tmp_path / "train.npy"))),
                run / "config.toml")
    save_run_checkpoint(run, 1, model, AdamW(model.parameters()), {})
    Tokenizer({i: bytes([i]) for i in range(256)}, [], ["<|endoftext|>"]).save(run / "tokenizer")
    out = tmp_path / "corpus.npy"
    result = CliRunner().invoke(main, ["generate-corpus", "--run", str(run), "--tokens", "50",
                                       "--out", str(out), "--prompt-len", "4", "--new-tokens",
                                       "6", "--batch-size", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    records = _records(np.load(out), 4 + 6 + 1)
    assert (records[:, -1] == 256).all()  # <|endoftext|> of the run's tokenizer
    first = records[0].tolist()
    assert first[4:10] == generate_batch(model, [first[:4]], 6)[0]
