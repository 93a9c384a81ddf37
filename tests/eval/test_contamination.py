"""The contamination check against hand-counted overlaps and a brute-force set-of-tuples reference.

The reference builds the corpus's n-gram set as Python tuples (words of `normalize_text` per
document, or token ids of the whole file) and counts each item's windows found in it: exactly
what the streaming, hashed scan must report for every chunk size.
"""

from __future__ import annotations

import json
import random
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lmforge import ENDOFTEXT as EOT
from lmforge.data.minhash import normalize_text
from lmforge.errors import InputError, InvalidArgument, PathNotFound
from lmforge.eval.contamination import DEFAULT_CHUNK, check_contamination

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures" / "eval"

A = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
     "sigma tau upsilon")  # 20 words: 8 windows of 13
B = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"


def item(id: str, text: str, subject: str = "") -> types.SimpleNamespace:
    return types.SimpleNamespace(id=id, text=text, subject=subject)


def write_txt(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(f"{d}\n{EOT}\n" for d in docs), encoding="utf-8")
    return path


def hand_corpus(tmp_path: Path) -> Path:
    # words 3..15 of A (one 13-gram) with other case and punctuation, inside other text; and
    # words 0..12 of A cut in two by a document boundary (no match: n-grams stay in a document)
    return write_txt(tmp_path / "corpus.txt", [
        "It was said: DELTA, epsilon; Zeta... eta? THETA iota kappa (lambda) mu NU xi Omicron "
        "PI! and then nothing more.",
        "The end of a page: alpha beta gamma delta epsilon zeta",
        "eta theta iota kappa lambda mu nu and a new page.",
    ])


@pytest.mark.parametrize("chunk", [1, 2, 5, 12, 13, 14, 100, DEFAULT_CHUNK])
def test_one_shared_13gram_across_chunk_boundaries(tmp_path, chunk):
    items = [item("a", A), item("b", B), item("short", "Too short to check")]
    r = check_contamination(items, [hand_corpus(tmp_path)], chunk=chunk)
    a, b, short = r.items
    assert (a.ngrams, a.matched, a.fraction, a.contaminated) == (8, 1, 1 / 8, True)
    assert a.example == "delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi"
    assert (b.ngrams, b.matched, b.fraction, b.contaminated, b.example) == (3, 0, 0.0, False, None)
    assert short.too_short and (short.ngrams, short.matched, short.contaminated) == (0, 0, False)
    assert r.summary() == {"items": 3, "checked": 2, "too_short": 1, "contaminated": 1,
                           "fraction": 0.5}
    assert (r.unit, r.ngram, r.corpus_units) == ("word", 13, 20 + 11 + 11)
    assert r.corpus_ngrams == (20 - 12) + 0 + 0  # the two short documents have no 13-gram


def test_threshold_on_the_fraction_of_ngrams(tmp_path):
    corpus = hand_corpus(tmp_path)
    assert check_contamination([item("a", A)], [corpus], threshold=0.125).items[0].contaminated
    r = check_contamination([item("a", A)], [corpus], threshold=0.13)
    assert (r.items[0].matched, r.items[0].contaminated, r.contaminated) == (1, False, 0)


def test_word_normalisation_case_punctuation_and_accents(tmp_path):
    corpus = write_txt(tmp_path / "c.txt", ["« JANET’S ducks — lay 16 eggs, per DAY! » Café."])
    items = [item("q", "Janets ducks lay 16 eggs per day: CAFÉ"),
             item("other", "Janet ducks lay 16 eggs per")]  # "janet" is not "janets"
    r = check_contamination(items, [corpus], ngram=6)
    assert [(i.matched, i.ngrams) for i in r.items] == [(3, 3), (0, 1)]
    assert r.items[0].example == "janets ducks lay 16 eggs per"


def test_items_shorter_than_n_are_too_short_not_clean(tmp_path):
    corpus = write_txt(tmp_path / "c.txt", ["a b c d e"])
    r = check_contamination([item("x", "a b c"), item("y", "")], [corpus], ngram=4)
    assert all(i.too_short and not i.contaminated for i in r.items)
    assert (r.checked, r.contaminated, r.fraction) == (0, 0, 0.0)
    r = check_contamination([item("x", "a b c")], [corpus], ngram=3)
    assert (r.items[0].ngrams, r.items[0].matched) == (1, 1)


