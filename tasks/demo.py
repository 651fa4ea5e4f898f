"""``shoprec demo`` / ``make run``: the whole chain through real Airflow on the embedded profile.

Lands a data set, then runs each DAG with ``dag.test()`` in the order the Assets link them:
``ingest_events`` once for all landed days (a backfill run: the conf names the days, which are validated
in order, each as its own daily run would judge it), then ``build_features``,
``train_recommender``, ``publish_recommendations`` and ``privacy_audit``; then, on the synthetic shop,
one campaign round (a uniformly logged campaign simulated on the shop's customers, then
``train_offer_policy``), and prints what happened.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tasks.campaigns.demo import land_campaign, round_lines
from tasks.config import Settings
from tasks.consumers import NothingPublished, get_recommendations
from tasks.contracts import OptionError, landing_files, list_partitions
from tasks.ingest import rejected_days
from tasks.orchestration import DagRunResult, configure_airflow, load_dags, run_dag
from tasks.permissions import PRIVATE_FILE_MODE
from tasks.privacy import Ledger
from tasks.sources.loader import load_contract_files
from tasks.sources.online_retail import load_online_retail
from tasks.sources.synthetic import SyntheticConfig, generate


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
    campaign_decisions: int = 20_000


@dataclass
class DemoSummary:
    """The outcome of a demo run: every DAG run and the figures printed at the end."""

    runs: list[DagRunResult] = field(default_factory=list)
    days: list[dt.date] = field(default_factory=list)
    rejected_days: list[dt.date] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def accepted_days(self) -> list[dt.date]:
        return [d for d in self.days if d not in self.rejected_days]

    @property
    def ok(self) -> bool:
        """Every run succeeded, except ingest runs whose day was rejected (quarantined and listed)."""
        return bool(self.runs) and all(run.succeeded or is_rejected_day(run) for run in self.runs)


def is_rejected_day(run: DagRunResult) -> bool:
    """An ``ingest_events`` run that published the events that passed and failed only to report a
    rejected day (see dags/ingest_events.py): the chain goes on without that day."""
    return (
        run.dag_id == "ingest_events"
        and run.task_states.get("pseudonymize_and_validate") == "success"
        and run.task_states.get("report_rejected_days") == "failed"
    )


def land(settings: Settings, options: DemoOptions) -> list[dt.date]:
    """Write the chosen source into the landing zone; return the days to ingest."""
    if options.source == "synthetic":
        manifest = generate(
            SyntheticConfig(
                n_users=options.users, n_items=options.items, days=options.days, seed=options.seed
            ),
            settings.landing_dir,
        )
    elif options.source == "online-retail":
        if len(options.paths) != 1:
            raise OptionError("--source online-retail needs exactly one --path")
        manifest, _report = load_online_retail(
            options.paths[0],
            settings.landing_dir,
            start=options.start,
            end=options.end,
            min_kept_share=settings.min_kept_row_share,
        )
    elif options.source == "files":
        if not options.paths:
            raise OptionError("--source files needs at least one --path")
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
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "ab") as log:
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
        raise OptionError("the source produced no days to ingest (check --start/--end)")
    console.print(f"landed {len(summary.days)} days: {summary.days[0]} .. {summary.days[-1]}")
    with airflow_output_to(log_path):
        dags = load_dags(settings)

    if "ingest_events" in dags:
        with (
            console.status(f"ingest_events: one backfill run over {len(summary.days)} days"),
            airflow_output_to(log_path),
        ):
            result, rejected = ingest_backfill(settings, dags["ingest_events"], summary.days)
        summary.runs.append(result)
        summary.rejected_days = rejected
        for day in rejected:
            console.print(
                f"[yellow]{day} rejected by the gate[/], quarantined with its report in "
                f"{settings.quarantine_dir / f'date={day.isoformat()}'}; the other days go on"
            )
        if result.succeeded or is_rejected_day(result):
            console.print(f"ingest_events: [green]ok[/] in {result.seconds:.1f}s ({len(summary.days)} days)")
        else:
            console.print(f"[red]ingest_events failed[/]: {result.task_states}")
    if summary.ok and not summary.accepted_days:
        console.print("[red]every day was rejected by the gate: nothing to build features from[/]")
        summary.runs.append(DagRunResult("ingest_events", "none accepted", "failed"))
    days_conf = {"days": [d.isoformat() for d in summary.accepted_days]}
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
    if summary.ok and "train_offer_policy" in dags:
        campaign_round(settings, options, dags, summary, console, log_path)
    summary.seconds = time.perf_counter() - started
    print_summary(settings, summary, console)
    return summary


def campaign_round(
    settings: Settings,
    options: DemoOptions,
    dags: dict[str, Any],
    summary: DemoSummary,
    console: Console,
    log_path: Path,
) -> None:
    """Land one day of a uniformly logged campaign on the synthetic shop's customers (the day after the
    last landed one), ingest it with ``ingest_campaigns`` and run ``train_offer_policy`` over it; other
    sources have no campaign log."""

    if options.source != "synthetic":
        console.print("[yellow]train_offer_policy: no campaign log for this source, skipped[/]")
        return
    day = summary.days[-1] + dt.timedelta(days=1)
    with console.status(f"simulating a campaign of {options.campaign_decisions:,} decisions"):
        landing = time.perf_counter()
        land_campaign(
            settings,
            shop=SyntheticConfig(
                n_users=options.users, n_items=options.items, days=options.days, seed=options.seed
            ),
            day=dt.datetime.combine(day, dt.time(), dt.UTC),
            n_decisions=options.campaign_decisions,
            seed=options.seed,
        )
        landing = time.perf_counter() - landing
    conf = {"days": [day.isoformat()]}
    for dag_id in ("ingest_campaigns", "train_offer_policy"):
        with console.status(f"running {dag_id}"), airflow_output_to(log_path):
            result = run_dag(dags[dag_id], run_conf=conf)
        summary.runs.append(result)
        mark = "[green]ok[/]" if result.succeeded else "[red]FAILED[/]"
        console.print(
            f"{dag_id}: {mark} in {result.seconds:.1f}s (campaign of {day} landed in {landing:.1f}s)"
        )
        if not result.succeeded:
            return


def ingest_backfill(
    settings: Settings, ingest_dag: Any, days: list[dt.date]
) -> tuple[DagRunResult, list[dt.date]]:
    """One ``ingest_events`` run over ``days`` (run conf ``{"days": [...]}``); the run and its rejected days.

    The days are validated in order in one task, each judged as its own daily run would judge it, and
    the run builds one Data Docs site (see dags/ingest_events.py).
    """

    result = run_dag(ingest_dag, run_conf={"days": [d.isoformat() for d in days]})
    chosen = set(days)
    return result, [d for d in rejected_days(settings, min(days), max(days)) if d in chosen]


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
    for line in stage_report(settings, summary.accepted_days or summary.days):
        console.print(line, emoji=False)  # names such as "dr:running:" are no emoji codes
    if summary.rejected_days:
        console.print(
            f"[yellow]rejected days[/] (quarantined with their reports, left out of features and "
            f"training): {', '.join(d.isoformat() for d in summary.rejected_days)}"
        )
    console.print(f"total wall time: {summary.seconds:.0f}s")
    console.print(
        "where to look next: "
        f"lake {settings.events_dir}, quarantine {settings.quarantine_dir}, "
        f"reports {settings.reports_dir}, Airflow logs {settings.airflow_home / 'logs'}"
    )
    state = "[green]succeeded[/]" if summary.ok else "[red]failed[/]"
    console.print(f"demo {state}")


def stage_report(settings: Settings, days: list[dt.date] | None = None) -> list[str]:
    """Lines per stage, read back from the stores the stages wrote (not from the DAGs' own claims)."""
    lines: list[str] = []
    lines += _ingest_lines(settings)
    lines += _feature_lines(settings)
    lines += _privacy_lines(settings, days)
    lines += _model_lines(settings)
    lines += _recommendation_lines(settings, days)
    lines += _offer_lines(settings)
    return lines


def _offer_lines(settings: Settings) -> list[str]:

    if not (settings.models_dir / "offers").exists():
        return []
    return [escape(line) if not line.startswith("[bold]") else line for line in round_lines(settings)]


def _ingest_lines(settings: Settings) -> list[str]:

    lake_days = list_partitions(settings.events_dir)
    clean = sum(
        pq.ParquetFile(p).metadata.num_rows
        for d in lake_days
        for p in (settings.events_dir / f"date={d.isoformat()}").glob("*.parquet")
    )
    quarantined, rejected = 0, []
    for day in list_partitions(settings.quarantine_dir):
        report_path = settings.quarantine_dir / f"date={day.isoformat()}" / "report.json"
        if report_path.exists():
            report = json.loads(report_path.read_text())
            quarantined += int(report.get("rows_quarantined", 0))
            if report.get("status") == "rejected":
                rejected.append(day.isoformat())
    return [
        f"[bold]validated[/]: {len(lake_days)} days, {clean:,} clean events in the lake, "
        f"{quarantined:,} rows quarantined, {len(rejected)} days rejected"
        + (f" ({', '.join(rejected)})" if rejected else "")
    ]


def _feature_lines(settings: Settings) -> list[str]:

    snapshots = sorted((settings.features_dir / "user_features").glob("*.parquet"))
    if not snapshots:
        return ["[bold]features[/]: not built"]
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in snapshots)
    return [
        f"[bold]features[/]: {len(snapshots)} daily user snapshots ({rows:,} rows) in the offline store, "
        f"materialised to the online store ({settings.feast_online_path.name})"
    ]


