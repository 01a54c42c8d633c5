"""The served arm against a real llama.cpp server (the `xllamacpp` wheel: llama.cpp's own server,
in this process, on a loopback port) serving the offline SmolLM2-135M-Instruct GGUF: option
probabilities against the in-process engine on the same interviews, the quickstart design with
`arms=[served, tabular]`, the response cache, retries, the request budget, a server that is
down, and the API key never reaching the store."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fidelity_exp.llm.served import ServedClient, ServedError, option_reading

from ..command import main
from ..conftest import GGUF
from ..reliability.store import query
from ..reliability.test_bad_input import _runs

SMALL = ("eval.n=12", "pilot.n=40", "metrics.bootstrap=20", "metrics.permutations=20", "metrics.reference_splits=2",
         "simulate.position_twins=3")


def _served(url: str, *more: str) -> tuple[str, ...]:
    return ("arms=[served,tabular]", f"arms.served.base_url={url}", "arms.served.model=smollm2", *more)


@pytest.mark.slow
def test_served_option_probabilities_agree_with_the_in_process_engine(llama_server, tmp_path):
    """The same interviews (humans' own earlier answers) read by llama.cpp on the Q4_1 weights and
    by the in-process engine on the same weights de-quantised to float32."""
    import torch

    from fidelity_exp.api import load_study
    from fidelity_exp.arms.llm import answers_of, records
    from fidelity_exp.llm.engine import option_probabilities
    from fidelity_exp.llm.interview import Renderer, messages
    from fidelity_exp.llm.models import ModelSettings, load_model

    study = load_study(Path(__file__).parents[2] / "conf" / "data" / "anes96.yaml")
    ids = study.frame.index[:6]
    given, answers = records(study.frame.loc[ids], study.spec.given_columns), answers_of(study, ids)
    loaded = load_model(ModelSettings(name="smollm2_135m", source="gguf_package", package=GGUF[0], file=GGUF[1],
                                      shape="smollm2_135m", device="cpu", dtype="float32"))
    renderer = Renderer(study.spec, loaded.tokenizer)
    client = ServedClient(base_url=llama_server, model="smollm2", api_key_env=None, timeout_s=60, retries=0,
                          top_logprobs=20, cache_dir=None)
    diffs, masses = [], []
    for g, a in zip(given, answers):
        for j, q in enumerate(study.spec.questions):
            padded = list(a[:j]) + [None] * (len(a) - j)
            chat = messages(study.spec, g, padded, upto=j)
            served = client.read(chat, len(q.options))
            ids_ = torch.tensor([renderer.prompt_ids(g, a, j)])
            with torch.inference_mode():
                logits = loaded.model(ids_).logits[:, -1]
            local = option_probabilities(logits, renderer.option_tokens[j])[0]
            diffs.append(np.abs(served.probs - local))
            masses.append(served.mass)
    d = np.concatenate(diffs)
    print(f"served vs in-process: max |diff| {d.max():.4f}, mean {d.mean():.4f} over {len(d)} option probabilities; "
          f"option mass mean {np.mean(masses):.3f}")
    # Q4_1 weights read by llama.cpp (8-bit activations in its dot products) vs the same weights
    # de-quantised and multiplied in float32: measured max 0.047, mean 0.0095 on a 2-core EPYC
    # (README); the bound is two to three times that, for other CPUs' kernels
    assert d.max() < 0.12 and d.mean() < 0.02


@pytest.mark.slow
def test_quickstart_with_a_served_arm_then_the_cache(llama_server, tmp_path):
    """The quickstart design with arms=[served,tabular] at a small n: metrics, comparisons, report,
    a FINISHED run; the same command again sends no request; the API key never reaches the store."""
    key = "sk-test-0123456789abcdef"
    env = {"FX_SERVED_KEY": key}
    args = ("+experiment=quickstart", *_served(llama_server, "arms.served.api_key_env=FX_SERVED_KEY"), *SMALL,
            "hydra.run.dir=out")
    done = main(*args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["served/fidelity_score"] is not None and metrics["tabular/fidelity_score"] is not None
    assert "compare/served__vs__tabular/better_share" in metrics
    assert any(k.startswith("served/position/") for k in metrics)
    assert (tmp_path / "out" / "report" / "report.html").is_file()
    db = tmp_path / "mlruns" / "mlflow.db"
    assert [s for s, _ in _runs(tmp_path)] == ["FINISHED"]
    logged = dict(query(db, "select key, value from latest_metrics where key like 'served/served/%'"))
    # 12 twins x 5 questions + 3 twins' 5 questions reversed (position metrics) = 75; plan's probe
    # asked the first twin's first question, which the interviews then read from the cache
    assert logged["served/served/requests"] == 74 and logged["served/served/cached"] == 1
    assert 0 < logged["served/served/option_mass/mean"] <= 1
    done = main(*args, "hydra.run.dir=out2", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    again = json.loads((tmp_path / "out2" / "metrics.json").read_text())
    assert again == metrics                       # the same answers, from the cache
    second = query(db, "select m.value from latest_metrics m join runs r on r.run_uuid = m.run_uuid "
                       "where m.key = 'served/served/requests' order by r.start_time")
    assert second[-1][0] == 0
    for path in [db, *(tmp_path / "mlruns").rglob("*")]:
        if path.is_file():
            assert key.encode() not in path.read_bytes(), f"the API key is in {path}"


class _Proxy(http.server.BaseHTTPRequestHandler):
    """A loopback proxy to the real server that answers `failing` requests (a test of the 1-based
    request number) with `status` and `body` instead of forwarding them."""

    target, failing, status, body, seen = "", frozenset(), 500, b"", 0

    def do_POST(self):   # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Proxy.seen += 1
        if _Proxy.failing(_Proxy.seen):
            self.send_response(_Proxy.status)
            self.end_headers()
            self.wfile.write(_Proxy.body)
            return
        request = urllib.request.Request(_Proxy.target + self.path.removeprefix("/v1"), data=body,
                                         headers={"Content-Type": "application/json"})
        reply = urllib.request.urlopen(request, timeout=60).read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def _proxy(target: str, failing, status: int, body: bytes) -> http.server.ThreadingHTTPServer:
    _Proxy.target, _Proxy.failing, _Proxy.status, _Proxy.body, _Proxy.seen = target, failing, status, body, 0
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return proxy


def test_a_500_is_retried(llama_server):
    proxy = _proxy(llama_server, lambda n: n == 1, 500, b"overloaded")   # the first request fails
    try:
        client = ServedClient(base_url=f"http://127.0.0.1:{proxy.server_port}/v1", model="smollm2", api_key_env=None,
                              timeout_s=60, retries=2, top_logprobs=20, cache_dir=None)
        reading = client.read([{"role": "user", "content": "Pick one.\nA. Yes\nB. No\nAnswer with the letter of "
                                "one option only."}], 2)
        assert client.counters.requests == 2 and client.counters.retries == 1
        assert reading.probs.sum() == pytest.approx(1.0)
    finally:
        proxy.shutdown()


def test_the_request_budget_is_checked_before_the_run(llama_server, tmp_path):
    done = main("+experiment=quickstart", *_served(llama_server, "arms.served.max_requests=50"), *SMALL, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "arms.served.max_requests=50" in done.stderr and "up to 75 requests" in done.stderr
    assert _runs(tmp_path) == []


def test_a_server_that_is_down_is_one_message_before_the_run(tmp_path):
    done = main("+experiment=quickstart", *_served("http://127.0.0.1:9/v1", "arms.served.retries=0"), *SMALL,
                cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "arms.served.base_url='http://127.0.0.1:9/v1'" in done.stderr and "is the server running" in done.stderr
    assert _runs(tmp_path) == []


def test_an_unset_key_variable_is_named(tmp_path):
    done = main("+experiment=quickstart", *_served("http://127.0.0.1:9/v1", "arms.served.api_key_env=FX_NO_SUCH_KEY"),
                *SMALL, cwd=tmp_path)
    assert done.returncode == 2 and "FX_NO_SUCH_KEY" in done.stderr and "is not set" in done.stderr


def test_option_reading_maps_variants_and_fills_missing_options():
    """' A' and 'a' are option A; C is not in the top-k: filled with min(smallest, left / missing)."""
    alternatives = [("A", np.log(0.5)), (" a", np.log(0.1)), ("B", np.log(0.2)), ("Hello", np.log(0.1))]
    reading = option_reading(alternatives, 3)
    assert reading.mass == pytest.approx(0.8) and reading.missing == 1
    filled = min(0.1, (1 - 0.9) / 1)
    assert reading.probs == pytest.approx(np.array([0.6, 0.2, filled]) / (0.8 + filled))
    with pytest.raises(ServedError, match="top_logprobs"):
        from fidelity_exp.llm.served import first_token_alternatives
        first_token_alternatives({"choices": [{"message": {"content": "A"}}]})


def test_averaged_option_order_scores_both_orders_of_every_twin(llama_server, tmp_path):
    """simulate.option_order=averaged: each question asked forward and reversed for every twin (the
    answer drawn from the mean), so 4 twins x 5 questions x 2 orders = 40 requests."""
    done = main("+experiment=quickstart", "arms=[served]", f"arms.served.base_url={llama_server}",
                "arms.served.model=smollm2", "arms.served.cache_dir=", "simulate.option_order=averaged", "eval.n=4",
                "pilot.n=40", "metrics.bootstrap=0", "metrics.permutations=0", "metrics.reference_splits=0",
                "tracking.enabled=false", "hydra.run.dir=out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert "arm served: 40 requests" in said and "40 requests (0 retried), 0 from the cache" in said
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["served/position/primacy/mean"] is not None
    assert not (tmp_path / "mlruns" / "served_cache").exists()


def test_the_completions_api_reads_what_the_chat_api_reads(llama_server, tmp_path):
    """api=completions renders each chat with the run's model's tokenizer (SmolLM2's template, the
    one the server applies to chat requests): the same option probabilities either way."""
    from types import SimpleNamespace

    from fidelity_exp.api import load_study
    from fidelity_exp.arms.llm import answers_of, records
    from fidelity_exp.arms.served import Served
    from fidelity_exp.llm.interview import messages
    from fidelity_exp.llm.models import ModelSettings

    study = load_study(Path(__file__).parents[2] / "conf" / "data" / "anes96.yaml")
    ids = study.frame.index[:2]
    given, answers = records(study.frame.loc[ids], study.spec.given_columns), answers_of(study, ids)
    settings = SimpleNamespace(paths=SimpleNamespace(mlruns=tmp_path),
                               model=ModelSettings(name="smollm2_135m", source="gguf_package", package=GGUF[0],
                                                   file=GGUF[1], shape="smollm2_135m"))
    clients = {}
    for api in ("chat", "completions"):
        arm = Served(base_url=llama_server, model="smollm2", api=api, cache_dir="")
        clients[api] = arm.client(settings)
    assert clients["completions"].route == "/completions"
    for g, a in zip(given, answers):
        for j, q in enumerate(study.spec.questions):
            chat = messages(study.spec, g, list(a[:j]) + [None] * (len(a) - j), upto=j)
            chat_p, text_p = (clients[api].read(chat, len(q.options)).probs for api in ("chat", "completions"))
            assert np.abs(chat_p - text_p).max() < 1e-3, (j, chat_p, text_p)


def test_a_server_lost_mid_run_fails_the_run_and_stops_every_twin(llama_server, tmp_path):
    proxy = _proxy(llama_server, lambda n: n > 6, 400, b"model unloaded")   # down from the 7th request on
    try:
        url = f"http://127.0.0.1:{proxy.server_port}/v1"
        done = main("+experiment=quickstart", "arms=[served]", f"arms.served.base_url={url}",
                    "arms.served.model=smollm2",
                    "arms.served.cache_dir=", "arms.served.concurrency=2", "eval.n=10", "pilot.n=40",
                    "simulate.position_metrics=false", cwd=tmp_path)
    finally:
        proxy.shutdown()
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "answered HTTP 400: model unloaded" in done.stderr
    assert [status for status, _ in _runs(tmp_path)] == ["FAILED"]
    # 1 probe + 5 healthy, the failing request, and at most the other twin's request in flight
    assert _Proxy.seen <= 6 + 2, _Proxy.seen
