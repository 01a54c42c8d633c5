"""`served`: a model behind an OpenAI-compatible endpoint answers as twins (vLLM, SGLang,
llama.cpp's server, OpenAI). Several can run in one run, each its own node in `arms`
(conf/arms/served.yaml; `arms.gpt: {_target_: fidelity_exp.arms.served.Served, ...}`).

Twins are interviewed exactly as the in-process arms interview them (llm/interview.py: the
persona, the twin's own earlier answers, the option orders of `simulate.option_order`,
`averaged` and the position metrics' forward and reversed scorings), one request per question
and order (llm/served.py), and answer from the exact option probabilities with the run's
uniforms (`simulate.temperature`), as every LLM arm does.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np

from fidelity_exp.arms import ARMS, Arm, ArmContext, Twins
from fidelity_exp.arms.llm import SimulateSettings, records, synthetic_frame
from fidelity_exp.errors import ConfigError
from fidelity_exp.llm.interview import LETTERS, interview_orders, messages, shown_order
from fidelity_exp.llm.served import ServedClient
from fidelity_exp.metrics.position import OrderScorings
from fidelity_exp.metrics.registry import register_other
from fidelity_exp.settings import option

log = logging.getLogger(__name__)
register_other("served/*/option_mass/mean", "served/*/option_mass/min", "served/*/missing_share",
               "served/*/requests", "served/*/cached", "served/*/retries")


@ARMS.register("served")
@dataclass
class Served(Arm):
    """A served model (OpenAI-compatible chat endpoint) as twins; conf/arms/served.yaml documents each option."""

    simulated_by_llm: ClassVar[bool] = True
    base_url: str = ""
    model: str = ""
    api: str = option("chat", one_of=("chat", "completions"))
    api_key_env: Optional[str] = None
    concurrency: int = option(4, ge=1, what="a number of requests in flight >= 1")
    timeout_s: float = option(60.0, gt=0, what="seconds > 0")
    retries: int = option(3, ge=0, what="a number of retries >= 0")
    top_logprobs: int = option(20, ge=1, le=100, what="a number of alternatives from 1 to 100 (OpenAI allows 20)")
    max_requests: int = option(100_000, ge=1, what="a number of requests >= 1")
    cache_dir: Optional[str] = None

    def check(self, *, finetune: Any = None) -> None:
        for key in ("base_url", "model"):
            if not getattr(self, key):
                raise ConfigError(f"arms.{self.name}.{key}", getattr(self, key),
                                  "expected the served model's " + ("endpoint, e.g. http://127.0.0.1:8000/v1"
                                                                    if key == "base_url" else "name on the server"))
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"arms.{self.name}.base_url", self.base_url, "expected an http:// or https:// URL "
                              "of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1")

    # -- before the run -------------------------------------------------------------------
    def client(self, settings: Any) -> ServedClient:
        """The client for the run's `settings` (paths: the cache; with `api=completions`, the run's
        `model` group's tokenizer renders each chat with its chat template)."""
        cache = self.cache_dir if self.cache_dir is not None else Path(settings.paths.mlruns) / "served_cache"
        return ServedClient(base_url=self.base_url, model=self.model, api_key_env=self.api_key_env,
                            timeout_s=self.timeout_s, retries=self.retries, top_logprobs=self.top_logprobs,
                            cache_dir=cache or None,
                            render=self._renderer(settings) if self.api == "completions" else None)

    def _renderer(self, settings: Any):
        if getattr(self, "_render", None) is None:   # one tokenizer per arm and run (plan's probe, then the twins)
            from fidelity_exp.llm.models import load_tokenizer

            tokenizer = load_tokenizer(settings.model)
            if getattr(tokenizer, "chat_template", None) is None:
                raise ConfigError(f"arms.{self.name}.api", self.api, f"model={settings.model.name}: its tokenizer has "
                                  "no chat template to render the prompts with; use api=chat")
            self._render = lambda chat: tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        return self._render

    def planned_requests(self, n_twins: int, n_questions: int, sim: SimulateSettings) -> int:
        """Requests the interviews make without the cache: one per question, plus one per extra
        order for the twins scored in other orders (`averaged`: every twin; the position metrics:
        `simulate.position_twins`)."""
        from fidelity_exp.llm.engine import _Branches

        branches = _Branches.of(sim.option_order, sim.position_metrics)
        rows = sim.position_rows(n_twins)
        scored = n_twins if branches.average or rows is None else len(rows)
        return n_questions * (n_twins + scored * len(branches.extra))

    def check_run(self, study: Any, split: Any, settings: Any) -> None:
        """Before any run exists: the request count against `max_requests` (said first), and one
        probe request (the server answers, with log probabilities)."""
        too_many = [q.column for q in study.spec.questions if len(q.options) > len(LETTERS)]
        if too_many:
            raise ConfigError(f"arms.{self.name}", self.model, f"questions {too_many} have more than {len(LETTERS)} "
                              "options; an LLM arm labels options A-Z")
        planned = self.planned_requests(len(split.evaluation), len(study.spec.questions), settings.simulate)
        log.info("arm %s: %d requests to %s (model %s) at most, fewer with the cache", self.name, planned,
                 self.base_url, self.model)
        if planned > self.max_requests:
            raise ConfigError(f"arms.{self.name}.max_requests", self.max_requests,
                              f"this run would send up to {planned:,} requests ({len(split.evaluation)} twins x "
                              f"{len(study.spec.questions)} questions, with the extra option orders): raise "
                              "max_requests, or score fewer twins (eval.n) or orders")
        given = records(study.frame.loc[split.evaluation[:1]], study.spec.given_columns)[0]
        chat = messages(study.spec, given, [None] * len(study.spec.questions), upto=0,
                        show_persona=settings.simulate.show_persona)
        self.client(settings).read(chat, len(study.spec.questions[0].options))

    # -- the twins ------------------------------------------------------------------------
    def simulate(self, ctx: ArmContext) -> Twins:
        from fidelity_exp.llm.engine import SimulationResult, _Branches, choose, over_codes, uniforms_for

        spec, sim = ctx.study.spec, ctx.settings.simulate
        client = self.client(ctx.settings)
        twins = records(ctx.study.frame.loc[ctx.split.evaluation], spec.given_columns)
        n, n_q = len(twins), len(spec.questions)
        uniforms = uniforms_for(n, n_q, ctx.seed)
        branches = _Branches.of(sim.option_order, sim.position_metrics)
        rows = sim.position_rows(n)
        if rows is None or branches.average or not branches.extra:
            rows = list(range(n))
        where = {i: r for r, i in enumerate(rows)} if branches.extra else {}
        probs = [np.zeros((n, len(q.options))) for q in spec.questions]
        forward = [np.zeros((len(where), len(q.options))) for q in spec.questions] if where else None
        reverse = [np.zeros((len(where), len(q.options))) for q in spec.questions] if where else None
        answers: list[list[Any]] = [[] for _ in range(n)]
        mass: list[list[float]] = [[] for _ in range(n)]
        missing: list[list[int]] = [[] for _ in range(n)]

        stop = threading.Event()   # set when one interview fails or the run is stopped: the others end

        def read(i: int, chat: list[dict[str, str]], k: int, order) -> np.ndarray:
            try:
                reading = client.read(chat, k)
            except BaseException:
                stop.set()          # before this thread takes another twin
                raise
            mass[i].append(reading.mass)
            missing[i].append(reading.missing)
            return over_codes(reading.probs[None, :], [order])[0]

        def interview(i: int) -> None:
            orders = interview_orders(spec, branches.history, seed=ctx.seed, who=i)
            for j, q in enumerate(spec.questions):
                if stop.is_set():
                    return
                k = len(q.options)
                padded = answers[i] + [None] * (n_q - j)
                chat = messages(spec, twins[i], padded, upto=j, show_persona=sim.show_persona, orders=orders)
                p = read(i, chat, k, orders[j])
                if i in where:
                    scored = {"main": p}
                    for mode in branches.extra:
                        alt = [*orders[:j], shown_order(mode, k), *orders[j + 1:]]
                        scored[mode] = read(i, messages(spec, twins[i], padded, upto=j, show_persona=sim.show_persona,
                                                        orders=alt), k, alt[j])
                    forward[j][where[i]], reverse[j][where[i]] = scored[branches.forward], scored[branches.reverse]
                    if branches.average:
                        p = (scored[branches.forward] + scored[branches.reverse]) / 2
                probs[j][i] = p
                answers[i].append(q.codes[int(choose(p[None, :], uniforms[i, j:j + 1], sim.temperature)[0])])

        started = time.perf_counter()
        log.info("arm %s: interviewing %d twins through %s (%d in flight)", self.name, n, self.base_url,
                 self.concurrency)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = [pool.submit(interview, i) for i in range(n)]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)   # the first failure, not the first twin's turn
                for future in futures:
                    future.result()
            except BaseException:   # a server gone mid-run, Ctrl-C, SIGTERM: no twin sends another request
                stop.set()
                for future in futures:
                    future.cancel()
                raise
        seconds = time.perf_counter() - started
        frame = synthetic_frame(ctx.study, ctx.split, SimulationResult(answers, probs, 0, seconds))
        all_mass = np.concatenate([np.asarray(m, dtype=float) for m in mass])
        all_missing = np.concatenate([np.asarray(m, dtype=float) for m in missing])
        c = client.counters
        figures = {f"served/{self.name}/option_mass/mean": float(all_mass.mean()),
                   f"served/{self.name}/option_mass/min": float(all_mass.min()),
                   f"served/{self.name}/missing_share": float((all_missing > 0).mean()),
                   f"served/{self.name}/requests": float(c.requests), f"served/{self.name}/cached": float(c.cached),
                   f"served/{self.name}/retries": float(c.retries),
                   f"perf/{self.name}/respondent_questions_per_s": n * n_q / seconds,
                   f"perf/{self.name}/simulate_seconds": seconds}
        log.info("arm %s: %d twins x %d questions in %.1f s; %d requests (%d retried), %d from the cache; the options "
                 "held %.3f of the probability on average (min %.3f), an option missing from the top-%d in %.1f%%",
                 self.name, n, n_q, seconds, c.requests, c.retries, c.cached, all_mass.mean(), all_mass.min(),
                 self.top_logprobs, 100 * (all_missing > 0).mean())
        if ctx.tracked is not None:
            ctx.tracked.log_metrics(figures)
        return Twins(frame, position=OrderScorings(forward, reverse) if forward is not None else None)
