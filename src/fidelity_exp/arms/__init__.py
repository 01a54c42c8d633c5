"""Arms: the ways synthetic respondents are produced (LLM base / fine-tuned, no-LLM baselines).

An arm is one class, a dataclass whose fields are its options, registered by name; its config
node `conf/arms/<name>.yaml` (package `arms.<name>`) names the class with `_target_` and gives
the option values. `arms=[base, tabular]` selects which run, `arms.tabular.l2=2` sets an
option, and the options are checked against the dataclass's types before any run exists.
Adding an arm is one Python file (a subclass of `Arm`, registered) and one YAML file.

Every arm answers as twins of the same evaluation humans and returns a synthetic frame in the
SURVEY_SPEC.md format (one row per twin, `twin_of` = the human's id). The LLM arms share one
loaded model through `ArmContext.llm()` (arms/llm.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import pandas as pd

from fidelity_exp.errors import ConfigError
from fidelity_exp.registry import Registry
from fidelity_exp.settings import Checked, typed

if TYPE_CHECKING:
    from fidelity_exp.inference.regressions import TwinSets
    from fidelity_exp.metrics.position import OrderScorings
    from fidelity_exp.study import Split, Study


@dataclass
class Twins:
    """What an arm produced: its twins of the scored humans; (the finetuned arm with
    rectification folds) the twin sets the rectified estimates need; (LLM arms) the twins'
    questions scored with options forward and reversed, for the position metrics."""

    frame: pd.DataFrame
    rectification: "TwinSets | None" = None
    position: "OrderScorings | None" = None


@dataclass
class ArmContext:
    """What every arm of one run may use: the study, the split, the random stream's seed they all
    share, the MLflow run (None when tracking is off), and the LLM session, loaded on first use."""

    study: "Study"
    split: "Split"
    seed: int
    tracked: Any = None
    settings: Any = None          # the run's typed settings (settings.check_config)
    make_llm: Callable[["ArmContext"], Any] | None = None
    _llm: Any = field(default=None, repr=False)

    def llm(self):
        """The LLM session every LLM arm of the run shares (arms/llm.py)."""
        if self._llm is None:
            if self.make_llm is None:
                raise RuntimeError("this run has no LLM settings")
            self._llm = self.make_llm(self)
        return self._llm


class Arm(Checked):
    """Base class of the arms. Subclasses are dataclasses (their fields are the options, typed,
    ranges declared with `settings.option`), registered with `@ARMS.register(name)`; `name` is set
    from the config node's key."""

    uses_llm: ClassVar[bool] = False          # needs the run's in-process model (ArmContext.llm())
    simulated_by_llm: ClassVar[bool] = False  # an LLM answers (in-process or served): compared, traced
    name: str = "arm"

    def check(self, *, finetune: Any = None) -> None:
        """Checks that can fail before any run exists (beyond the option types); default none."""

    def check_run(self, study: "Study", split: "Split", settings: Any) -> None:
        """Checks that need the study, the split and the run's typed settings, made in `plan`
        before the run starts (a served arm's request budget and probe); default none."""

    def simulate(self, ctx: ArmContext) -> Twins:
        raise NotImplementedError


ARMS: Registry[type[Arm]] = Registry("arm", key="arms")


def twin_base(study: "Study", split: "Split") -> pd.DataFrame:
    """The twins' given columns (persona, conditions) copied from their humans, plus `twin_of`:
    what every arm starts from before its twins answer."""
    out = study.frame.loc[split.evaluation, study.spec.given_columns].reset_index(drop=True)
    for c in study.spec.condition_columns:  # the stored codes, not the canonical categorical
        out[c] = out[c].astype(object)
    out.insert(0, "twin_of", list(split.evaluation))
    return out


def build_arm(name: str, node: Any) -> Arm:
    """One arm from its config node (`_target_` and options), its options checked against the
    class's field types (OmegaConf's structured configs), then the class's own range checks."""
    from hydra.utils import get_class
    from omegaconf import DictConfig

    key = f"arms.{name}"
    if not isinstance(node, (DictConfig, dict)) or not node.get("_target_"):
        raise ConfigError(key, node, "expected an arm's config node with _target_ (see conf/arms/)")
    target = str(node["_target_"])
    try:
        cls = get_class(target)
    except Exception:
        raise ConfigError(f"{key}._target_", target, f"expected an arm class (known arms: {', '.join(ARMS)})") from None
    if not (isinstance(cls, type) and issubclass(cls, Arm)):
        raise ConfigError(f"{key}._target_", target, "expected a subclass of fidelity_exp.arms.Arm")
    arm = typed(cls, node, key, f"arm {name!r}")
    arm.name = name
    return arm


def build_arms(arms_cfg: Any) -> dict[str, Arm]:
    """Every arm of the `arms` config node, in config order; its name prefixes its metric keys."""
    names = [str(name) for name in (arms_cfg or {})]
    check_arm_names(names, "arms")
    return {str(name): build_arm(str(name), node) for name, node in (arms_cfg or {}).items()}


def check_arm_names(names: list[str], key: str) -> None:
    """Arm names as metric keys need them: letters, digits, '_', '-', '.', not a word keys are made of."""
    from fidelity_exp import metrics  # noqa: F401 - every key word registered
    from fidelity_exp.inference import regressions  # noqa: F401
    from fidelity_exp.metrics.registry import name_problems, prefix_words

    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(key, name, "expected an arm name of letters, digits, '_', '-' or '.' (it prefixes "
                              "the arm's metric keys)")
    for name, problem in name_problems([(n, n) for n in names], "arms", prefix_words()):
        raise ConfigError(key, name, problem)


# The built-in arms register themselves (imported last: they use ARMS above).
from fidelity_exp.arms import llm, pilot_resample, served, tabular  # noqa: E402,F401