def test_windows_never_cross_files_and_jsonl_shards_are_read(tmp_path):
    first = write_txt(tmp_path / "1.txt", ["filler words " + " ".join(A.split()[:6])])
    second = write_txt(tmp_path / "2.txt", [" ".join(A.split()[6:13]) + " more filler"])
    shard = tmp_path / "3.jsonl"
    shard.write_text(json.dumps({"id": "x#0", "text": f"Intro. {B.upper()}.", "metadata": {}})
                     + "\n", encoding="utf-8")
    r = check_contamination([item("a", A), item("b", B)], [first, second, shard], chunk=4)
    assert [(i.matched, i.ngrams) for i in r.items] == [(0, 8), (3, 3)]


def test_subjects_and_most_contaminated(tmp_path):
    words = [f"w{i}" for i in range(40)]
    corpus = write_txt(tmp_path / "c.txt", [" ".join(words[:20])])
    items = [item("1", " ".join(words[:8]), "s1"), item("2", " ".join(words[15:25]), "s1"),
             item("3", " ".join(words[30:40]), "s2"), item("4", "w0 w1", "s2")]
    r = check_contamination(items, [corpus], ngram=4)
    assert [(i.matched, i.ngrams) for i in r.items] == [(5, 5), (2, 7), (0, 7), (0, 0)]
    assert r.subjects() == {
        "s1": {"items": 2, "checked": 2, "too_short": 0, "contaminated": 2, "fraction": 1.0},
        "s2": {"items": 2, "checked": 1, "too_short": 1, "contaminated": 0, "fraction": 0.0}}
    assert [i.id for i in r.most_contaminated(5)] == ["1", "2"]
    assert r.to_json()["items"][1] == {"id": "2", "subject": "s1", "ngrams": 7, "matched": 2,
                                       "fraction": 2 / 7, "contaminated": True,
                                       "too_short": False, "example": "w15 w16 w17 w18"}


def brute_word_matches(items, txt_files, ngram) -> list[int]:
    """Each item's windows found in the set of word n-grams (tuples) of every document."""
    seen = set()
    for path in txt_files:
        for doc in path.read_text(encoding="utf-8").split(EOT):
            w = normalize_text(doc).split()
            seen.update(tuple(w[i : i + ngram]) for i in range(len(w) - ngram + 1))
    out = []
    for it in items:
        w = normalize_text(it.text).split()
        out.append(sum(tuple(w[i : i + ngram]) in seen for i in range(len(w) - ngram + 1)))
    return out


def random_texts(rng: random.Random, count: int, longest: int) -> list[str]:
    vocab = ["the", "The", "cat,", "sat", "on", "mat.", "a", "dog!", "ran", "far", "Far", "up",
             "and", "down", "hill", "it's", "its", "é", "e"]
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, longest)))
            for _ in range(count)]


@pytest.mark.parametrize("ngram", [1, 2, 3, 5])
def test_streaming_equals_brute_force_word_sets(tmp_path, ngram):
    rng = random.Random(ngram)
    docs = random_texts(rng, 60, 40)
    spans = []  # stretches of the corpus text: inside one document, and across two
    for i in rng.sample(range(59), 12):
        w, nxt = docs[i].split(), docs[i + 1].split()
        start = rng.randint(0, max(len(w) - 3, 0))
        spans.append(" ".join(w[start : start + rng.randint(3, 12)]))
        spans.append(" ".join(w[-4:] + nxt[:4]))
    items = [item(str(i), t) for i, t in enumerate(random_texts(rng, 30, 12) + spans)]
    files = [write_txt(tmp_path / "a.txt", docs[:30]), write_txt(tmp_path / "b.txt", docs[30:])]
    expected = brute_word_matches(items, files, ngram)
    assert sum(expected) > 0 and sum(e == 0 for e in expected) > 0  # a test with both outcomes
    for chunk in (1, 3, 17, 1000):
        r = check_contamination(items, files, ngram=ngram, chunk=chunk)
        assert [i.matched for i in r.items] == expected, chunk
        assert [i.ngrams for i in r.items] == [
            max(len(normalize_text(it.text).split()) - ngram + 1, 0) for it in items]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from lmforge.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("tok")
    text = " ".join(random_texts(random.Random(0), 200, 30)) + " " + A + " " + B
    (d / "train.txt").write_text(text, encoding="utf-8")
    train_tokenizer(d / "train.txt", 300, num_workers=1, progress=False, out=d / "tok")
    return d / "tok"


def encode_corpus(tokenizer_dir: Path, out: Path, docs: list[str]) -> tuple[Path, np.ndarray]:
    from lmforge.tokenizer import Tokenizer

    src = write_txt(out.with_suffix(".txt"), docs)
    Tokenizer.load(tokenizer_dir).encode_file(src, out, num_workers=1, progress=False)
    return out, np.load(out)


