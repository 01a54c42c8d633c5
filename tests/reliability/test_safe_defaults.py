"""Safe defaults: the UI on loopback only, no remote code or pickles unless the user opts in, safe
YAML, and no path from a spec or config that makes the tool write outside its run and store
directories. (Adapters as safetensors only: tests/llm/test_llm.py; a YAML file with a python tag
and a spec name with '../': tests/reliability/test_bad_input.py.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from fidelity_exp.errors import UserError
from fidelity_exp.llm.models import ModelSettings, _hub_kwargs
from fidelity_exp.settings import typed
from fidelity_exp.study import load_spec_file
from fidelity_exp.study import loading as spec_loading

from ..conftest import REPO, tiny_frame, tiny_spec
from ..command import main


def test_every_mlflow_ui_command_we_document_binds_to_loopback():
    """Every `mlflow ui` / `mlflow server` command line we document or run (the name followed by
    its options; prose that only names the command is not one) binds to 127.0.0.1."""
    command = re.compile(r"mlflow\"? (ui|server)\b\s+(--|\\)")
    commands = [line for path in ("README.md", "Makefile", "deploy/local_cluster.sh")
                for line in (REPO / path).read_text().splitlines()
                if command.search(line) and not line.lstrip().startswith("#")]
    assert len(commands) >= 3, commands   # README's `make ui` line, the Makefile's, the cluster's server
    for line in commands:
        assert "--host 127.0.0.1" in line, line


def test_no_remote_code_unless_the_user_opts_in():
    for preset in sorted((REPO / "conf" / "model").glob("*.yaml")):
        assert OmegaConf.load(preset).get("trust_remote_code") is False, preset.name
    hub = {"source": "hub", "name_or_path": "x"}
    assert _hub_kwargs(typed(ModelSettings, hub, "model"))["trust_remote_code"] is False   # unset: off
    assert _hub_kwargs(typed(ModelSettings, {**hub, "trust_remote_code": True}, "model"))["trust_remote_code"] is True


UNSAFE_CALLS = {
    ("yaml", "load"): "yaml.load without a SafeLoader", ("yaml", "unsafe_load"): "yaml.unsafe_load",
    ("yaml", "full_load"): "yaml.full_load", ("pickle", "load"): "pickle.load", ("pickle", "loads"): "pickle.loads",
    ("pd", "read_pickle"): "pandas.read_pickle", ("joblib", "load"): "joblib.load", ("torch", "load"): "torch.load",
}


# Loaders our code passes to yaml.load, each checked to be a SafeLoader (no python/* tags).
SAFE = {"yaml.SafeLoader": yaml.SafeLoader, "_SpecLoader": spec_loading._SpecLoader}


def _unsafe_calls(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        if any(k.arg == "trust_remote_code" and ast.unparse(k.value) == "True" for k in node.keywords):
            found.append(f"line {node.lineno}: trust_remote_code=True")
        if not (isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)):
            continue
        what = UNSAFE_CALLS.get((node.func.value.id, node.func.attr))
        keywords = {k.arg: k.value for k in node.keywords}
        if what == "yaml.load without a SafeLoader" and ast.unparse(keywords.get("Loader", ast.Constant(""))) in SAFE:
            continue
        if what == "torch.load" and ast.unparse(keywords.get("weights_only", ast.Constant(False))) == "True":
            continue
        if what:
            found.append(f"line {node.lineno}: {what}")
    return found


def test_the_code_never_unpickles_or_loads_yaml_unsafely():
    assert all(issubclass(loader, yaml.SafeLoader) for loader in SAFE.values())
    assert _unsafe_calls("import yaml\nyaml.load(text)\ntorch.load(p)\nf(trust_remote_code=True)\n") == [
        "line 2: yaml.load without a SafeLoader", "line 3: torch.load", "line 4: trust_remote_code=True"]
    offenders = {str(path.relative_to(REPO)): found for path in sorted((REPO / "src").rglob("*.py"))
                 if (found := _unsafe_calls(path.read_text()))}
    assert offenders == {}


def test_a_python_tag_in_a_spec_file_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    spec = tmp_path / "evil.yaml"
    spec.write_text(f"name: evil\nintro: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UserError, match="evil.yaml"):
        load_spec_file(spec)
    assert not marker.exists()


@pytest.mark.slow
def test_paths_in_spec_and_config_never_lead_writes_outside_the_store(tmp_path):
    """A run started in work/ with an experiment name full of '../' and a data file outside work/
    writes nothing outside work/mlruns/."""
    work, conf = tmp_path / "work", tmp_path / "work" / "my_conf" / "data"
    conf.mkdir(parents=True)
    tiny_frame(60).to_csv(tmp_path / "survey.csv", index=False)            # the data live outside work/
    (conf / "mine.yaml").write_text(yaml.safe_dump(tiny_spec(Path("../survey.csv"), name="mine")))
    before = {p for p in tmp_path.rglob("*")}
    done = main(f"hydra.searchpath=[file://{work / 'my_conf'}]", "data=mine", "arms=[pilot_resample]", "pilot.n=20",
               "metrics.bootstrap=5", "metrics.reference_splits=2", "tracking.experiment=../../../escaped",
               cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert written and all(p.is_relative_to(work / "mlruns") for p in written), sorted(
        str(p) for p in written if not p.is_relative_to(work / "mlruns"))
    assert not list(tmp_path.parent.glob("escaped*")) and not list(Path("/").glob("escaped*"))
