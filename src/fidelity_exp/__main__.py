"""`python -m fidelity_exp +experiment=NAME [overrides]`: compose the config, run the recipe."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fidelity_exp.errors import UserError

# A source checkout keeps the configs at the repository root; a wheel carries them inside the package.
CONFIG_PATH = "conf" if (Path(__file__).parent / "conf").is_dir() else "../../conf"
log = logging.getLogger("fidelity_exp")


def _debug() -> bool:
    return os.environ.get("FIDELITY_DEBUG", "").lower() in ("1", "true", "yes")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def app(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from fidelity_exp import pipeline

    hc = HydraConfig.get()
    try:
        pipeline.run(cfg, choices=dict(hc.runtime.choices), overrides=list(hc.overrides.task),
                     output_dir=hc.runtime.output_dir)
        return None
    except UserError as e:
        if _debug():
            raise
        # One message, no traceback: the user can act on it. Exit 2 like other CLI usage errors.
        print(f"fidelity_exp: error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
