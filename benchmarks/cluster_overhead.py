"""What the cluster path costs a trial: the same sweep on this machine (basic launcher, sqlite
stores, trials in the sweep's process) and on the local cluster (SLURM job per trial, Optuna in
PostgreSQL, MLflow over HTTP with proxied artifacts), side by side in one run.

    sudo deploy/local_cluster.sh up
    .venv/bin/python benchmarks/cluster_overhead.py [--model tiny_random|smollm2_135m] [--trials 2]

Per trial, from each sweep's trials.csv: its wall time in Optuna (ask to tell: queueing, the job's
start, the run), the run's own time and the run's tracking time. The overhead share is
1 - local trial time / cluster trial time (trials run one at a time on both paths).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # a trial of each model: as the tests' (tiny_random) and a short SmolLM2 one
    "tiny_random": ["model=tiny_random", "finetune.max_steps=2", "eval.n=40", "metrics.bootstrap=10",
                    "metrics.reference_splits=2"],
    "smollm2_135m": ["finetune.max_steps=10", "eval.n=20", "arms=[finetuned]", "metrics.bootstrap=10",
                     "metrics.reference_splits=2"],   # ~9 min a trial with eval.n=40 and all 4 arms here
}


def cluster_env() -> dict[str, str]:
    out = subprocess.run(["bash", str(ROOT / "deploy" / "local_cluster.sh"), "env"], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"the local cluster is not up: sudo deploy/local_cluster.sh up ({out.stderr.strip()})")
    return dict(line.removeprefix("export ").split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def sweep(args: list[str], cwd: Path, env: dict[str, str]) -> pd.DataFrame:
    done = subprocess.run([sys.executable, "-m", "fidelity_exp", "-m", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    text = done.stdout + done.stderr
    if done.returncode:
        sys.exit(text[-3000:])
    (folder,) = re.findall(r"sweep report: (\S+) \(", text)
    return pd.read_csv(cwd / folder / "trials.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(SIZES), default="tiny_random")
    parser.add_argument("--trials", type=int, default=2, help="pilot sizes swept (one trial each)")
    parser.add_argument("--traces", type=int, default=25, help="tracking.traces_per_arm (25: the default)")
    a = parser.parse_args()
    sizes = ",".join(str(30 + 10 * i) for i in range(a.trials))
    common = ["+experiment=quickstart", "+sweep=pilot_size", *SIZES[a.model], "validation.n=0", f"pilot.n=choice({sizes})",
              "seed=choice(0)", f"tracking.traces_per_arm={a.traces}", "hydra.sweeper.batch_size=1"]
    name = f"overhead-{uuid.uuid4().hex[:8]}"
    base_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI" and not k.startswith("SLURM_")}
    cluster = cluster_env()
    frames = {}
    with tempfile.TemporaryDirectory() as tmp:
        local_dir, cluster_dir = Path(tmp, "local"), Path(tmp, "cluster")
        local_dir.mkdir(), cluster_dir.mkdir()
        frames["local"] = sweep([*common, f"tracking.experiment={name}"], local_dir, base_env)
        frames["cluster"] = sweep([*common, f"tracking.experiment={name}", "hydra/launcher=slurm",
                                   "hydra.launcher.partition=main", "hydra.launcher.gpus_per_node=0",
                                   "hydra.launcher.cpus_per_task=2", "hydra.launcher.mem_gb=6",
                                   f"hydra.sweeper.storage={cluster['FIDELITY_OPTUNA_STORAGE']}",
                                   f"hydra.sweeper.study_name={name}"], cluster_dir, {**base_env, **cluster})
    rows = []
    for path, frame in frames.items():
        rows.append({"path": path, "trials": len(frame), "trial_s": frame["duration_s"].mean(),
                     "run_s": frame["timing/run_s"].mean(), "tracking_s": frame["timing/tracking_s"].mean(),
                     "traces_s": frame.get("timing/traces_s", pd.Series([float("nan")])).mean(),
                     "outside_run_s": (frame["duration_s"] - frame["timing/run_s"]).mean()})
    table = pd.DataFrame(rows).set_index("path")
    print(f"model {a.model}, {a.trials} trials per path, traces_per_arm={a.traces}, one trial at a time")
    print(table.round(2).to_string())
    local, remote = table.loc["local", "trial_s"], table.loc["cluster", "trial_s"]
    print(f"cluster overhead: {remote - local:.1f} s per trial = {1 - local / remote:.1%} of a cluster trial "
          f"(outside the run: {table.loc['cluster', 'outside_run_s'] - table.loc['local', 'outside_run_s']:.1f} s; "
          f"tracking: {table.loc['cluster', 'tracking_s'] - table.loc['local', 'tracking_s']:.1f} s)")


if __name__ == "__main__":
    main()
