"""``shoprec privacy verify|report|status|budget set|prepare-postgres``: the compliance officer's entry points."""

from __future__ import annotations

import datetime as dt

import typer

from tasks.config import get_settings
from tasks.contracts import parse_moment
from tasks.privacy.anchors import write_anchor_file
from tasks.privacy.ledger import Ledger, LedgerMissing
from tasks.privacy.ledger_key import open_ledger
from tasks.privacy.pg_guard import prepare_ledger_database
from tasks.privacy.policy import current_user
from tasks.privacy.report import write_report
from tasks.privacy.verify import verify_settings

app = typer.Typer(
    help="Privacy budget ledger: verify it, report on it, show what is left.", no_args_is_help=True
)
budget_app = typer.Typer(
    help="Budget policies: the only way to change a cap, delta or period.", no_args_is_help=True
)
app.add_typer(budget_app, name="budget")


def _moment(at: str | None) -> dt.datetime:
    if at is None:
        return dt.datetime.now(dt.UTC)
    return parse_moment(at, "--at")


@app.command()
def verify(
    at: str | None = typer.Option(None, help="ISO time whose budgets are checked (default: now)."),
) -> None:
    """Check the keyed hash chains against every anchor (MLflow versions, reports, audit runs), references,
    transitions and budgets, and recompute every epsilon with dp_accounting; exit 1 on any problem."""
    result = verify_settings(get_settings(), at=_moment(at))
    typer.echo(result.describe())
    if not result.ok:
        raise typer.Exit(code=1)


@app.command()
def report(
    at: str | None = typer.Option(None, help="ISO time of the report (default: now)."),
    registry: bool = typer.Option(True, help="Read privacy statements from the MLflow registry."),
) -> None:
    """Write the compliance report (Markdown, JSON, HTML with a chart); exit 1 if verification failed."""
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
    moment = _moment(at)
    try:
        ledger = Ledger(get_settings().resolved_ledger_url)
    except LedgerMissing as missing:
        typer.echo(str(missing))
        raise typer.Exit(code=1) from missing
    try:
        budgets = ledger.budgets()
        if not budgets:
            typer.echo("no privacy budget defined yet")
        for budget in budgets:
            typer.echo(f"{budget.scope}: {ledger.spent(budget.scope, moment).describe()}")
    finally:
        ledger.close()


@budget_app.command("set")
def budget_set(
    cap: float = typer.Option(..., help="Epsilon cap of the rolling period (user-level, RDP accountant)."),
    delta: float = typer.Option(..., help="Delta of every (epsilon, delta) in the scope."),
    reason: str = typer.Option(..., help="Why the policy changes (recorded, hashed and anchored)."),
    period_days: int | None = typer.Option(
        None, help="Rolling period in days (default: keep the current one)."
    ),
    by: str | None = typer.Option(None, help="Who changes it (default: the OS user)."),
    scope: str | None = typer.Option(None, help="Budget scope (default: SHOPREC_PRIVACY_SCOPE)."),
) -> None:
    """Append a new budget policy, recorded with who and why, and anchor the ledger's head."""
    settings = get_settings()
    name = scope or settings.privacy_scope
    ledger = open_ledger(settings)
    try:
        policies = ledger.policies(name)
        days = period_days or (policies[-1].period_days if policies else settings.privacy_period_days)
        budget = ledger.set_budget(name, cap, delta, days, set_by=by or current_user(), reason=reason)
        path = write_anchor_file(settings, f"budget-{budget.id}", ledger.anchor())
    finally:
        ledger.close()
    before = (
        f"cap {policies[-1].epsilon_cap:g}, delta {policies[-1].delta:.3g}, period {policies[-1].period_days} days"
        if policies
        else "no policy"
    )
    typer.echo(
        f"budget {name!r}: policy {budget.id} (cap {budget.epsilon_cap:g}, delta {budget.delta:.3g}, period "
        f"{budget.period_days} days, unit {budget.unit}) replaces {before}; by {budget.set_by}: {budget.reason}"
    )
    typer.echo(f"ledger head anchored in {path}")


@budget_app.command("show")
def budget_show(
    scope: str | None = typer.Option(None, help="Budget scope (default: SHOPREC_PRIVACY_SCOPE)."),
) -> None:
    """Every policy version of the scope, with who changed it and why."""
    settings = get_settings()
    try:
        ledger = Ledger(settings.resolved_ledger_url)
    except LedgerMissing as missing:
        typer.echo(str(missing))
        raise typer.Exit(code=1) from missing
    try:
        for b in ledger.policies(scope or settings.privacy_scope):
            typer.echo(
                f"policy {b.id} from {b.created_at.isoformat()}: cap {b.epsilon_cap:g}, delta {b.delta:.3g}, "
                f"period {b.period_days} days; by {b.set_by}: {b.reason}"
            )
    finally:
        ledger.close()


@app.command("prepare-postgres")
def prepare_postgres(
    admin_url: str = typer.Option(..., help="Superuser URL of the ledger database."),
    owner_role: str = typer.Option(..., help="Role that owns the tables and triggers (NOLOGIN)."),
    app_role: str = typer.Option(
        ..., help="Role the services log in as (SELECT, INSERT, the status transition)."
    ),
) -> None:
    """Make the PostgreSQL ledger append-only: triggers, an owner role and a restricted app role."""
    prepare_ledger_database(admin_url, owner_role=owner_role, app_role=app_role)
    typer.echo(f"ledger tables owned by {owner_role}; {app_role} may only read, append and commit/release")
