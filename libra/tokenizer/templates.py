"""Conversation templates as data (docs/design.md §6.6), rendered to a prompt string plus the
character spans that are *not* trained on (docs/design.md §6.5: system prompt, user turns with their
images, role separators).

A template renders a list of (role, message) pairs; the messages already hold their image
placeholders. An empty last assistant message renders the generation prompt (``"... ASSISTANT:"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA_2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while "
    "being safe. Your answers should not include any harmful, racist, sexist, toxic, dangerous, or illegal "
    "content. Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)

Span = tuple[int, int]


def join_message(prefix: str, message: str) -> str:
    """``prefix + message``, with a space between when the message opens with an image.

    A placeholder is only recognised as ``"▁<img_ph>"`` (docs/design.md §5.1): after a newline it would split
    into ordinary pieces. The space is swallowed by the placeholder token, so it adds no token.
    """
    from .text_tokenizer import IMAGE_PLACEHOLDER  # local: text_tokenizer pulls in transformers

    needs_space = message.startswith(IMAGE_PLACEHOLDER) and prefix and not prefix.endswith(" ")
    return prefix + (" " if needs_space else "") + message


@dataclass(frozen=True)
class ConversationTemplate:
    """How turns become one string. ``style`` picks the layout; the strings are the data.

    * ``two`` (v1): ``system + sep``, then ``ROLE: msg`` + ``sep`` after user turns and ``sep2`` after
      assistant turns; an empty message renders ``ROLE:``.
    * ``llama_2``: ``[INST] <<SYS>>..<</SYS>> user [/INST] answer </s><s>[INST] ...`` (leading ``<s>`` is
      left to the tokenizer's BOS).
    * ``plain``: user content (usually only the image) then the answer, each followed by ``sep``.
    """

    name: str
    style: Literal["two", "llama_2", "plain"]
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    sep2: str = " </s>"

    def render(self, messages: list[tuple[str, str]]) -> tuple[str, list[Span]]:
        """(role, message) pairs, roles alternating user/assistant from a user turn → (text, masked spans).

        Masked spans are [start, end) character ranges of everything that is not an answer, its
        separator included: each round from its first character to its answer's first character.
        """
        render = {"two": self._render_two, "llama_2": self._render_llama_2, "plain": self._render_plain}
        return render[self.style](messages)

    def _render_two(self, messages):
        text, masked, round_start = self.system + self.sep, [], 0
        for i, (_, message) in enumerate(messages):
            role = self.roles[i % 2]
            if not message:
                text += role + ":"
                continue
            if i % 2 == 0:
                text += role + ": " + message + self.sep
            else:
                text += role + ": "
                masked.append((round_start, len(text)))
                text += message + self.sep2
                round_start = len(text)
        if round_start < len(text):
            masked.append((round_start, len(text)))  # a trailing prompt (generation) is never a target
        return text, masked

    def _render_llama_2(self, messages):
        text, masked, round_start = "", [], 0
        for i, (_, message) in enumerate(messages):
            if i % 2 == 0:
                if i == 0 and self.system:
                    message = join_message(f"<<SYS>>\n{self.system}\n<</SYS>>\n\n", message)
                text += ("<s>" if i else "") + f"[INST] {message} [/INST]"
            elif message:
                text += " "
                masked.append((round_start, len(text)))
                text += message + " </s>"
                round_start = len(text)
        if round_start < len(text):
            masked.append((round_start, len(text)))
        return text, masked

    def _render_plain(self, messages):
        text, masked, round_start = "", [], 0
        for i, (_, message) in enumerate(messages):
            if i % 2 == 0:
                text = join_message(text, message if message.endswith("\n") else message + self.sep)
            elif message:
                masked.append((round_start, len(text)))
                text += message + self.sep
                round_start = len(text)
        if round_start < len(text):
            masked.append((round_start, len(text)))
        return text, masked


TEMPLATES: dict[str, ConversationTemplate] = {
    "v1": ConversationTemplate("v1", "two", system=V1_SYSTEM),
    "llama_2": ConversationTemplate("llama_2", "llama_2", system=LLAMA_2_SYSTEM, sep="<s>", sep2="</s>"),
    "plain": ConversationTemplate("plain", "plain", sep="\n"),
}


def get_template(name: str) -> ConversationTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]
