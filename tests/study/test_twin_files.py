"""Twins files as users save them, through the command line's entry point (evaluate-only,
tests/command.py): encodings and delimiters a spreadsheet writes, ids and codes with leading
zeros, twins paired with the wrong humans, and the human file passed as the synthetic one."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..command import main
from ..conftest import tiny_frame
from ..reliability.store import query
from ..reliability.test_bad_input import _study

FAST = ("metrics.bootstrap=0", "metrics.permutations=0", "metrics.reference_splits=0")


def _twins() -> pd.DataFrame:
    """Twins of tiny_frame()'s humans with their own answers (not the humans')."""
    twins = tiny_frame().rename(columns={"rid": "twin_of"})
    twins["trust"] = [1 + (i * 5) % 3 for i in range(len(twins))]
    twins["buy"] = ["yes" if i % 4 == 0 else "no" for i in range(len(twins))]
    return twins


def _evaluate(folder: Path, args: list[str], *more: str, tracking: bool = False):
    done = main(*args, "+experiment=evaluate", "evaluate.synthetic=twins.csv", "hydra.run.dir=out", *FAST,
                *([] if tracking else ["tracking.enabled=false"]), *more, cwd=folder)
    metrics = json.loads((folder / "out" / "metrics.json").read_text()) if done.returncode == 0 else None
    return done, metrics


def test_a_utf16_semicolon_twins_file_scores_as_the_plain_csv(tmp_path):
    plain, excel = tmp_path / "plain", tmp_path / "excel"
    results = []
    for folder, write in ((plain, lambda t, p: t.to_csv(p, index=False)),
                          (excel, lambda t, p: p.write_bytes(t.to_csv(index=False, sep=";").encode("utf-16")))):
        folder.mkdir()
        args = _study(folder)[:2]
        write(_twins(), folder / "twins.csv")
        done, metrics = _evaluate(folder, args)
        assert done.returncode == 0, done.stderr[-2000:]
        results.append(metrics)
    assert results[0] == results[1]


def test_a_twins_file_in_another_encoding_names_what_to_do(tmp_path):
    args = _study(tmp_path)[:2]
    text = _twins().assign(note="caf\u00e9").to_csv(index=False)
    (tmp_path / "twins.csv").write_bytes(text.encode("latin-1"))
    done, _ = _evaluate(tmp_path, args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "twins.csv" in done.stderr and "not valid utf-8" in done.stderr and "save it as UTF-8" in done.stderr
    assert "source.encoding" not in done.stderr     # a spec's setting: it does not apply to a twins file


def test_a_byte_order_mark_keeps_leading_zero_ids(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark; the id column behind it keeps '007', so
    the twins of a file without the mark find their humans."""
    humans = tiny_frame()
    humans["rid"] = [f"{i:03d}" for i in range(len(humans))]
    args = _study(tmp_path, csv_bytes=humans.to_csv(index=False).encode("utf-8-sig"))[:2]
    twins = _twins()
    twins["twin_of"] = list(humans["rid"])
    twins.to_csv(tmp_path / "twins.csv", index=False)        # written by Python: no mark, '007' as text
    done, metrics = _evaluate(tmp_path, args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert metrics["synthetic/divergence/js/mean"] > 0


def test_zero_padded_text_codes_read_as_text(tmp_path):
    """Codes '01'..'12' (a month) in the spec and the files: the CSV readers keep the zeros."""
    humans = tiny_frame()
    humans["month"] = [f"{1 + i % 12:02d}" for i in range(len(humans))]

    def month(spec):
        spec["questions"].append({"column": "month", "text": "Month?", "type": "nominal", "role": "other",
                                  "options": {f"{m:02d}": f"Month {m}" for m in range(1, 13)}})
    args = _study(tmp_path, frame=humans, month=month)[:2]
    twins = _twins().assign(month=[f"{1 + (i * 7) % 12:02d}" for i in range(len(humans))])
    twins.to_csv(tmp_path / "twins.csv", index=False)
    done, metrics = _evaluate(tmp_path, args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert metrics["synthetic/divergence/js/month"] > 0


def test_zero_padded_codes_over_numbers_get_advice_that_works(tmp_path):
    """Parquet keeps the numbers a program wrote: the advice is to write the codes as numbers,
    and following it runs."""
    humans = tiny_frame()
    humans["month"] = [1 + i % 12 for i in range(len(humans))]
    humans.to_parquet(tmp_path / "survey.parquet")

    def month(codes):
        def edit(spec):
            spec["source"] = {"kind": "parquet", "path": "survey.parquet"}
            spec["questions"].append({"column": "month", "text": "Month?", "type": "nominal", "role": "other",
                                      "options": {c: f"Month {m}" for m, c in enumerate(codes, 1)}})
        return edit
    args = _study(tmp_path, frame=humans, month=month([f"{m:02d}" for m in range(1, 13)]))[:2]
    done = main(*args, *FAST, "tracking.enabled=false", "arms=[tabular]", "hydra.run.dir=out", cwd=tmp_path)
    assert done.returncode == 2 and "without leading zeros (for example 1, not '01')" in done.stderr
    args = _study(tmp_path, frame=humans, month=month(list(range(1, 13))))[:2]
    done = main(*args, *FAST, "tracking.enabled=false", "arms=[tabular]", "pilot.n=20", "hydra.run.dir=out",
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_few_twins_with_another_persona_are_scored_with_a_warning(tmp_path):
    args = _study(tmp_path)[:2]
    twins = _twins()
    twins.loc[3, "age"] = 99           # 1 of 40: below the 5% that is refused
    twins.to_csv(tmp_path / "twins.csv", index=False)
    done, _ = _evaluate(tmp_path, args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 of 40 twins have given columns that differ" in done.stderr + done.stdout
    assert "row 3" in done.stderr + done.stdout


def test_the_humans_passed_as_twins_are_scored_with_a_loud_warning(tmp_path):
    args = _study(tmp_path)[:2]
    tiny_frame().to_csv(tmp_path / "twins.csv", index=False)     # the human file itself: ids, no twin_of
    done, metrics = _evaluate(tmp_path, args, tracking=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the evaluation humans' own answers" in done.stderr + done.stdout
    assert metrics["synthetic/divergence/js/mean"] == 0.0
    tags = query(tmp_path / "mlruns" / "mlflow.db", "select value from tags where key = 'synthetic/warning'")
    assert len(tags) == 1 and "human file passed as the synthetic one" in tags[0][0]
    _twins().to_csv(tmp_path / "twins.csv", index=False)          # real twins: no warning
    done, _ = _evaluate(tmp_path, args)
    assert done.returncode == 0 and "own answers" not in done.stderr + done.stdout
