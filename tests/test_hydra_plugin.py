"""Another Hydra application, written in a temp folder, composes fidelity_exp's shipped configs
(`data=anes96`, `metrics=default`) through the search-path plugin and scores with the public API;
its numbers equal the API called here with the same inputs. Its own configs still win."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

import fidelity_exp as fx

from .conftest import CONF

APP = '''
import json
import hydra
from omegaconf import OmegaConf
import fidelity_exp as fx

@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg):
    study = fx.load_study(cfg.data)
    people = study.frame.reset_index(drop=True)
    humans, twins = people.iloc[:200], people.iloc[200:400].copy()
    twins["twin_of"] = range(200)
    twins[study.spec.given_columns] = humans[study.spec.given_columns].to_numpy()   # paired: their humans' personas
    scores = fx.score(study.spec, {"half": twins}, human=humans, **OmegaConf.to_container(cfg.metrics, resolve=True))
    print(json.dumps({"study": study.spec.name, "note": cfg.note, "model": cfg.model.name,
                      "bootstrap": cfg.metrics.bootstrap, "metrics": scores.metrics}))

main()
'''
CONFIG = '''
defaults:
  - data: anes96           # fidelity_exp's spec
  - metrics: default       # fidelity_exp's metric preset
  - model: mine            # the app's own group, beside fidelity_exp's model presets
  - _self_
seed: 7
note: foreign
metrics:
  bootstrap: 15
  reference_splits: 3
'''


def test_a_foreign_hydra_app_composes_the_shipped_configs(tmp_path):
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "config.yaml").write_text(CONFIG)
    (tmp_path / "conf" / "model" / "mine.yaml").write_text("name: my_model\n")
    (tmp_path / "app.py").write_text(APP)
    done = subprocess.run([sys.executable, "app.py", "hydra.run.dir=out"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["study"] == "anes96" and result["note"] == "foreign" and result["model"] == "my_model"
    assert result["bootstrap"] == 15

    study = fx.load_study(CONF / "data" / "anes96.yaml")
    people = study.frame.reset_index(drop=True)
    twins = people.iloc[200:400].copy()
    twins["twin_of"] = np.arange(200)
    twins[study.spec.given_columns] = people.iloc[:200][study.spec.given_columns].to_numpy()
    here = fx.score(study.spec, {"half": twins}, human=people.iloc[:200], bootstrap=15, reference_splits=3, seed=7)
    assert json.loads(json.dumps(here.metrics)) == result["metrics"]

    listed = subprocess.run([sys.executable, "app.py", "--info", "searchpath"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120).stdout
    assert "fidelity_exp" in listed and listed.index(f"file://{tmp_path}") < listed.index("fidelity_exp")
