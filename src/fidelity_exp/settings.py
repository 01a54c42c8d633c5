"""Typed config groups: a dataclass whose fields are a group's keys, its values checked by
OmegaConf's structured configs (types, unknown keys) and then by the dataclass's own range
checks, before any run exists; every mistake is one `ConfigError` naming `<group>.<key>`."""

from __future__ import annotations

from typing import Any, Mapping, TypeVar

from fidelity_exp.errors import ConfigError

T = TypeVar("T")


def typed(cls: type[T], node: Any, key: str, what: str) -> T:
    """An instance of the dataclass `cls` from a config node or mapping (`_target_` ignored).
    `key` is where the node lives (e.g. `simulate`, `arms.tabular`), `what` names it in messages."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, Mapping):
        raise ConfigError(key, node, f"expected the {what}'s config (a mapping)")
    options = {k: v for k, v in node.items() if k != "_target_"}
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), options))
    except OmegaConfBaseException as e:
        field = getattr(e, "full_key", None)
        where = f"{key}.{field}" if field else key
        value = options.get(str(field)) if field else options
        raise ConfigError(where, value, f"not a valid option of {what}: {str(e).splitlines()[0]}") from None
    except ConfigError as e:   # the class's own range check names the field
        raise ConfigError(f"{key}.{e.key}", e.value, e.expected) from None