@pytest.mark.parametrize("ngram", [2, 5, 13])
def test_token_mode_equals_brute_force_token_sets(tmp_path, tokenizer_dir, ngram):
    from lmforge.tokenizer import Tokenizer

    rng = random.Random(ngram)
    texts = random_texts(rng, 40, 12)
    docs = [*random_texts(rng, 30, 40), texts[3], "x " + A]
    path, ids = encode_corpus(tokenizer_dir, tmp_path / "tokens.npy", docs)
    tok = Tokenizer.load(tokenizer_dir)
    items = [item(str(i), t) for i, t in enumerate([*texts, A])]
    corpus = ids.tolist()
    seen = {tuple(corpus[i : i + ngram]) for i in range(len(corpus) - ngram + 1)}
    enc = [tok.encode(it.text) for it in items]
    expected = [sum(tuple(e[i : i + ngram]) in seen for i in range(len(e) - ngram + 1))
                for e in enc]
    assert expected[3] > 0 or len(enc[3]) < ngram
    for chunk in (1, 7, 64, DEFAULT_CHUNK):
        r = check_contamination(items, [path], ngram=ngram, chunk=chunk)  # sidecar's tokenizer
        assert [i.matched for i in r.items] == expected, chunk
        assert [i.ngrams for i in r.items] == [max(len(e) - ngram + 1, 0) for e in enc]
    assert (r.unit, r.corpus_units, r.corpus_ngrams) == ("token", len(ids), len(ids) - ngram + 1)
    hit = r.items[-1]
    assert hit.contaminated and hit.example in A


def test_token_ngram_planted_across_a_chunk_boundary(tmp_path, tokenizer_dir):
    from lmforge.tokenizer import Tokenizer

    tok = Tokenizer.load(tokenizer_dir)
    ids = tok.encode(A)
    assert len(ids) >= 15
    corpus = np.array([7] * 10 + ids[1:14] + [9] * 10, dtype=np.uint16)  # one 13-gram of A
    np.save(tmp_path / "plain.npy", corpus)  # no sidecar: the tokenizer must be given
    with pytest.raises(InputError, match=r"the tokenizer of .*plain\.npy is unknown"):
        check_contamination([item("a", A)], [tmp_path / "plain.npy"])
    for chunk in (1, 4, 11, 13, 100):
        r = check_contamination([item("a", A), item("b", B)], [tmp_path / "plain.npy"],
                                tokenizer=tokenizer_dir, chunk=chunk)
        a, b = r.items
        assert (a.ngrams, a.matched, b.matched) == (len(ids) - 12, 1, 0)
        assert a.example == tok.decode(ids[1:14])
    np.save(tmp_path / "head.npy", corpus[:16])  # the same tokens cut into two files: windows
    np.save(tmp_path / "tail.npy", corpus[16:])  # do not run from one file into the next
    r = check_contamination([item("a", A)], [tmp_path / "head.npy", tmp_path / "tail.npy"],
                            tokenizer=tokenizer_dir, chunk=5)
    assert (r.items[0].matched, r.corpus_units) == (0, len(corpus))


def test_token_file_of_another_tokenizer_is_refused(tmp_path, tokenizer_dir):
    from lmforge.tokenizer import Tokenizer, train_tokenizer

    path, _ = encode_corpus(tokenizer_dir, tmp_path / "t.npy", [A])
    other = train_tokenizer(tokenizer_dir.parent / "train.txt", 270, num_workers=1,
                            progress=False, out=tmp_path / "other")
    with pytest.raises(InputError, match="encoded by another tokenizer"):
        check_contamination([item("a", A)], [path], tokenizer=tmp_path / "other")
    with pytest.raises(InputError, match="encoded by another tokenizer"):
        check_contamination([item("a", A)], [path], tokenizer=other)
    sidecar = json.loads(Path(f"{path}.json").read_text())
    sidecar["tokenizer"]["directory"] = str(tmp_path / "gone")
    Path(f"{path}.json").write_text(json.dumps(sidecar))
    with pytest.raises(PathNotFound, match="no longer exists"):
        check_contamination([item("a", A)], [path])
    r = check_contamination([item("a", A)], [path], tokenizer=Tokenizer.load(tokenizer_dir))
    assert r.items[0].matched == r.items[0].ngrams > 0


