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

Option order (METRICS.md section 12) is decided here and only here: an order is a tuple of
option indices in the order they are shown (`order[k]` is the option lettered `LETTERS[k]`);
`None` is the spec's order. `shown_order(mode, ...)` gives a twin's order of a question for
`fixed`, `reversed` or `random` (seeded per seed, twin and question, so a twin's order never
depends on how many twins or questions there are). Letters follow the shown order; answers are
always recorded as option codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from fidelity_exp.errors import UserError
from fidelity_exp.study.spec import Question, StudySpec

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
INSTRUCTION = "Answer with the letter of one option only."
ORDERS = ("fixed", "reversed", "random")     # how a question's options are shown
ORDER_MODES = (*ORDERS, "averaged")          # simulate.option_order: averaged is shown fixed, scored both ways
TRAINING_ORDERS = ("fixed", "random")        # finetune.option_order: the spec's order, or a fresh one per epoch
ORDER_STREAM = 3                             # random orders' stream (uniforms_for uses 2)
Order = tuple  # option indices in shown order; None = the spec's order


def shown_order(mode: str, n_options: int, *, seed: int = 0, who: int = 0, question: int = 0,
                 epoch: int | None = None) -> Order:
    """The order a question's `n_options` options are shown in: `fixed` (spec order),
    `reversed`, or `random`, a permutation seeded by (seed, twin `who`, question[, epoch])."""
    if mode == "fixed":
        return tuple(range(n_options))
    if mode == "reversed":
        return tuple(range(n_options - 1, -1, -1))
    if mode == "random":
        key = [seed, ORDER_STREAM, who, question] + ([] if epoch is None else [epoch])
        return tuple(int(k) for k in np.random.default_rng(key).permutation(n_options))
    raise ValueError(f"option order {mode!r}: expected one of {', '.join(ORDERS)}")


def shown_mode(mode: str) -> str:
    """The order a twin is shown under the option-order mode `mode` (`averaged` shows spec order)."""
    return "fixed" if mode == "averaged" else mode


def interview_orders(spec: StudySpec, mode: str, *, seed: int = 0, who: int = 0, epoch: int | None = None
                     ) -> list[Order]:
    """One twin's (or pilot human's) order of every question."""
    return [shown_order(mode, len(q.options), seed=seed, who=who, question=j, epoch=epoch)
            for j, q in enumerate(spec.questions)]


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


def question_text(q: Question, order: Order | None = None) -> str:
    texts = list(q.options.values())
    shown = range(len(texts)) if order is None else order
    options = "\n".join(f"{LETTERS[k]}. {texts[i]}" for k, i in enumerate(shown))
    return f"{q.text}\n{options}\n{INSTRUCTION}"


def letter(q: Question, code: Any, order: Order | None = None) -> str:
    for i, c in enumerate(q.codes):
        if c == code or str(c) == str(code):
            return LETTERS[i if order is None else list(order).index(i)]
    raise KeyError(f"{code!r} is not an option of {q.column!r}")


def messages(spec: StudySpec, given: Mapping[str, Any], answers: Sequence[Any], upto: int | None = None,
             show_persona: bool = True, orders: Sequence[Order | None] | None = None) -> list[dict[str, str]]:
    """The chat of one interview: every question before `upto` with its answer (a question whose
    answer is missing is left out, as the human skipped it), then question `upto` unanswered;
    `upto=None` renders the complete interview. `orders[j]`: question j's shown order."""
    orders = orders if orders is not None else [None] * len(spec.questions)
    chat = [{"role": "system", "content": system_text(spec, given, show_persona)}]
    last = len(spec.questions) if upto is None else upto
    for q, answer, order in zip(spec.questions[:last], answers[:last], orders[:last], strict=True):
        if _missing(answer):
            continue
        chat.append({"role": "user", "content": question_text(q, order)})
        chat.append({"role": "assistant", "content": letter(q, answer, order)})
    if upto is not None and upto < len(spec.questions):
        chat.append({"role": "user", "content": question_text(spec.questions[upto], orders[upto])})
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

    def prompt_ids(self, given: Mapping[str, Any], answers: Sequence[Any], j: int,
                   orders: Sequence[Order | None] | None = None) -> list[int]:
        """Tokens up to the point where the twin answers question j (after the generation prompt)."""
        padded = list(answers[:j]) + [None] * (len(self.spec.questions) - j)
        return self.ids(self.text(messages(self.spec, given, padded, upto=j, show_persona=self.show_persona,
                                           orders=orders), True))

    def training_example(self, given: Mapping[str, Any], answers: Sequence[Any],
                         orders: Sequence[Order | None] | None = None) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of a whole interview; labels are -100 except on the answer letters."""
        chat = messages(self.spec, given, answers, upto=None, show_persona=self.show_persona, orders=orders)
        ids = self.ids(self.text(chat, False))
        labels = [-100] * len(ids)
        for turn in range(2, len(chat), 2):   # after each user turn: where the assistant's letter starts
            start = len(self.ids(self.text(chat[:turn], True)))
            answer = self.ids(chat[turn]["content"])
            if ids[start : start + len(answer)] != answer:
                raise AssertionError("the chat template tokenised an answer differently in context")
            labels[start : start + len(answer)] = answer
        return ids, labels