def _privacy_lines(settings: Settings, days: list[dt.date] | None) -> list[str]:

    if not settings.privacy_dir.joinpath("ledger.db").exists() and settings.resolved_ledger_url.startswith(
        "sqlite"
    ):
        return ["[bold]privacy[/]: no ledger yet"]
    at = (
        dt.datetime.combine(max(days) + dt.timedelta(days=1), dt.time(), dt.UTC)
        if days
        else dt.datetime.now(dt.UTC)
    )
    try:
        report = Ledger(settings.resolved_ledger_url).spent(settings.privacy_scope, at)
    except LookupError:
        return ["[bold]privacy[/]: no budget registered yet"]
    return [f"[bold]privacy spent[/] (scope {report.scope}): {report.describe()}"]


def _model_lines(settings: Settings) -> list[str]:
    from tasks.registry import CHAMPION, alias_version, client, version_tags

    version = alias_version(settings, CHAMPION)
    label = "champion"
    if version is None:
        version, label = alias_version(settings, "challenger"), "challenger (not promoted)"
        if version is None:
            return ["[bold]model[/]: none registered"]
    tags = version_tags(settings, version)
    mlflow_client = client(settings)
    run_id = mlflow_client.get_model_version(settings.registered_model_name, version).run_id
    metrics = mlflow_client.get_run(run_id).data.metrics if run_id else {}
    lines = [
        f"[bold]{label}[/]: {settings.registered_model_name} version {version}",
        f"  privacy: {tags.get('privacy.statement', 'no statement recorded')}",
        f"  gate: {tags.get('gate.decision', '?')}: {tags.get('gate.reasons', '?')}",
    ]
    for name in ("challenger", "challenger_bare", "nonprivate", "popularity_recent", "buy_again"):
        values = [metrics.get(f"{name}.{v}_ndcg_at_10") for v in ("A", "B")]
        if any(v is not None for v in values):
            shown = ", ".join(
                f"{v} {val:.3f}" for v, val in zip(("A", "B"), values, strict=True) if val is not None
            )
            lines.append(f"  NDCG@10 {name}: {shown}")
    return lines


