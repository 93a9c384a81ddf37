"""SFT templates and JSONL reading: exact prompt text (Alpaca by hand, chat through the server's
own `render_chat` / `parse_chat`), the three example shapes, and bad input naming file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge import ENDOFTEXT
from lmforge.align.data import SFTPair, get_packed_sft_dataset, read_sft_examples
from lmforge.align.templates import (
    ALPACA_INPUT_TEMPLATE,
    ALPACA_TEMPLATE,
    format_example,
    format_prompt,
)
from lmforge.errors import InputError, InvalidArgument, PathNotFound
from lmforge.infer.chat import parse_chat, render_chat
from lmforge.tokenizer import Tokenizer

HEADER = ("Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request.\n\n")


def test_alpaca_template_by_hand():
    prompt, response = format_example({"instruction": "Add 2 and 2.", "output": "4"})
    assert prompt == HEADER + "### Instruction:\nAdd 2 and 2.\n\n### Response:\n"
    assert response == "4"
    with_input = format_prompt({"instruction": "Add.", "input": "2 and 2"}, "alpaca")
    assert with_input == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd.\n\n### Input:\n2 and 2\n\n### Response:\n"
    )
    assert with_input == ALPACA_INPUT_TEMPLATE.format(instruction="Add.", input="2 and 2")
    # {"prompt", "response"} and a one-turn chat fill the same template.
    assert format_example({"prompt": "Add 2 and 2.", "response": "4"}) == (prompt, "4")
    chat = {"messages": [{"role": "user", "content": "Add 2 and 2."},
                         {"role": "assistant", "content": "4"}]}
    assert format_example(chat, "alpaca") == (prompt, "4")
    assert ALPACA_TEMPLATE.format(instruction="Add 2 and 2.") == prompt


def test_chat_template_is_the_servers_render_chat():
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]
    prompt, response = format_example({"messages": messages}, "chat")
    assert prompt == render_chat(messages[:-1])
    assert prompt == "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: 2+2?\n\n" \
        "Assistant:"
    assert response == " 4"  # the space the model writes first and the server strips
    assert parse_chat(prompt) == messages[:-1]
    # Prompt + response + a new turn reads back as the whole conversation.
    assert parse_chat(prompt + response + "\n\n") == messages
    # Other shapes become one user turn.
    assert format_example({"prompt": "2+2?", "response": "4"}, "chat") == (
        "User: 2+2?\n\nAssistant:", " 4")
    # A chat without the assistant's reply still has a prompt (generation, evaluation).
    assert format_prompt({"messages": messages[:-1]}, "chat") == prompt


def test_plain_template_keeps_the_prompt_verbatim():
    r1 = "A conversation... User: 2+2? Assistant: <think>"
    assert format_example({"prompt": r1, "response": " 4 </think>"}, "plain") == (
        r1, " 4 </think>")
    assert format_prompt({"instruction": "Add.", "input": "2 2"}, "plain") == "Add.\n\n2 2"


@pytest.mark.parametrize(("example", "template", "message"), [
    ({"text": "hi"}, "alpaca", "has the keys"),
    ({"prompt": "", "response": "x"}, "alpaca", "'prompt' of the example is missing or empty"),
    ({"prompt": "p", "response": 3}, "alpaca", "'response' .* is a int"),
    ({"prompt": "p"}, "alpaca", "'response' .* missing"),
    ({"instruction": "i", "output": ""}, "alpaca", "'output' .* missing or empty"),
    ({"messages": []}, "chat", "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "chat", "final message must be"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "chat", "no message before"),
    ({"messages": [{"role": "robot", "content": "hi"},
                   {"role": "assistant", "content": "x"}]}, "chat", "robot"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                   {"role": "assistant", "content": "a"}]}, "alpaca", "use template 'chat'"),
    ({"prompt": "p", "response": "r"}, "chatml", "unknown SFT template"),
    (["prompt", "response"], "alpaca", "JSON object"),
])
def test_malformed_examples_say_what_is_wrong(example, template, message):
    with pytest.raises(InvalidArgument, match=message):
        format_example(example, template)


def _jsonl(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_sft_examples_reads_all_shapes_with_sources(tmp_path):
    rows = [
        {"prompt": "2+2?", "response": "4"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"messages": [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "Hey"}]},
    ]
    path = _jsonl(tmp_path, [json.dumps(rows[0]), "", json.dumps(rows[1]), json.dumps(rows[2])])
    pairs = read_sft_examples(path, template="chat")
    assert pairs == [
        SFTPair("User: 2+2?\n\nAssistant:", " 4", f"{path}:1"),
        SFTPair("User: Say hi.\n\nAssistant:", " Hi!", f"{path}:3"),
        SFTPair("User: Yo\n\nAssistant:", " Hey", f"{path}:4"),
    ]
    assert read_sft_examples(path)[1] == SFTPair(
        format_prompt(rows[1]), "Hi!", f"{path}:3")


@pytest.mark.parametrize(("lines", "message"), [
    (['{"prompt": "a", "response": "b"}', '{"prompt": "a", "resp'], r"sft.jsonl:2: not valid JSON"),
    (['{"prompt": "a", "response": "b"}', '{"prompt": "a"}'], r"sft.jsonl:2: 'response'"),
    (['{"question": "a", "answer": "b"}'], r"sft.jsonl:1: .*has the keys"),
    (['[1, 2]'], r"sft.jsonl:1: an example is a JSON object"),
    (["", "  "], r"sft.jsonl holds no examples"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, lines, message):
    with pytest.raises(InputError, match=message):
        read_sft_examples(_jsonl(tmp_path, lines))


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(PathNotFound, match=r"nope\.jsonl"):
        read_sft_examples(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.jsonl holds no examples"):
        read_sft_examples(empty)


def test_too_long_prompt_and_special_token_name_the_file_and_line(tmp_path):
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], [ENDOFTEXT])
    path = _jsonl(tmp_path, [json.dumps({"prompt": "short", "response": "ok"}),
                             json.dumps({"prompt": "x" * 100, "response": "ok"}),
                             json.dumps({"prompt": "p", "response": f"a {ENDOFTEXT} b"})])
    pairs = read_sft_examples(path, "plain")
    with pytest.raises(InputError, match=r"sft\.jsonl:2 needs 102 positions .* seq_len = 64"):
        get_packed_sft_dataset(pairs[:2], tok, seq_len=64)
    with pytest.raises(InputError, match=r"sft\.jsonl:3 contains the special token"):
        get_packed_sft_dataset([pairs[0], pairs[2]], tok, seq_len=64)
