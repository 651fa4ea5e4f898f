"""``shoprec demo`` / ``make run``: the whole chain through real Airflow on the embedded profile.

Lands a data set, then runs each DAG with ``dag.test()`` in the order the Assets link them:
``ingest_events`` once per day (as a daily backfill would), then ``build_features``,
``train_recommender``, ``publish_recommendations`` and ``privacy_audit``, and prints what happened.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tasks.config import Settings
from tasks.orchestration import DagRunResult, configure_airflow, interval_end_for_day, load_dags, run_dag


@dataclass(frozen=True)
class DemoOptions:
    """What the demo lands and ingests."""

    source: str = "synthetic"
    paths: tuple[Path, ...] = ()
    users: int = 1500
    items: int = 400
    days: int = 40
    seed: int = 42
    start: dt.date | None = None
    end: dt.date | None = None


@dataclass
class DemoSummary:
    """The outcome of a demo run: every DAG run and the figures printed at the end."""

    runs: list[DagRunResult] = field(default_factory=list)
    days: list[dt.date] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(run.succeeded for run in self.runs)


def land(settings: Settings, options: DemoOptions) -> list[dt.date]:
    """Write the chosen source into the landing zone; return the days to ingest."""
    if options.source == "synthetic":
        from tasks.sources.synthetic import SyntheticConfig, generate

        manifest = generate(
            SyntheticConfig(
                n_users=options.users, n_items=options.items, days=options.days, seed=options.seed
            ),
            settings.landing_dir,
        )
    elif options.source == "online-retail":
        from tasks.sources.online_retail import load_online_retail

        if len(options.paths) != 1:
            raise ValueError("--source online-retail needs exactly one --path")
        manifest, _report = load_online_retail(
            options.paths[0], settings.landing_dir, start=options.start, end=options.end
        )
    elif options.source == "files":
        from tasks.sources.loader import load_contract_files

        if not options.paths:
            raise ValueError("--source files needs at least one --path")
        manifest = load_contract_files(list(options.paths), settings.landing_dir)
    else:
        raise ValueError(f"unknown source {options.source!r}")
    days = sorted(manifest.days)
    return [
        d
        for d in days
        if (options.start is None or d >= options.start) and (options.end is None or d <= options.end)
    ]


@contextlib.contextmanager
def airflow_output_to(log_path: Path) -> Generator[None]:
    """Send everything written to file descriptors 1 and 2 (Airflow's console logs) to ``log_path``.

    ``dag.test()`` logs every task line to the console; the demo keeps them in a file instead and
    prints its own progress on a duplicate of the original stdout.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    saved = os.dup(1), os.dup(2)
    with log_path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_demo(settings: Settings, options: DemoOptions, console: Console | None = None) -> DemoSummary:
    """Land data, run every DAG that exists through ``dag.test()``, and print the summary.

    Airflow's own console output goes to ``SHOPREC_HOME/demo.log``; task logs stay in Airflow's
    log folder as usual.
    """
    if console is None:
        console = Console(file=os.fdopen(os.dup(1), "w", buffering=1))
    log_path = settings.home / "demo.log"
    started = time.perf_counter()
    summary = DemoSummary()
    settings.ensure_dirs()
    console.rule("[bold]ShopRec demo[/] (embedded profile)")
    console.print(f"state folder: {settings.home}; Airflow console output: {log_path}")
    with console.status("preparing Airflow's metadata database"):
        configure_airflow(settings)
    with console.status(f"landing the {options.source} data set"):
        summary.days = land(settings, options)
    if not summary.days:
        raise ValueError("the source produced no days to ingest (check --start/--end)")
    console.print(f"landed {len(summary.days)} days: {summary.days[0]} .. {summary.days[-1]}")
    with airflow_output_to(log_path):
        dags = load_dags(settings)

    if "ingest_events" in dags:
        with _progress(console) as progress:
            job = progress.add_task("ingest_events (one run per day)", total=len(summary.days))
            for day in summary.days:
                with airflow_output_to(log_path):
                    result = run_dag(dags["ingest_events"], logical_date=interval_end_for_day(day))
                summary.runs.append(result)
                progress.advance(job)
                if not result.succeeded:
                    console.print(f"[red]ingest_events failed for {day}[/]: {result.task_states}")
                    break
    days_conf = {"days": [d.isoformat() for d in summary.days]}
    for dag_id, conf in (
        ("build_features", days_conf),
        ("train_recommender", days_conf),
        ("publish_recommendations", days_conf),
        ("privacy_audit", {}),
    ):
        if not summary.ok:
            break
        if dag_id not in dags:
            console.print(f"[yellow]{dag_id}: not built yet, skipped[/]")
            continue
        with console.status(f"running {dag_id}"), airflow_output_to(log_path):
            result = run_dag(dags[dag_id], run_conf=conf)
        summary.runs.append(result)
        mark = "[green]ok[/]" if result.succeeded else "[red]FAILED[/]"
        console.print(f"{dag_id}: {mark} in {result.seconds:.1f}s")
    summary.seconds = time.perf_counter() - started
    print_summary(settings, summary, console)
    return summary


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def print_summary(settings: Settings, summary: DemoSummary, console: Console) -> None:
    """The closing report: each DAG's runs, then what each stage produced, then where to look."""
    table = Table(title="DAG runs")
    for column in ("DAG", "runs", "succeeded", "seconds"):
        table.add_column(column)
    by_dag: dict[str, list[DagRunResult]] = {}
    for run in summary.runs:
        by_dag.setdefault(run.dag_id, []).append(run)
    for dag_id, runs in by_dag.items():
        table.add_row(
            dag_id,
            str(len(runs)),
            str(sum(r.succeeded for r in runs)),
            f"{sum(r.seconds for r in runs):.1f}",
        )
    console.print(table)
    for line in stage_report(settings):
        console.print(line)
    console.print(f"total wall time: {summary.seconds:.0f}s")
    console.print(
        "where to look next: "
        f"lake {settings.events_dir}, quarantine {settings.quarantine_dir}, "
        f"reports {settings.reports_dir}, Airflow logs {settings.airflow_home / 'logs'}"
    )
    state = "[green]succeeded[/]" if summary.ok else "[red]failed[/]"
    console.print(f"demo {state}")


def stage_report(settings: Settings) -> list[str]:
    """One or more lines per stage, read back from the stores the stages wrote."""
    lines: list[str] = []
    from tasks.contracts import list_partitions

    lake_days = list_partitions(settings.events_dir)
    quarantine_days = list_partitions(settings.quarantine_dir)
    lines.append(
        f"ingest: {len(lake_days)} day partitions in the lake, "
        f"{len(quarantine_days)} days with quarantined rows"
    )
    return lines
