"""Hydra's search-path plugin for fidelity_exp's shipped configs: another Hydra application in an
environment where fidelity_exp is installed can compose them (`data=anes96`, `metrics=default`,
`model=smollm2_135m`, ...) beside its own. They are appended, so the application's own configs
always win. Hydra imports every plugin on every start: this module imports nothing of
fidelity_exp, it only finds where the package lies.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

PROVIDER = "fidelity_exp"


def config_dir() -> Path | None:
    """fidelity_exp's config folder: inside the package (a wheel), or beside `src/` (a checkout)."""
    spec = importlib.util.find_spec("fidelity_exp")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(list(spec.submodule_search_locations)[0])
    for candidate in (package / "conf", package.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate.resolve()
    return None


class FidelityExpSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        folder = config_dir()
        if folder is None:
            return
        for element in search_path.get_path():
            path = str(element.path).removeprefix("file://")
            if "://" not in path and Path(path).resolve() == folder:
                return   # fidelity_exp's own app: already its primary config folder
        search_path.append(provider=PROVIDER, path=folder.as_uri())
