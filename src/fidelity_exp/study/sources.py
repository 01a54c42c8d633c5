"""Data sources: where a spec's human responses come from (`source.kind`).

Each reader takes the spec's `source` mapping and returns the raw DataFrame, or raises
`SourceError` with a message that names the file and says what went wrong.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import pandas as pd

from fidelity_exp.errors import UserError
from fidelity_exp.paths import resolve


class SourceError(UserError):
    pass


def read_source(source: Mapping[str, Any], text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """The raw frame; `text_columns` (ids) are read as text where the format stores text (CSV),
    so `007` stays `007`."""
    kind = source.get("kind")
    if kind not in READERS:
        raise SourceError(f"source.kind: expected one of {', '.join(READERS)}, found {kind!r}")
    frame = READERS[kind]({**source, "_text": tuple(text_columns)})
    if frame.shape[0] == 0:
        raise SourceError(f"source: {describe(source)} holds no rows")
    return frame


def describe(source: Mapping[str, Any]) -> str:
    if "path" in source:
        return f"{source['kind']} file {str(resolve(source['path']))!r}"
    return f"{source.get('kind')} data set {source.get('name')!r}"


def _read_statsmodels(source: Mapping[str, Any]) -> pd.DataFrame:
    import statsmodels.datasets as smd

    name = source["name"]
    module = getattr(smd, name, None)
    if module is None or not hasattr(module, "load_pandas"):
        known = sorted(n for n in dir(smd) if hasattr(getattr(smd, n), "load_pandas"))
        raise SourceError(f"source.name: statsmodels has no data set {name!r} (it has: {', '.join(known)})")
    return module.load_pandas().data.reset_index(drop=True)


def _existing_file(source: Mapping[str, Any]):
    path = resolve(source["path"])
    if not path.is_file():
        raise SourceError(f"source.path: {str(path)!r} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise SourceError(f"source.path: {str(path)!r} is empty")
    return path


def _read_csv(source: Mapping[str, Any]) -> pd.DataFrame:
    """A spec's CSV source reads with its `source.encoding` (default UTF-8; a UTF-8 byte-order
    mark is dropped) and `source.sep`. A file named without a spec (`detect`: a synthetic or human
    file given by path) has no such settings: its encoding comes from its byte-order mark and its
    delimiter from its header."""
    path = _existing_file(source)
    detect = bool(source.get("detect"))
    encoding = _bom_encoding(path) if detect else source.get("encoding", "utf-8")
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        encoding = "utf-8-sig"
    try:
        sep = _sniffed_sep(path, encoding) if detect else source.get("sep", ",")
        header = _check_shape(path, sep, encoding)
        text = {c: str for c in source.get("_text", ()) if c in header}
        return pd.read_csv(path, sep=sep, encoding=encoding, dtype=text or None, index_col=False)
    except UnicodeDecodeError as e:
        fix = ("save it as UTF-8 (or UTF-16 with its byte-order mark)" if detect
               else "set source.encoding=utf-16 (the file starts with a UTF-16 byte-order mark)"
               if _bom_encoding(path) == "utf-16" else "set source.encoding (for example latin-1)")
        raise SourceError(f"source.path: {str(path)!r} is not valid {encoding.removesuffix('-sig')} text "
                          f"({e.reason} at byte {e.start}); {fix}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise SourceError(f"source.path: {str(path)!r} cannot be read as CSV: {e}") from None


def _bom_encoding(path) -> str:
    with open(path, "rb") as f:
        start = f.read(4)
    if start.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    return "utf-8-sig"


def _sniffed_sep(path, encoding: str) -> str:
    """The header's delimiter: a comma, else the one of ; tab | the header holds."""
    with open(path, newline="", encoding=encoding) as f:
        header = f.readline()
    if "," in header:
        return ","
    found = [d for d in (";", "\t", "|") if d in header]
    return found[0] if found else ","


def _check_shape(path, sep: str, encoding: str) -> list[str]:
    """The header's names; a `SourceError` naming the line when a row has more or fewer fields
    than the header (pandas would shift every column by one for a trailing delimiter) or when two
    columns share a name (pandas would rename one silently)."""
    import csv

    with open(path, newline="", encoding=encoding) as f:
        rows = csv.reader(f, delimiter=sep)
        header = next(rows, [])
        dup = sorted({c for c in header if header.count(c) > 1})
        if dup:
            raise SourceError(f"source.path: {str(path)!r} has duplicate column names {dup!r} in its header; "
                              "every column needs its own name")
        for row in rows:
            if row and len(row) != len(header) and any(field.strip() for field in row):
                hint = (" (each data row ends with the delimiter but the header does not?)"
                        if len(row) == len(header) + 1 and not row[-1].strip() else "")
                raise SourceError(f"source.path: {str(path)!r} line {rows.line_num} has {len(row)} fields but the "
                                  f"header has {len(header)}{hint}")
    return header


def _read_parquet(source: Mapping[str, Any]) -> pd.DataFrame:
    path = _existing_file(source)
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises many types for a bad file; all mean the same to a user
        raise SourceError(f"source.path: {str(path)!r} cannot be read as parquet: {e}") from None


def _read_synthetic(source: Mapping[str, Any]) -> pd.DataFrame:
    from fidelity_exp.study import synthetic

    name = source["name"]
    if name not in synthetic.GENERATORS:
        raise SourceError(f"source.name: no synthetic study {name!r} (known: {', '.join(synthetic.GENERATORS)})")
    kwargs = {k: source[k] for k in ("n", "seed") if source.get(k) is not None}
    return synthetic.GENERATORS[name](**kwargs)


READERS: dict[str, Callable[[Mapping[str, Any]], pd.DataFrame]] = {
    "statsmodels": _read_statsmodels,
    "csv": _read_csv,
    "parquet": _read_parquet,
    "synthetic": _read_synthetic,
}
