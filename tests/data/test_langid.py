"""identify_language: hand-labelled sentences in 20 languages, fixture documents, input edge
cases, and proof that the bundled model is used without touching the network."""

from __future__ import annotations

import socket

import pytest

from lmforge.data import langid
from lmforge.data.langid import bundled_model_path, identify_language
from tests.conftest import shared_path

# One sentence per language, written for these tests (same meaning in each).
SENTENCES = {
    "en": "The library opens at nine in the morning and closes late on Thursdays.",
    "fr": "La bibliothèque ouvre à neuf heures du matin et ferme tard le jeudi.",
    "de": "Die Bibliothek öffnet um neun Uhr morgens und schließt donnerstags spät.",
    "es": "La biblioteca abre a las nueve de la mañana y cierra tarde los jueves.",
    "it": "La biblioteca apre alle nove del mattino e chiude tardi il giovedì.",
    "pt": "A biblioteca abre às nove da manhã e fecha tarde às quintas-feiras.",
    "nl": "De bibliotheek gaat om negen uur 's ochtends open en sluit laat op donderdag.",
    "sv": "Biblioteket öppnar klockan nio på morgonen och stänger sent på torsdagar.",
    "pl": "Biblioteka jest otwarta od dziewiątej rano i zamykana późno w czwartki.",
    "fi": "Kirjasto aukeaa yhdeksältä aamulla ja sulkeutuu torstaisin myöhään.",
    "tr": "Kütüphane sabah dokuzda açılır ve perşembe günleri geç kapanır.",
    "vi": "Thư viện mở cửa lúc chín giờ sáng và đóng cửa muộn vào thứ Năm.",
    "ru": "Библиотека открывается в девять утра и закрывается поздно по четвергам.",
    "uk": "Бібліотека відкривається о дев'ятій ранку і зачиняється пізно по четвергах.",
    "el": "Η βιβλιοθήκη ανοίγει στις εννέα το πρωί και κλείνει αργά την Πέμπτη.",
    "ar": "تفتح المكتبة في التاسعة صباحا وتغلق متأخرة يوم الخميس.",
    "hi": "पुस्तकालय सुबह नौ बजे खुलता है और गुरुवार को देर से बंद होता है।",
    "ja": "図書館は朝九時に開き、木曜日は遅くまで開いています。",
    "ko": "도서관은 아침 아홉 시에 문을 열고 목요일에는 늦게 닫습니다.",
    "zh": "图书馆早上九点开门，星期四很晚才关门。",
}


@pytest.mark.parametrize("lang", sorted(SENTENCES))
def test_hand_labelled_sentences(lang):
    code, score = identify_language(SENTENCES[lang])
    assert code == lang
    assert 0.5 < score <= 1.0


def test_the_issue_examples():
    code, score = identify_language("欢迎来到我们的网站")
    assert code == "zh" and score > 0.9
    assert identify_language("This is a plain English sentence about the weather.")[0] == "en"


def test_fixture_documents_are_english():
    for name in ["moby_extracted.txt", "high_quality_wiki_reference.txt", "low_quality_cc.txt"]:
        text = shared_path("fixtures", "cs336-a4", name).read_text(encoding="utf-8")
        code, score = identify_language(text)
        assert code == "en", name
        assert score > 0.5, name


def test_the_whole_document_is_classified_not_its_first_line():
    german = ("Das ist ein längerer deutscher Text über die Verwaltung von Rechnern. Wir "
              "installieren Pakete, konfigurieren Dienste und lesen die Protokolldateien.")
    assert identify_language("Hello there, my friend.\n" + german)[0] == "de"
    assert identify_language("Hello there, my friend.")[0] == "en"  # the first line alone


def test_all_capitals_are_lowercased_first():
    shout = "HELLO WORLD THIS IS AN ENGLISH SENTENCE"  # as written: 'it' (0.81) for lid.176
    assert identify_language(shout)[0] == "en"


@pytest.mark.parametrize("text", ["", "   \n\t ", "2024-01-01 12:00", "!!! ??? ...", "🙂🙂"])
def test_text_without_letters_is_undetermined(text):
    assert identify_language(text) == ("und", 0.0)


def test_lone_surrogates_do_not_crash():
    code, _ = identify_language("This English sentence has a broken \ud800 character in it.")
    assert code == "en"


def test_the_bundled_model_loads_with_the_network_blocked(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("language id tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "FTLANG_CACHE"]:
        monkeypatch.delenv(var, raising=False)
    langid._load_model.cache_clear()
    try:
        assert identify_language(SENTENCES["fr"])[0] == "fr"
    finally:
        langid._load_model.cache_clear()
    assert bundled_model_path().name == "lid.176.ftz"


def test_explicit_model_path(tmp_path):
    assert identify_language(SENTENCES["es"], model_path=bundled_model_path()) == \
        identify_language(SENTENCES["es"])
    with pytest.raises(FileNotFoundError, match="model_path=None for the bundled one"):
        identify_language(SENTENCES["es"], model_path=tmp_path / "missing.ftz")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model" * 10)
    with pytest.raises(ValueError, match="is not a fastText model"):
        identify_language(SENTENCES["es"], model_path=junk)
