"""Prompt templates for SFT: an example (any of three JSON shapes) → (prompt, response) text.

Three example shapes are read (`lmforge.align.data` reads them from JSONL):

    {"prompt": "...", "response": "..."}                     a pair, the prompt as written
    {"instruction": "...", "input": "...", "output": "..."}  Alpaca (Taori et al. 2023); "input"
                                                             optional, may be ""
    {"messages": [{"role": "user", "content": "..."}, ...]}  a chat; the final message, when it
                                                             is the assistant's, is the response

and rendered with one of three templates:

- "alpaca": `ALPACA_TEMPLATE` (or `ALPACA_INPUT_TEMPLATE` when there is an input); the prompt
  ends with "### Response:\\n" and the response follows it as is. A chat example may hold one
  user message only (Alpaca has no system or earlier turns).
- "chat": the template `lmforge serve` uses, `lmforge.infer.chat.render_chat` (called, never
  copied: one source of truth). The prompt ends with the "Assistant:" cue and the response is
  " " + the assistant's text, the space the model writes first and the server strips. For a chat
  example only the final assistant message is the response; earlier turns are prompt.
- "plain": the prompt text exactly as given (for prompts already formatted, e.g. R1-zero
  prompts); an Alpaca example's instruction and input are joined by a blank line.

    >>> format_example({"prompt": "2+2=", "response": "4"}, "plain")
    ('2+2=', '4')
    >>> format_example({"instruction": "Add.", "input": "2+2", "output": "4"}, "chat")
    ('User: Add.\\n\\n2+2\\n\\nAssistant:', ' 4')
    >>> format_prompt({"instruction": "Say hi."})[-50:]
    'request.\\n\\n### Instruction:\\nSay hi.\\n\\n### Response:\\n'

A malformed example (wrong types, no recognised keys, a multi-turn chat with "alpaca") raises
`InvalidArgument` saying what is wrong; `lmforge.align.data` adds the file and line.
"""

from __future__ import annotations

from collections.abc import Mapping

from lmforge.errors import InvalidArgument
from lmforge.infer.chat import render_chat

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_INPUT_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
TEMPLATES = ("alpaca", "chat", "plain")


def format_prompt(example: Mapping, template: str = "alpaca") -> str:
    """The prompt text of `example` under `template` (its response, if any, is ignored)."""
    return format_example(example, template, need_response=False)[0]


def format_example(
    example: Mapping, template: str = "alpaca", need_response: bool = True
) -> tuple[str, str]:
    """(prompt, response) text of `example` under `template` (module docstring).

    With `need_response=False` an example without a response gives ("<prompt>", "").
    InvalidArgument for an unknown template or a malformed example.
    """
    if template not in TEMPLATES:
        raise InvalidArgument(f"unknown SFT template {template!r}; use one of {TEMPLATES}")
    if not isinstance(example, Mapping):
        raise InvalidArgument(f"an example is a JSON object, got a {type(example).__name__}")
    if "messages" in example:
        return _format_chat_example(example["messages"], template, need_response)
    if "instruction" in example:
        instruction = _text(example, "instruction")
        extra = _text(example, "input", optional=True)
        response = _text(example, "output", optional=not need_response)
    elif "prompt" in example:
        instruction, extra = _text(example, "prompt"), ""
        response = _text(example, "response", optional=not need_response)
    else:
        raise InvalidArgument(
            f"an example has the keys {sorted(example)[:8]}; give {{'prompt', 'response'}}, "
            "Alpaca's {'instruction', 'input', 'output'} or {'messages': [...]}"
        )
    if template == "alpaca":
        if extra:
            return ALPACA_INPUT_TEMPLATE.format(instruction=instruction, input=extra), response
        return ALPACA_TEMPLATE.format(instruction=instruction), response
    content = f"{instruction}\n\n{extra}" if extra else instruction
    if template == "plain":
        return content, response
    return _chat_prompt([{"role": "user", "content": content}]), _chat_response(response)


def _format_chat_example(messages: object, template: str, need_response: bool) -> tuple[str, str]:
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("'messages' must be a non-empty list of {'role', 'content'} objects")
    if not all(isinstance(m, Mapping) for m in messages):
        raise InvalidArgument("every entry of 'messages' must be a {'role', 'content'} object")
    response = ""
    if messages[-1].get("role") == "assistant":
        response = _text(messages[-1], "content", where="the final assistant message")
        messages = messages[:-1]
    elif need_response:
        raise InvalidArgument("the final message must be the assistant's (the response to "
                              "train on); add it or drop the example")
    if not messages:
        raise InvalidArgument("'messages' has no message before the assistant's reply; "
                              "add the user's message")
    if template == "chat":
        return _chat_prompt(messages), _chat_response(response)
    if template == "plain" or len(messages) != 1 or messages[0].get("role") != "user":
        raise InvalidArgument(
            f"template {template!r} takes a chat of exactly one user message (and the assistant's "
            "reply); use template 'chat' for system messages and several turns"
        )
    instruction = _text(messages[0], "content", where="the user message")
    return ALPACA_TEMPLATE.format(instruction=instruction), response


def _chat_prompt(messages: list) -> str:
    try:
        return render_chat(messages, add_generation_prompt=True)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None


def _chat_response(response: str) -> str:
    return f" {response}" if response else ""


def _text(obj: Mapping, key: str, optional: bool = False, where: str = "the example") -> str:
    """obj[key] as a string: missing or "" allowed only when `optional` (then "")."""
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise InvalidArgument(f"{key!r} of {where} is a {type(value).__name__}, not a string")
    if not optional and not value.strip():
        raise InvalidArgument(f"{key!r} of {where} is missing or empty; give its text")
    return value
