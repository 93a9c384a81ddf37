"""The public API named in the issue is importable from ``lmforge.tokenizer``, as specified."""

import inspect

import lmforge.tokenizer as T


def params(fn) -> list[str]:
    return [
        f"{p.name}={p.default!r}" if p.default is not p.empty else p.name
        for p in inspect.signature(fn).parameters.values()
    ]


def test_train_bpe_signature():
    assert params(T.train_bpe) == [
        "input_path", "vocab_size", "special_tokens=()", "num_workers=None", "progress=True"
    ]
    sig = inspect.signature(T.train_bpe).parameters
    assert sig["num_workers"].kind is inspect.Parameter.KEYWORD_ONLY
    assert sig["progress"].kind is inspect.Parameter.KEYWORD_ONLY


def test_tokenizer_signatures():
    assert params(T.Tokenizer.__init__) == ["self", "vocab", "merges", "special_tokens=None"]
    assert params(T.Tokenizer.encode)[:2] == ["self", "text"]
    assert params(T.Tokenizer.decode) == ["self", "ids"]
    assert params(T.Tokenizer.encode_iterable)[:2] == ["self", "iterable"]
    assert params(T.Tokenizer.encode_file)[:4] == [
        "self", "input_path", "output_path", "num_workers=None"
    ]
    assert params(T.compression_ratio) == ["tokenizer", "text"]


def test_everything_in_all_is_importable():
    for name in T.__all__:
        assert getattr(T, name) is not None, name
