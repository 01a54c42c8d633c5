"""LoRA adapters in MLflow: logged as the run's `adapter` artifact, registered as a model
version, and loaded back from `models:/<name>/<version>` (or `runs:/<id>/adapter`).

Adapters are saved and loaded as safetensors only: a directory with a pickled
`adapter_model.bin` instead is refused, since unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from fidelity_exp.errors import UserError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def registered_name(study: str, model: str) -> str:
    """The registry name of a study's adapters on one base model, e.g. `anes96-smollm2_135m-lora`."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{study}-{model}-lora")


def log_and_register(tracked: Any, peft_model: Any, name: str, about: dict[str, Any] | None = None) -> None:
    """Save the adapter (safetensors) with a model card (README.md: what it was trained on, from
    `about`) and log it as `adapter` now; register it as a new version of `name` when the run
    finishes (a run that ends FAILED registers nothing), described with the run's headline metrics."""
    about = dict(about or {})
    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        (Path(tmp) / "README.md").write_text(model_card(name, about), encoding="utf-8")   # PEFT's blank template
        tracked.log_dir(tmp, "adapter")
    tracked.when_finished(lambda: register(tracked, name, about))


def model_card(name: str, about: dict[str, Any]) -> str:
    """The adapter's README.md: what it is, what it was trained on, how to use it."""
    lines = [f"# {name}", "", "A LoRA adapter fine-tuned by fidelity_exp on a pilot of human survey respondents, so "
             "that the base model answers as twins of other respondents.", ""]
    lines += [f"- **{k}**: {v}" for k, v in about.items()]
    lines += ["", "## Use", "", "```bash", f"python -m fidelity_exp +experiment=quickstart finetune=registered "
              f"finetune.uri=models:/{name}/<version>", "```", "",
              "Served with vLLM: `vllm serve <base model> --enable-lora --lora-modules finetuned=<this folder>`, "
              "then `arms=[served] arms.served.model=finetuned` (README, served models).", "",
              "Its fidelity (METRICS.md) is in the registered version's description and in the run that made it."]
    return "\n".join(lines) + "\n"


def version_description(about: dict[str, Any], run: Any) -> str:
    """The registered version's description: the study, pilot and base model, the run, and the run's
    headline metrics (the fine-tuned arm's fidelity_score beside the base model's)."""
    parts = [f"{k}: {v}" for k, v in about.items()]
    parts.append(f"run {run.info.run_id} (experiment {run.info.experiment_id})")
    from fidelity_exp.metrics import registry
    from fidelity_exp.metrics.score import SCORE

    headline = (registry.arm_key("finetuned", SCORE), registry.arm_key("base", SCORE),
                registry.compare_key("finetuned", "base", None))
    metrics = run.data.metrics
    parts += [f"{k} = {metrics[k]:.3f}" for k in headline if k in metrics]
    return "; ".join(parts)


def register(tracked: Any, name: str, about: dict[str, Any] | None = None) -> str:
    """Register the run's logged `adapter` as a new version of `name`, described (study, pilot,
    run, headline metrics); return the version."""
    from mlflow.exceptions import MlflowException

    client = tracked.client
    try:
        client.create_registered_model(name, description="LoRA adapters fine-tuned by fidelity_exp on human pilots")
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code if hasattr(e, "error_code") else e):
            raise
    run = client.get_run(tracked.run_id)
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/adapter", run_id=tracked.run_id,
                                          description=version_description(dict(about or {}), run))
    tracked.set_tags({"adapter.registered_model": name, "adapter.version": version.version,
                      "adapter.uri": f"models:/{name}/{version.version}"})
    return str(version.version)


def local_folder(uri: str) -> Path | None:
    """The folder a `finetune.uri` names when it is a path (relative to the start directory), not
    an MLflow URI (`models:/`, `runs:/`, `scheme://`)."""
    from fidelity_exp.paths import resolve

    return None if "://" in uri or uri.startswith(("models:/", "runs:/")) else resolve(uri)


def download(uri: str, tracking_uri: str, dest: str | Path) -> Path:
    """Fetch an adapter directory from MLflow (`models:/...`, `runs:/...`) or take a local folder."""
    import mlflow

    folder = local_folder(uri)
    if folder is not None and folder.is_dir():
        return folder
    try:
        source = _registry_source(uri, tracking_uri) if uri.startswith("models:/") else uri
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest), tracking_uri=tracking_uri)
    except Exception as e:  # MLflow raises several types for a bad URI; the user needs the URI and the reason
        raise UserError(f"finetune.uri={uri!r}: cannot be fetched from {tracking_uri} ({e})") from None
    return Path(local)


def _registry_source(uri: str, tracking_uri: str) -> str:
    """`models:/<name>/<version>` or `models:/<name>@<alias>` -> the artifact URI it was registered from,
    looked up in this run's store (MLflow's own lookup would use the global registry URI)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return client.get_model_version_by_alias(name, alias).source
    name, _, version = rest.rpartition("/")
    return client.get_model_version(name, version).source


def check_folder(folder: Path) -> None:
    """An adapter folder as PEFT saves it: a JSON config and safetensors weights (never a pickle);
    a missing, truncated or corrupted file is named with what was expected."""
    missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
    if missing:
        pickled = (" (it holds a pickled adapter_model.bin, which is never loaded)"
                   if (folder / "adapter_model.bin").exists() else "")
        raise UserError(f"adapter {str(folder)!r} lacks {', '.join(missing)}{pickled}; expected the folder PEFT "
                        f"saves: {', '.join(ADAPTER_FILES)}")
    config = folder / ADAPTER_FILES[0]
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{config}: not readable as JSON ({e}); expected PEFT's adapter config") from None
    if not isinstance(parsed, dict) or "peft_type" not in parsed:
        raise UserError(f"{config}: has no 'peft_type'; expected PEFT's adapter config")
    weights = folder / ADAPTER_FILES[1]
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            list(f.keys())
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise UserError(f"{weights}: not a valid safetensors file ({e}); expected the adapter weights "
                        "PEFT saves") from None


def load_adapter(loaded_model: Any, folder: Path) -> Any:
    """A PeftModel: the base model with the adapter from `folder` (safetensors only)."""
    from peft import PeftModel

    check_folder(folder)
    try:
        model = PeftModel.from_pretrained(loaded_model, str(folder), is_trainable=False)
    except Exception as e:  # a mismatched adapter (another base model, other shapes): say which and why
        raise UserError(f"adapter {str(folder)!r} cannot be loaded onto this model: {e}") from None
    return model.eval()


def fetch_adapter(loaded_model: Any, uri: str, tracking_uri: str) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        return load_adapter(loaded_model, download(uri, tracking_uri, tmp))
