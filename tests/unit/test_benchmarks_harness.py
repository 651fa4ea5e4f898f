"""The benchmark harness on a tiny stand-in benchmark: JSON with the machine block, Markdown table, PNG.

No timing is asserted: benchmarks measure, tests check that what they measure is written faithfully.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks import run as bench_run
from benchmarks.harness import REPO_ROOT, Context, Goal, Section, line_plot, percentile


def run(ctx: Context) -> Section:
    """A stand-in benchmark (registered under the name ``tiny`` by the fixture)."""
    section = Section(key="tiny", title="Tiny stand-in")
    table = section.table("Squares", ["n", "n squared"])
    for n in (1, 2, 3):
        table.add(n, float(n * n))
    section.goals.append(Goal("squares are squares", True, "3 of 3"))
    path, link = ctx.figure_path("tiny.png")
    line_plot(path, {"square": ([1, 2, 3], [1, 4, 9], None)}, title="t", xlabel="n", ylabel="n^2")
    section.figures.append(link)
    section.data = {"quick": ctx.quick}
    return section


def failing(ctx: Context) -> Section:
    raise RuntimeError("stand-in failure")


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_run, "BENCHMARKS", {"tiny": __name__})


@pytest.fixture
def written(registered: None, tmp_path: Path) -> Path:
    _, ok = bench_run.run_benchmarks(["tiny"], quick=True, out_dir=tmp_path)
    assert ok
    return tmp_path


def test_json_has_the_machine_versions_and_commit_block(written: Path) -> None:
    document = json.loads((written / "benchmarks.json").read_text())
    machine = document["machine"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert machine["git_commit"] == head.stdout.strip()
    assert isinstance(machine["git_dirty"], bool)
    assert machine["packages"]["torch"].startswith("2.")
    assert machine["logical_cpus"] >= 1
    assert machine["cpu_model"]
    assert document["mode"] == "quick"


def test_json_keeps_every_table_row_and_the_raw_data(written: Path) -> None:
    section = json.loads((written / "benchmarks.json").read_text())["sections"]["tiny"]
    assert section["tables"][0]["rows"] == [[1, 1.0], [2, 4.0], [3, 9.0]]
    assert section["data"] == {"quick": True}
    assert section["error"] is None


def test_markdown_has_the_table_goal_and_provenance(written: Path) -> None:
    text = (written / "benchmarks.md").read_text()
    assert "| n | n squared |" in text
    assert "| 3 | 9.000 |" in text
    assert "| Tiny stand-in | squares are squares | 3 of 3 | yes |" in text
    assert "- commit: `" in text
    assert "![tiny](benchmarks/tiny.png)" in text


def test_plot_is_written_as_png(written: Path) -> None:
    assert (written / "benchmarks" / "tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_benchmark_is_reported_and_the_run_is_not_ok(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(bench_run, "BENCHMARKS", {"tiny": __name__, "broken": f"{__name__}:failing"})
    monkeypatch.setattr(bench_run.importlib, "import_module", _import_with_attr)
    sections, ok = bench_run.run_benchmarks(["broken", "tiny"], quick=True, out_dir=tmp_path)
    assert not ok
    assert [s.error for s in sections] == ["RuntimeError: stand-in failure", None]
    assert "FAILED: RuntimeError: stand-in failure" in (tmp_path / "benchmarks.md").read_text()


def _import_with_attr(name: str) -> object:
    import importlib
    import sys
    from types import SimpleNamespace

    module_name, _, attr = name.partition(":")
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    return SimpleNamespace(run=getattr(module, attr)) if attr else module


def test_unknown_benchmark_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown benchmark"):
        bench_run.run_benchmarks(["nope"], quick=True, out_dir=tmp_path)


def test_percentile_is_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert percentile(samples, 50) == pytest.approx(51.0)
    assert percentile(samples, 99) == pytest.approx(99.0)
    assert percentile([3.0], 99) == pytest.approx(3.0)


def test_every_registered_benchmark_has_a_run_function() -> None:
    import importlib

    assert {"campaigns_ope", "campaigns_dp_policy"} <= set(bench_run.BENCHMARKS)
    for name, module in bench_run.BENCHMARKS.items():
        assert callable(getattr(importlib.import_module(module), "run", None)), name


def test_campaign_estimator_benchmark_reports_error_by_log_size(tmp_path: Path) -> None:
    """The quick run: the simulator's true values, rmse/bias/coverage per size and estimator; its
    coverage goal is judged on the full run only."""
    sections, ok = bench_run.run_benchmarks(["campaigns_ope"], quick=True, out_dir=tmp_path)
    assert ok
    (section,) = sections
    truth = {row[0]: row[1] for row in section.tables[0].rows}
    assert truth["uniform"] == pytest.approx(2.778, abs=1e-3)
    assert truth["oracle"] == pytest.approx(6.074, abs=1e-3)
    errors = section.tables[1].rows
    assert sorted({(row[0], row[1]) for row in errors}) == sorted(
        (size, est) for size in (1_000, 5_000) for est in ("ips", "snips", "dr")
    )
    rmse = {(row[0], row[1]): row[2] for row in errors}
    assert all(rmse[5_000, est] < rmse[1_000, est] for est in ("ips", "snips", "dr"))
    assert section.goals[0].met is None
