"""A served model as an interviewer: option probabilities from any OpenAI-compatible chat endpoint
(vLLM, SGLang, llama.cpp's server, OpenAI).

One request per question and order: the interview rendered by `interview.messages` (the same
chat the in-process arms read), `max_tokens=1`, `logprobs` with `top_logprobs` alternatives.
The returned first-token alternatives are mapped to option letters (spaces stripped, case
merged, variants of one letter summed) and renormalised over the question's options. An option
missing from the top-k is filled as OpinionQA does: min(smallest returned probability, the
mass left / the number missing). The twin's answer is then drawn from these probabilities with
the run's uniforms, never taken from the server's sampled text.

The client: `concurrency` requests in flight, a timeout, retries with exponential backoff on
429, 5xx and connection errors, and an on-disk cache keyed by (base_url, model, request body),
so a rerun or a resumed sweep pays nothing twice. The API key is read from the environment
variable the config names and sent as a header only: it is never part of a cache key, a log
line, a param or an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fidelity_exp.errors import UserError
from fidelity_exp.llm.interview import LETTERS

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class ServedError(UserError):
    pass


@dataclass
class Reading:
    """One question's option probabilities (shown letter order) and how much the server said."""

    probs: np.ndarray        # (K,) renormalised over the options, in shown-letter order
    mass: float              # the raw probability the options held among the returned alternatives
    missing: int             # options absent from the top-k (filled)


@dataclass
class Counters:
    requests: int = 0        # sent to the server (cache hits not counted)
    cached: int = 0
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)


class ServedClient:
    """Requests to one endpoint (`base_url`, `model`) with a key from `api_key_env` (or none)."""

    def __init__(self, *, base_url: str, model: str, api_key_env: str | None, timeout_s: float, retries: int,
                 top_logprobs: int, cache_dir: str | os.PathLike | None,
                 render: Callable[[list[dict[str, str]]], str] | None = None):
        """`render`: the completions API, the chat rendered to the prompt text by this function (a
        tokenizer's chat template); None: the chat API (the server applies its template)."""
        self.render = render
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s, self.retries, self.top_logprobs = timeout_s, retries, top_logprobs
        self.cache = Path(cache_dir) if cache_dir else None
        self._key = None
        if api_key_env:
            self._key = os.environ.get(api_key_env)
            if not self._key:
                raise ServedError(f"arms.served.api_key_env: the environment variable {api_key_env!r} is not set "
                                  "(it holds the API key; the key itself never goes in the config)")
        self.counters = Counters()

    # -- one question -----------------------------------------------------------------------
    @property
    def route(self) -> str:
        return "/chat/completions" if self.render is None else "/completions"

    def body(self, chat: list[dict[str, str]]) -> dict[str, Any]:
        if self.render is not None:
            return {"model": self.model, "prompt": self.render(chat), "max_tokens": 1, "temperature": 0,
                    "logprobs": self.top_logprobs}
        return {"model": self.model, "messages": chat, "max_tokens": 1, "temperature": 0, "logprobs": True,
                "top_logprobs": self.top_logprobs}

    def read(self, chat: list[dict[str, str]], n_options: int) -> Reading:
        return option_reading(self.alternatives(chat), n_options)

    def alternatives(self, chat: list[dict[str, str]]) -> list[tuple[str, float]]:
        """(token, logprob) of the first answer token's top alternatives, from the cache or the server."""
        body = self.body(chat)
        key = hashlib.sha256(json.dumps({"base_url": self.base_url, "body": body}, sort_keys=True).encode()
                             ).hexdigest()
        path = self.cache / key[:2] / f"{key}.json" if self.cache else None
        if path is not None and path.is_file():
            self.counters.add(cached=1)
            return [tuple(x) for x in json.loads(path.read_text())]
        response = self.post(self.route, body)
        found = first_token_alternatives(response)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(found))
            os.replace(tmp, path)
        return found

    # -- the wire ---------------------------------------------------------------------------
    def post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.base_url + route
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            self.counters.add(requests=1)
            try:
                request = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                    return json.loads(reply.read())
            except urllib.error.HTTPError as e:
                detail = _detail(e)
                if e.code not in RETRY_STATUS or attempt == self.retries:
                    raise ServedError(f"arms.served: {url} answered HTTP {e.code}{detail}") from None
                why = f"HTTP {e.code}"
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                if attempt == self.retries:
                    raise ServedError(f"arms.served.base_url={self.base_url!r}: no answer from {url} after "
                                      f"{self.retries + 1} tries ({reason}); is the server running?") from None
                why = str(reason)
            self.counters.add(retries=1)
            wait = min(0.5 * 2 ** attempt, 8.0)
            log.warning("served: %s from %s; retrying in %.1f s (%d of %d)", why, url, wait, attempt + 1, self.retries)
            time.sleep(wait)
        raise AssertionError("unreachable")


def _detail(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read().decode(errors="replace").strip()
    except Exception:   # the body is only a hint
        text = ""
    return f": {text[:300]}" if text else ""


def first_token_alternatives(response: dict[str, Any]) -> list[tuple[str, float]]:
    """(token, logprob) pairs of the first generated token's top alternatives: OpenAI's chat format
    (`logprobs.content[0].top_logprobs`, also llama.cpp's completions) or its legacy completions
    format (`logprobs.top_logprobs[0]`, {token: logprob}: vLLM, OpenAI); a reply with neither is
    an error naming what is missing."""
    try:
        logprobs = response["choices"][0]["logprobs"]
        if isinstance(logprobs.get("content"), list):
            return [(str(t["token"]), float(t["logprob"])) for t in logprobs["content"][0]["top_logprobs"]]
        return [(str(t), float(lp)) for t, lp in logprobs["top_logprobs"][0].items()]
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ServedError("arms.served: the server's reply holds no first-token top_logprobs: it does not return "
                          "log probabilities for these requests (vLLM, SGLang, llama.cpp's server and OpenAI do; set "
                          "arms.served.top_logprobs to at most what the server allows)") from None


def option_reading(alternatives: Sequence[tuple[str, float]], n_options: int) -> Reading:
    """Map returned tokens to the first `n_options` letters (stripped, upper-cased, variants
    summed), fill options missing from the top-k (OpinionQA: min(smallest returned prob, left
    mass / missing)) and renormalise over the options."""
    letters = LETTERS[:n_options]
    raw = np.zeros(n_options)
    seen = np.zeros(n_options, dtype=bool)
    returned = [math.exp(lp) for _, lp in alternatives]
    for (token, _), p in zip(alternatives, returned):
        t = token.strip().upper()
        if len(t) == 1 and t in letters:
            k = letters.index(t)
            raw[k] += p
            seen[k] = True
    mass = float(raw.sum())
    missing = int((~seen).sum())
    if missing:
        left = max(0.0, 1.0 - float(sum(returned)))
        fill = min(min(returned) if returned else 1.0, left / missing)
        raw[~seen] = max(fill, 1e-12)
    return Reading(raw / raw.sum(), mass, missing)
