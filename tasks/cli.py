"""The ``shoprec`` command line: the demo, data sources, and (as they land) consumers and privacy.

Heavy libraries are imported inside each command, so ``shoprec --help`` stays fast.  Expected errors
(:class:`~tasks.contracts.ExpectedError`: a bad or missing file, a bad option value) are caught once,
here, in :class:`ShopRecApp`: one line on stderr, a non-zero exit, no traceback unless ``--verbose``
or ``SHOPREC_VERBOSE=1``.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tasks.config import get_settings, verbose_requested
from tasks.consumers import recommend_command, search_command
from tasks.contracts import ExpectedError, parse_day
from tasks.demo import DemoOptions, run_demo
from tasks.permissions import restrict_umask
from tasks.privacy.cli import app as privacy_app
from tasks.sources.loader import load_contract_files
from tasks.sources.online_retail import load_online_retail as load
from tasks.sources.synthetic import SyntheticConfig
from tasks.sources.synthetic import generate as generate_source

# Files a person named that are not there or not readable: expected, shown as one line.
_FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _verbose(args: list[str]) -> bool:
    return "--verbose" in args or verbose_requested()


class ShopRecApp(typer.Typer):
    """The ``shoprec`` app: an expected error becomes one line on stderr and its exit code."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        argv = list(kwargs.get("args") or (args[0] if args else None) or sys.argv[1:])
        try:
            return super().__call__(*args, **kwargs)
        except (ExpectedError, *_FILE_ERRORS) as exc:
            if _verbose(argv):
                raise
            if isinstance(exc, OSError) and exc.filename is not None:
                message = f"{exc.filename}: {exc.strerror or exc}"
            else:
                message = str(exc)
            sys.stderr.write(f"shoprec: error: {message}\n")
            sys.exit(exc.exit_code if isinstance(exc, ExpectedError) else 1)


app = ShopRecApp(
    name="shoprec",
    help="ShopRec: privacy-preserving recommendations on Airflow, Great Expectations, Feast, "
    "Opacus and MLflow.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console()
app.add_typer(privacy_app, name="privacy", help="Privacy budget ledger: verify, report, status.")


@app.callback()
def _options(
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show the traceback of expected errors (or SHOPREC_VERBOSE=1).")
    ] = False,
) -> None:
    """ShopRec: privacy-preserving recommendations on Airflow, Great Expectations, Feast, Opacus and MLflow."""
    restrict_umask()  # every command creates its files owner-only (raw landing data, keys, ledger, state DBs)


class Source(StrEnum):
    SYNTHETIC = "synthetic"
    ONLINE_RETAIL = "online-retail"
    FILES = "files"


class Titles(StrEnum):
    WORDS = "words"
    CODES = "codes"


@app.command()
def demo(
    source: Annotated[Source, typer.Option(help="Where the landing data comes from.")] = Source.SYNTHETIC,
    path: Annotated[
        list[Path] | None,
        typer.Option(help="Online Retail file, or contract CSV/Parquet files (repeatable)."),
    ] = None,
    users: Annotated[int, typer.Option(help="Synthetic users.")] = 1500,
    items: Annotated[int, typer.Option(help="Synthetic items.")] = 400,
    days: Annotated[int, typer.Option(help="Synthetic days.")] = 40,
    seed: Annotated[int, typer.Option(help="Synthetic seed.")] = 42,
    start: Annotated[
        str | None, typer.Option(help="First day to ingest (YYYY-MM-DD); default: the source's first.")
    ] = None,
    end: Annotated[
        str | None, typer.Option(help="Last day to ingest (YYYY-MM-DD); default: the source's last.")
    ] = None,
) -> None:
    """Run the whole pipeline through real Airflow on the embedded profile and print a summary."""
    options = DemoOptions(
        source=source.value,
        paths=tuple(path or ()),
        users=users,
        items=items,
        days=days,
        seed=seed,
        start=parse_day(start, "--start") if start else None,
        end=parse_day(end, "--end") if end else None,
    )
    summary = run_demo(get_settings(), options)
    if not summary.ok:
        raise typer.Exit(code=1)


