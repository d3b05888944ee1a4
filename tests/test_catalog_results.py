"""Experiments trained on the GPU whose weights do not ship (``results/descriptions/*.json`` with a
``not_shipped`` reason): rows of the experiments table beside the usable checkpoints.

``test_app.py`` points the app at an empty results folder; here the Experiments page is opened
on the repo's real ``results/descriptions/``, and the expected rows are read from its JSON files."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
sys.path.insert(0, str(Path(__file__).parent))
from helpers import make_tiny_checkpoint  # noqa: E402
from test_app import clean, one_thread, open_app  # noqa: E402,F401 (autouse fixtures)

from diffusion_core.checkpoint import FORMAT  # noqa: E402
from explorer_ui import catalog  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "results" / "descriptions"


def unshipped_in_repo() -> dict[str, dict]:
    """The repo's results with a ``not_shipped`` reason, by file stem, read without the app's code."""
    found = {}
    for path in sorted(RESULTS.glob("*.json")):
        desc = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(desc.get("not_shipped"), str):
            found[path.stem] = desc
    return found


def same_number(shown, expected) -> bool:
    return (expected is None and (shown is None or math.isnan(shown))) or shown == pytest.approx(expected)


def test_only_readable_unshipped_descriptions_become_rows(tmp_path, caplog):
    desc = json.loads(make_tiny_checkpoint(tmp_path / "ck", "tiny", metrics={"fid": 50.5, "kid": 0.05,
                                                                              "num_samples": 100}).read_text())
    results = tmp_path / "results" / "descriptions"
    results.mkdir(parents=True)
    (results / "big.json").write_text(json.dumps(dict(desc, not_shipped="too big for the budget")))
    (results / "here.json").write_text(json.dumps(dict(desc, shipped="checkpoints/here")))
    (results / "floors.json").write_text(json.dumps(dict(desc, not_shipped="FID floors, not an experiment")))
    (results / "corrupt.json").write_text("{ not json")
    (results / "foreign.json").write_text(json.dumps({"not_shipped": "no format"}))
    (results / "nested.json").write_text("[" * 100_000)

    rows = catalog.unshipped_results(folder=results)
    assert len(rows) == 1
    row = rows[0]
    assert (row["name"], row["weights"], row["FID"], row["FID samples"]) == ("big", "too big for the budget", 50.5, 100)
    checkpoint_row = catalog.table_row(catalog.scan(tmp_path / "ck")[0])
    assert list(row) == list(checkpoint_row) and checkpoint_row["weights"] == catalog.SHIPPED
    assert {k: v for k, v in row.items() if k not in ("name", "weights")} == \
        {k: v for k, v in checkpoint_row.items() if k not in ("name", "weights")}
    assert "corrupt.json is not valid JSON" in caplog.text and "foreign.json is not a diffusion" in caplog.text
    assert "nested.json is not valid JSON" in caplog.text and "floors" not in caplog.text  # skipped by name

    make_tiny_checkpoint(tmp_path / "mine", "big")  # the user has those weights: no second row
    assert catalog.unshipped_results(catalog.scan(tmp_path / "mine"), results) == []
    assert catalog.result_sample("big", results) is None
    (tmp_path / "results" / "samples").mkdir()
    (tmp_path / "results" / "samples" / "big.png").write_bytes(b"png")
    assert catalog.result_sample("big", results) == tmp_path / "results" / "samples" / "big.png"


def test_malformed_facts_are_empty_cells(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    odd = {"format": FORMAT, "not_shipped": "superseded", "experiment": [1], "training": 3,
           "metrics": {"evaluations": 5}, "parameters": "many"}
    (results / "odd.json").write_text(json.dumps(odd))
    (row,) = catalog.unshipped_results(folder=results)
    assert row["name"] == "odd" and row["weights"] == "superseded"
    assert all(v is None for k, v in row.items() if k not in ("name", "weights"))


def test_experiments_page_lists_the_repo_results_without_weights(monkeypatch, tmp_path):
    expected = unshipped_in_repo()
    assert expected, f"no experiment with a not_shipped reason in {RESULTS}"
    mine = min(expected)  # the user has this one's weights: listed once, as a checkpoint
    ck = tmp_path / "checkpoints"
    make_tiny_checkpoint(ck, "tiny_a")
    make_tiny_checkpoint(ck, mine)

    at = open_app(monkeypatch, ck)
    clean(at)
    table = at.dataframe[0].value
    rest = sorted(set(expected) - {mine})
    assert list(table["name"]) == sorted(["tiny_a", mine]) + rest  # the checkpoints first, in folder order
    assert list(table["weights"]) == [catalog.SHIPPED, catalog.SHIPPED] + [expected[s]["not_shipped"] for s in rest]
    for stem in rest:
        shown = table.loc[table["name"] == stem].iloc[0]
        assert same_number(shown["FID"], expected[stem]["metrics"].get("fid")), stem
        assert shown["parameters"] == expected[stem]["parameters"]
        assert shown["about"] == expected[stem]["experiment"]["description"]

    assert "Trained, weights not shipped" in [h.value for h in at.subheader]
    captions = [c for image in at.image for c in image.captions]
    with_grid = [s for s in rest if (RESULTS.parent / "samples" / f"{s}.png").is_file()]
    assert [c for c in captions if c != f"{mine}.png"] == [expected[s]["not_shipped"] for s in with_grid]


def test_pickers_open_on_the_lowest_fid(tmp_path):
    """best_index: the lowest recorded FID wins (protocol metrics or the latest evaluation);
    entries without a finite FID never do; with none known, the first entry."""
    make_tiny_checkpoint(tmp_path, "a_plain")
    make_tiny_checkpoint(tmp_path, "b_good", metrics={"fid": 12.5, "num_samples": 2911})
    make_tiny_checkpoint(tmp_path, "c_worse", metrics={"evaluations": [{"fid": 40.0, "num_samples": 100}]})
    make_tiny_checkpoint(tmp_path, "d_nan", metrics={"fid": float("nan")})
    entries = catalog.scan(tmp_path)
    assert [e.label for e in entries][:3] == ["a_plain", "b_good", "c_worse"]
    assert entries[catalog.best_index(entries)].label == "b_good"
    assert catalog.best_index([e for e in entries if e.label != "b_good"]) == 1  # c_worse
    assert catalog.best_index([entries[0]]) == 0 and catalog.best_index([]) == 0
