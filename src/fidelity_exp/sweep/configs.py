"""The `sweep` config group: the files of the top-level `sweeps/` folder.

`python -m fidelity_exp -m +experiment=quickstart +sweep=lora` composes `sweeps/lora.yaml` on
top of the experiment. The files live in `sweeps/` (not `conf/`) so that a sweep is easy to find;
they are registered in Hydra's ConfigStore under the group `sweep`, with the package their
first-line header names (`# @package _global_`). Your own sweeps can live in your config folder
as `sweep/<name>.yaml`, found through `hydra.searchpath` like your own experiments.
"""

from __future__ import annotations

from pathlib import Path

from fidelity_exp.errors import UserError

HERE = Path(__file__).resolve().parent
# A source checkout keeps sweeps/ at the repository root; a wheel carries it inside the package.
SWEEPS_DIR = HERE.parent / "sweeps" if (HERE.parent / "sweeps").is_dir() else HERE.parents[2] / "sweeps"
GROUP = "sweep"


def package_of(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# @package "):
            return line.removeprefix("# @package ").strip()
        if line.strip() and not line.startswith("#"):
            break
    raise UserError(f"{path}: a sweep file needs a '# @package _global_' header line (see sweeps/lora.yaml)")


def register_sweeps(folder: Path = SWEEPS_DIR) -> list[str]:
    """Put every `sweeps/*.yaml` into the ConfigStore group `sweep`; returns their names."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    cs = ConfigStore.instance()
    names = []
    for path in sorted(folder.glob("*.yaml")):
        cs.store(group=GROUP, name=path.stem, node=OmegaConf.load(path), package=package_of(path),
                 provider="fidelity_exp")
        names.append(path.stem)
    return names
