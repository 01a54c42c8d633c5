"""Hydra finds sweeper plugins only under `hydra_plugins`; this is the thin shim that hands the
sweep to `fidelity_exp.sweep` (imported lazily: Hydra imports every plugin on every start)."""

from __future__ import annotations

import os
import sys
from typing import Any, List

from hydra.plugins.sweeper import Sweeper


class FidelityOptunaSweeper(Sweeper):
    """Optuna ask-and-tell over any Hydra launcher; MLflow parent run per sweep, child per trial."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.hydra_context = self.config = self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from fidelity_exp.errors import UserError
        from fidelity_exp.sweep.sweeper import OptunaSweep

        try:
            return OptunaSweep(self.settings, self.config, self.hydra_context, self.launcher).run(arguments)
        except UserError as e:
            if os.environ.get("FIDELITY_DEBUG", "").lower() in ("1", "true", "yes"):
                raise
            print(f"fidelity_exp: error: {e}", file=sys.stderr)
            sys.exit(2)