@app.command()
def generate(
    users: Annotated[int, typer.Option(help="Number of users.")] = 1500,
    items: Annotated[int, typer.Option(help="Number of items.")] = 400,
    days: Annotated[int, typer.Option(help="Number of days.")] = 40,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 42,
    start: Annotated[str, typer.Option(help="First day (YYYY-MM-DD).")] = "2026-09-01",
    titles: Annotated[
        Titles, typer.Option(help="words: English titles and categories; codes: item codes, no category.")
    ] = Titles.WORDS,
    landing: Annotated[
        Path | None, typer.Option(help="Landing folder; default: SHOPREC_HOME/landing.")
    ] = None,
) -> None:
    """Write a deterministic synthetic shop into the landing zone, one folder per day."""
    settings = get_settings()
    target = landing or settings.landing_dir
    config = SyntheticConfig(
        n_users=users,
        n_items=items,
        days=days,
        seed=seed,
        start=parse_day(start, "--start"),
        titles=titles.value,
    )
    with console.status("generating synthetic events"):
        manifest = generate_source(config, target)
    console.print(
        f"[green]wrote[/] {manifest.n_events:,} events, {manifest.n_items:,} items, "
        f"{manifest.n_users:,} users over {len(manifest.days)} days to {manifest.landing_dir}"
    )


@app.command("load-online-retail")
def load_online_retail(
    path: Annotated[Path, typer.Argument(help="UCI Online Retail (II) file: parquet, csv or xlsx.")],
    start: Annotated[str | None, typer.Option(help="First day to keep (YYYY-MM-DD).")] = None,
    end: Annotated[str | None, typer.Option(help="Last day to keep (YYYY-MM-DD).")] = None,
    landing: Annotated[
        Path | None, typer.Option(help="Landing folder; default: SHOPREC_HOME/landing.")
    ] = None,
) -> None:
    """Map UCI Online Retail invoice lines to landing batches and report what was dropped and why."""
    settings = get_settings()
    with console.status(f"reading {path}"):
        manifest, report = load(
            path,
            landing or settings.landing_dir,
            start=parse_day(start, "--start") if start else None,
            end=parse_day(end, "--end") if end else None,
            min_kept_share=settings.min_kept_row_share,
        )
    console.print(report)
    console.print(
        f"[green]wrote[/] {manifest.n_events:,} purchase events of {manifest.n_users:,} customers "
        f"over {len(manifest.days)} days to {manifest.landing_dir}"
    )


@app.command("load")
def load_files(
    paths: Annotated[list[Path], typer.Argument(help="CSV/Parquet files already in the events contract.")],
    landing: Annotated[
        Path | None, typer.Option(help="Landing folder; default: SHOPREC_HOME/landing.")
    ] = None,
) -> None:
    """Load your own contract files into the landing zone, split by UTC day."""
    settings = get_settings()
    manifest = load_contract_files(
        paths, landing or settings.landing_dir, min_kept_share=settings.min_kept_row_share
    )
    console.print(
        f"[green]wrote[/] {manifest.n_events:,} events over {len(manifest.days)} days to "
        f"{manifest.landing_dir}"
    )


@app.command()
def recommend(
    user: Annotated[str, typer.Argument(help="Customer id (raw ids are pseudonymised) or pseudonym.")],
    k: Annotated[int, typer.Option(help="How many items to show.")] = 10,
) -> None:
    """Print a user's published recommendations, with scores and reasons, from the online store."""
    recommend_command(user, k)


@app.command()
def offer(
    user: Annotated[str, typer.Argument(help="Customer id (raw ids are pseudonymised) or pseudonym.")],
) -> None:
    """Print the offer the champion offer policy published for a customer, with its expected gain."""
    from tasks.campaigns.serving import offer_for

    console.print(offer_for(get_settings(), user).describe())


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in words.")],
    user: Annotated[str | None, typer.Option(help="Personalise for this customer id or pseudonym.")] = None,
    k: Annotated[int, typer.Option(help="How many items to show.")] = 10,
) -> None:
    """Semantic product search over the item text vectors, personalised when a user is given."""
    search_command(query, user, k)


def main() -> None:  # pragma: no cover - console entry point
    app()
