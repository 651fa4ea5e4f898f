"""``shoprec privacy verify|report|status``: the compliance officer's entry points (a typer sub-app)."""

from __future__ import annotations

import datetime as dt

import typer

from tasks.config import get_settings
from tasks.contracts import parse_moment

app = typer.Typer(
    help="Privacy budget ledger: verify it, report on it, show what is left.", no_args_is_help=True
)


def _moment(at: str | None) -> dt.datetime:
    if at is None:
        return dt.datetime.now(dt.UTC)
    return parse_moment(at, "--at")


@app.command()
def verify(
    at: str | None = typer.Option(None, help="ISO time whose budgets are checked (default: now)."),
) -> None:
    """Recompute every epsilon with dp_accounting and check the hash chains; exit 1 on any mismatch."""
    from tasks.privacy.verify import verify_ledger

    result = verify_ledger(get_settings().resolved_ledger_url, at=_moment(at))
    typer.echo(result.describe())
    if not result.ok:
        raise typer.Exit(code=1)


@app.command()
def report(
    at: str | None = typer.Option(None, help="ISO time of the report (default: now)."),
    registry: bool = typer.Option(True, help="Read privacy statements from the MLflow registry."),
) -> None:
    """Write the compliance report (Markdown, JSON, HTML with a chart); exit 1 if verification failed."""
    from tasks.privacy.report import write_report

    manifest = write_report(get_settings(), at=_moment(at), use_registry=registry)
    typer.echo(
        f"privacy report: {manifest.markdown}\n                {manifest.json}\n                {manifest.html}"
    )
    typer.echo(
        f"{manifest.n_budgets} budgets, {manifest.n_charges} charges, {manifest.n_models} models; "
        f"ledger verification {'passed' if manifest.verified else 'FAILED'}"
    )
    if not manifest.verified:
        raise typer.Exit(code=1)


@app.command()
def status(
    at: str | None = typer.Option(None, help="ISO time (default: now)."),
) -> None:
    """Spent and remaining epsilon of every budget."""
    from tasks.privacy.ledger import Ledger

    moment = _moment(at)
    ledger = Ledger(get_settings().resolved_ledger_url)
    try:
        budgets = ledger.budgets()
        if not budgets:
            typer.echo("no privacy budget defined yet")
        for budget in budgets:
            typer.echo(f"{budget.scope}: {ledger.spent(budget.scope, moment).describe()}")
    finally:
        ledger.close()