def _recommendation_lines(settings: Settings, days: list[dt.date] | None) -> list[str]:

    landing_days = list_partitions(settings.landing_dir)
    if not landing_days:
        return []
    folder = settings.landing_dir / f"date={(max(days) if days else landing_days[-1]).isoformat()}"
    raw_users: list[str] = []
    for path in landing_files(folder, "events"):
        if path.suffix == ".parquet":
            for user in pq.read_table(path, columns=["user_id"]).column("user_id").to_pylist():
                if user and user not in raw_users:
                    raw_users.append(user)
    lines = ["[bold]recommendations read back from Feast[/] (customer id -> pseudonym -> online store):"]
    for raw in raw_users[:3]:
        try:
            recs = get_recommendations(settings, raw, k=3)
        except NothingPublished as nothing:
            lines.append(escape(f"  {nothing}"))
            break
        except Exception as exc:  # the summary reports, it does not fail the run
            lines.append(escape(f"  {raw}: unavailable ({type(exc).__name__}: {exc})"))
            continue
        shown = ", ".join(
            f"{title or item} ({score:.3f})"
            for item, title, score in zip(
                recs.item_ids, recs.titles or [""] * len(recs.item_ids), recs.scores, strict=False
            )
        )
        source = "DP popularity fallback" if recs.fallback else f"model v{recs.model_version}"
        lines.append(escape(f"  {raw} -> {recs.user_id[:12]}..: {shown} [{source}]"))
    return lines