def test_bad_inputs_are_clear_errors(tmp_path):
    good = write_txt(tmp_path / "c.txt", [A])
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "x.md").write_text("text")
    np.save(tmp_path / "t.npy", np.arange(20, dtype=np.uint16))
    cases = [
        ([tmp_path / "missing.txt"], {}, PathNotFound, "missing.txt does not exist"),
        ([tmp_path / "empty.txt"], {}, InputError, "empty.txt is empty"),
        ([tmp_path], {}, InputError, "is not a file"),
        ([tmp_path / "x.md"], {}, InputError, "cannot tell the format"),
        ([good, tmp_path / "t.npy"], {}, InvalidArgument, "mixes token files"),
        ([], {}, InvalidArgument, "no data files"),
        ([good], {"ngram": 0}, InvalidArgument, "ngram must be in"),
        ([good], {"threshold": 1.5}, InvalidArgument, "threshold must be"),
        ([good], {"chunk": 0}, InvalidArgument, "chunk must be"),
    ]
    for data, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            check_contamination([item("a", A)], data, **kwargs)


def test_gsm8k_questions_embedded_in_real_text_are_exactly_the_ones_flagged(tmp_path):
    if not (FIXTURES / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"{FIXTURES / 'gsm8k'} is absent (the shared evaluation fixtures)")
    from lmforge.eval.tasks import load_task

    task = load_task(f"gsm8k:{FIXTURES / 'gsm8k'}", shots=0)
    questions = [json.loads(line)["question"]
                 for line in (FIXTURES / "gsm8k" / "test.jsonl").open(encoding="utf-8")]
    assert len(questions) == len(task.examples)
    long = [i for i, q in enumerate(questions) if len(q.split()) >= 20]
    chosen = sorted(random.Random(0).sample(long, 6))
    paragraphs = (REPO / "data" / "small_en.txt").read_text(encoding="utf-8").split("\n\n")[:800]
    for k, q in enumerate(chosen):  # inside a paragraph, mid-text; one shouted and re-punctuated
        text = questions[q].upper().replace(".", "!") if k == 0 else questions[q]
        at = 50 + 100 * k
        paragraphs[at] = f"{paragraphs[at]} {text} {paragraphs[at + 1]}"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(paragraphs), encoding="utf-8")
    r = check_contamination(task.examples, [corpus], chunk=4096)
    assert [i for i, it in enumerate(r.items) if it.contaminated] == chosen
    for q in chosen:  # every window inside the question, none reaching into the answer
        assert r.items[q].matched == len(normalize_text(questions[q]).split()) - 12
    assert r.summary()["too_short"] == 0 and r.fraction == len(chosen) / len(questions)


def invoke(args: list[str]):
    """The command under a `lmforge` group, as `lmforge eval` runs it (error: lines, exit 1)."""
    from lmforge.cli import main
    from lmforge.cli.eval_contamination import contamination

    group = type(main)("eval", commands=[contamination])
    return CliRunner().invoke(group, ["contamination", *args])


def write_mc(path: Path) -> Path:
    rows = [{"context": A.rsplit(" ", 1)[0], "choices": ["upsilon", "omega"], "gold": 0},
            {"context": B.rsplit(" ", 1)[0], "choices": ["fifteen", "zero"], "gold": 0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_cli_prints_tables_and_writes_the_json_report(tmp_path):
    task = write_mc(tmp_path / "q.jsonl")
    out = tmp_path / "report.json"
    result = invoke(["--data", str(hand_corpus(tmp_path)), "--task", f"mc:{task}",
                     "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "1/8" in result.output and "50.00%" in result.output
    report = json.loads(out.read_text())
    assert (report["ngram"], report["unit"]) == (13, "word")
    assert report["summary"] == {"items": 2, "checked": 2, "too_short": 0, "contaminated": 1,
                                 "fraction": 0.5}
    assert [(i["id"], i["matched"], i["ngrams"]) for i in report["items"]] == [("0", 1, 8),
                                                                              ("1", 0, 3)]


def test_cli_bad_inputs_exit_1_with_error(tmp_path):
    task = f"mc:{write_mc(tmp_path / 'q.jsonl')}"
    corpus = str(hand_corpus(tmp_path))
    (tmp_path / "empty.txt").write_text("")
    np.save(tmp_path / "t.npy", np.arange(20, dtype=np.uint16))
    cases = [
        (["--data", str(tmp_path / "nope.txt"), "--task", task], "nope.txt does not exist"),
        (["--data", str(tmp_path / "empty.txt"), "--task", task], "is empty"),
        (["--data", corpus, "--task", task, "--ngram", "0"], "ngram must be in"),
        (["--data", corpus, "--task", "hellaswag:x"], "is not KIND:PATH"),
        (["--data", str(tmp_path / "t.npy"), "--task", task], "tokenizer of"),
        (["--data", corpus, "--task", task, "--out", corpus], "would be overwritten"),
    ]
    for args, message in cases:
        result = invoke([*args, "--no-progress"])
        assert result.exit_code == 1, (args, result.output)
        assert result.output.startswith("error: ") and message in result.output, result.output
        assert "Traceback" not in result.output
