"""A respondent's interview, rendered with the model's chat template.

One function, `messages`, renders every interview, for fine-tuning and for simulation alike, so
the two can never drift apart:

    system:    the spec's intro, the persona (labels, not codes), the conditions' stimulus texts
    user:      question 1, its options enumerated A., B., ...
    assistant: the answer's letter
    user:      question 2 ...

Answers are single letters so that the probability of every option is read off one position of
the model's output (see `engine`). `show_persona=False` leaves the persona out of both
training and simulation (the ablation: does demographic information matter?).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd

from fidelity_exp.errors import UserError
from fidelity_exp.study.spec import Question, StudySpec

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
INSTRUCTION = "Answer with the letter of one option only."


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and pd.isna(value))


def system_text(spec: StudySpec, given: Mapping[str, Any], show_persona: bool) -> str:
    parts = [spec.intro.strip()] if spec.intro else []
    if show_persona:
        lines = [f"- {p.label}: {p.describe(given[p.column])}" for p in spec.persona if not _missing(given.get(p.column))]
        if lines:
            parts.append("About you:\n" + "\n".join(lines))
    for c in spec.conditions:
        code = given.get(c.column)
        if not _missing(code):
            text = next((t for k, t in c.texts.items() if k == code or str(k) == str(code)), None)
            if text is not None:
                parts.append(f"{c.label}: {text}")
    return "\n\n".join(parts)


def question_text(q: Question) -> str:
    options = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(q.options.values()))
    return f"{q.text}\n{options}\n{INSTRUCTION}"


def letter(q: Question, code: Any) -> str:
    for i, c in enumerate(q.codes):
        if c == code or str(c) == str(code):
            return LETTERS[i]
    raise KeyError(f"{code!r} is not an option of {q.column!r}")


def messages(spec: StudySpec, given: Mapping[str, Any], answers: Sequence[Any], upto: int | None = None,
             show_persona: bool = True) -> list[dict[str, str]]:
    """The chat of one interview: every question before `upto` with its answer (a question whose
    answer is missing is left out, as the human skipped it), then question `upto` unanswered;
    `upto=None` renders the complete interview."""
    chat = [{"role": "system", "content": system_text(spec, given, show_persona)}]
    last = len(spec.questions) if upto is None else upto
    for q, answer in zip(spec.questions[:last], answers[:last], strict=True):
        if _missing(answer):
            continue
        chat.append({"role": "user", "content": question_text(q)})
        chat.append({"role": "assistant", "content": letter(q, answer)})
    if upto is not None and upto < len(spec.questions):
        chat.append({"role": "user", "content": question_text(spec.questions[upto])})
    return chat


@dataclass
class Renderer:
    """Turns interviews into token ids for one tokenizer."""

    spec: StudySpec
    tokenizer: Any
    show_persona: bool = True

    def __post_init__(self) -> None:
        too_many = [q.column for q in self.spec.questions if len(q.options) > len(LETTERS)]
        if too_many:
            raise UserError(f"questions {too_many}: an LLM arm labels options A-Z, so at most {len(LETTERS)} options")
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise UserError("model: the tokenizer has no chat template; use an instruction (chat) model")
        self.option_tokens: list[list[int]] = []
        for q in self.spec.questions:
            ids = [self._letter_token(LETTERS[i]) for i in range(len(q.options))]
            self.option_tokens.append(ids)

    def _letter_token(self, char: str) -> int:
        ids = self.tokenizer.encode(char, add_special_tokens=False)
        if len(ids) != 1:
            raise UserError(f"model: the tokenizer splits the answer letter {char!r} into {len(ids)} tokens; "
                            "an LLM arm needs single-token letters")
        return ids[0]

    def text(self, chat: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt)

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, given: Mapping[str, Any], answers: Sequence[Any], j: int) -> list[int]:
        """Tokens up to the point where the twin answers question j (after the generation prompt)."""
        padded = list(answers[:j]) + [None] * (len(self.spec.questions) - j)
        return self.ids(self.text(messages(self.spec, given, padded, upto=j, show_persona=self.show_persona), True))

    def training_example(self, given: Mapping[str, Any], answers: Sequence[Any]) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of a whole interview; labels are -100 except on the answer letters."""
        chat = messages(self.spec, given, answers, upto=None, show_persona=self.show_persona)
        ids = self.ids(self.text(chat, False))
        labels = [-100] * len(ids)
        for turn in range(2, len(chat), 2):   # after each user turn: where the assistant's letter starts
            start = len(self.ids(self.text(chat[:turn], True)))
            answer = self.ids(chat[turn]["content"])
            if ids[start : start + len(answer)] != answer:
                raise AssertionError("the chat template tokenised an answer differently in context")
            labels[start : start + len(answer)] = answer
        return ids, labels
