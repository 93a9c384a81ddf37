"""A simple, readable chat template: OpenAI-style messages ↔ one prompt text.

What: `render_chat(messages)` turns `[{"role": "user", "content": "Hi"}, ...]` into the text a
base (not chat-tuned) lmforge model continues; `parse_chat` is its exact inverse (tested as a
round trip). `CHAT_STOP` are the stop strings that end the assistant's turn.

How: each message becomes a paragraph `"<Role>: <content>\\n\\n"` (Role = System, User or
Assistant) and the prompt ends with `"Assistant:"`, the cue for the model's reply. Plain text
rather than special tokens (ChatML's `<|im_start|>`), because a model trained only on prose has
never seen such tokens but has seen dialogue written like this; so the template needs no change
to the tokenizer. The model usually writes a space first (" Hello"), which the server strips;
when it starts a new turn itself ("\\n\\nUser:") that is a stop string.

    >>> render_chat([{"role": "system", "content": "Be brief."},
    ...              {"role": "user", "content": "Hi"}])
    'System: Be brief.\\n\\nUser: Hi\\n\\nAssistant:'
    >>> parse_chat('System: Be brief.\\n\\nUser: Hi\\n\\nAssistant:')
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]

Content containing a turn separator ("\\n\\nUser: " etc.) would make the text ambiguous, so it
is refused (ValueError), as is an unknown role. So is content holding one of the
`special_tokens` given (the server passes its tokenizer's): the template is plain text, and a
message must not be able to write a control token such as ``<|endoftext|>`` into the prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
SEPARATOR = "\n\n"
GENERATION_PROMPT = "Assistant:"
CHAT_STOP = tuple(f"{SEPARATOR}{name}:" for name in ROLES.values())

_TURN = re.compile(rf"({'|'.join(ROLES.values())}): ")
_BOUNDARY = re.compile(rf"{SEPARATOR}(?=(?:{'|'.join(ROLES.values())}): )")  # between turns


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = True,
                special_tokens: Sequence[str] = ()) -> str:
    """The prompt text of `messages` (dicts with "role" and "content" strings).

    With `add_generation_prompt`, the text ends with "Assistant:" for the model to continue.
    ValueError for an unknown role, non-string content, or content holding a turn separator or
    any of `special_tokens`.
    """
    parts = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role is {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            kind = type(content).__name__
            raise ValueError(f"messages[{i}].content must be a string, got {kind}")
        if any(f"{SEPARATOR}{name}: " in content for name in ROLES.values()):
            raise ValueError(
                f"messages[{i}].content contains a turn separator (a blank line followed by "
                "'System: ', 'User: ' or 'Assistant: '); reword it"
            )
        special = next((s for s in special_tokens if s in content), None)
        if special is not None:
            raise ValueError(
                f"messages[{i}].content contains the special token {special!r}; special tokens "
                "are control tokens, not text, and messages may not contain them: remove it"
            )
        parts.append(f"{ROLES[role]}: {content}{SEPARATOR}")
    if add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return "".join(parts)


def parse_chat(text: str) -> list[dict]:
    """The messages `render_chat` made `text` from (a trailing "Assistant:" cue is dropped)."""
    if text.endswith(GENERATION_PROMPT):
        text = text[: -len(GENERATION_PROMPT)]
    if not text:
        return []
    if not text.endswith(SEPARATOR):
        raise ValueError("a rendered chat ends with a blank line (or the 'Assistant:' cue)")
    names = {name: role for role, name in ROLES.items()}
    messages = []
    for i, turn in enumerate(_BOUNDARY.split(text[: -len(SEPARATOR)])):
        match = _TURN.match(turn)
        if match is None:
            raise ValueError(
                f"turn {i} does not start with 'System: ', 'User: ' or 'Assistant: ': "
                f"{turn[:40]!r}"
            )
        messages.append({"role": names[match.group(1)], "content": turn[match.end() :]})
    return messages
