"""Independent verification of the ledger: keyed chains, anchors, references, transitions, every epsilon.

The verifier trusts nothing the trainer computed and never creates a ledger.  It

* fails at once when the ledger database does not exist (a wrong ``SHOPREC_HOME``, a deleted file);
* treats an empty ledger as a failure whenever an anchor or a DP model version in MLflow says that
  something was charged;
* recomputes each table's keyed hash chain (HMAC with the ledger key: re-hashing without it is
  detected) and checks the chain against every anchor outside the database
  (:mod:`tasks.privacy.anchors`: rows removed, altered or re-hashed even with the key);
* checks references (events -> charges, charges -> budget policies of their scope, ``composed_with``
  -> earlier charges of the scope) and legal status histories (first ``reserved``, then at most one of
  ``committed`` / ``released``; a charge's status is its last event's);
* checks every budget policy row, and that each charge kept the cap of the policy it was reserved
  under: its own and composed epsilon recomputed from the stored mechanism parameters with the
  independent accountant (``dp_accounting``'s RDP accountant, within
  :data:`~tasks.privacy.accounting.ACCOUNTANT_RTOL`), composed with every charge active when it was
  reserved in the worst rolling period;
* and that the policy in force of every scope holds at the verification time.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from tasks.config import Settings
from tasks.privacy.accounting import ACCOUNTANT_RTOL, INDEPENDENT_ACCOUNTANT, independent_epsilon
from tasks.privacy.anchors import Anchor, check_anchor, find_anchors, write_anchor_file
from tasks.privacy.ledger import (
    GENESIS_HASH,
    PRIVACY_UNIT,
    Charge,
    charge_from_row,
    counts_in_period,
    key_fingerprint,
    ledger_exists,
    make_engine,
    row_digest,
)
from tasks.privacy.ledger_key import find_ledger_key, open_ledger
from tasks.privacy.tables import CHAINED_TABLES, ChargeStatus, budgets_table, charges_table, events_table


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    accountant: str
    rows_checked: int
    charges_checked: int
    max_relative_difference: float
    problems: tuple[str, ...] = field(default_factory=tuple)
    anchors_checked: int = 0

    def describe(self) -> str:
        if not self.ok and self.rows_checked == 0 and len(self.problems) == 1:
            return f"LEDGER VERIFICATION FAILED: {self.problems[0]}"
        head = "ledger verified" if self.ok else f"LEDGER VERIFICATION FAILED ({len(self.problems)} problems)"
        lines = [
            f"{head}: {self.rows_checked} rows, {self.charges_checked} charges recomputed with "
            f"{self.accountant} (max relative difference {self.max_relative_difference:.2e}, "
            f"tolerance {ACCOUNTANT_RTOL:.0e}), {self.anchors_checked} anchors checked"
        ]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _failed(problem: str) -> VerifyResult:
    return VerifyResult(False, INDEPENDENT_ACCOUNTANT, 0, 0, 0.0, (problem,))


def _read_tables(url: str) -> dict[str, list[Any]] | None:
    """Every row of the chained tables (None when none of them exists); never creates anything."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            present = [t for t in CHAINED_TABLES if inspector.has_table(t.name)]
            if not present:
                return None
            return {
                t.name: list(conn.execute(sa.select(t).order_by(t.c.id)).all()) if t in present else []
                for t in CHAINED_TABLES
            }
    finally:
        engine.dispose()


def _check_chains(tables: dict[str, list[Any]], key: bytes) -> list[str]:
    problems = []
    for table in CHAINED_TABLES:
        prev = GENESIS_HASH
        for expected_id, row in enumerate(tables[table.name], start=1):
            if row.id != expected_id:
                problems.append(
                    f"{table.name}: row id {row.id} where {expected_id} was expected (row removed?)"
                )
            if row.prev_hash != prev:
                problems.append(
                    f"{table.name} row {row.id}: prev_hash does not match the previous row's hash"
                )
            if row_digest(table.name, row.prev_hash, row._asdict(), key) != row.row_hash:
                problems.append(
                    f"{table.name} row {row.id}: content does not match its keyed hash (row altered or "
                    "re-hashed without the ledger key)"
                )
            prev = row.row_hash
    return problems


def _check_budget_rows(rows: Sequence[Any]) -> list[str]:
    problems = []
    for row in rows:
        if not (row.epsilon_cap > 0 and math.isfinite(row.epsilon_cap)):
            problems.append(f"budget {row.id}: invalid epsilon cap {row.epsilon_cap}")
        if not 0 < row.delta < 1:
            problems.append(f"budget {row.id}: invalid delta {row.delta}")
        if row.period_days < 1:
            problems.append(f"budget {row.id}: invalid period of {row.period_days} days")
        if row.unit != PRIVACY_UNIT:
            problems.append(f"budget {row.id}: privacy unit {row.unit!r}, not {PRIVACY_UNIT!r}")
        if not (row.reason or "").strip() or not (row.set_by or "").strip():
            problems.append(f"budget {row.id}: policy change without who and why")
    return problems


def _check_transitions(
    tables: dict[str, list[Any]], charges: dict[int, Charge]
) -> tuple[list[str], dict[int, int], dict[int, int]]:
    """Event references and histories; returns the problems, each charge's reserved event id and, for
    released charges, the id of their release event."""
    problems: list[str] = []
    history: dict[int, list[Any]] = {}
    for event in tables[events_table.name]:
        if event.charge_id not in charges:
            problems.append(f"event {event.id}: refers to charge {event.charge_id}, which does not exist")
            continue
        history.setdefault(event.charge_id, []).append(event)
    reserved_at: dict[int, int] = {}
    released_at: dict[int, int] = {}
    for charge in charges.values():
        events = history.get(charge.id, [])
        statuses = [e.status for e in events]
        if not events:
            problems.append(f"charge {charge.id}: no recorded transition")
            continue
        if statuses[0] != ChargeStatus.RESERVED.value:
            problems.append(f"charge {charge.id}: first transition is {statuses[0]}, not reserved")
        if len(statuses) > 1 and statuses[1] not in (
            ChargeStatus.COMMITTED.value,
            ChargeStatus.RELEASED.value,
        ):
            problems.append(f"charge {charge.id}: illegal transition reserved -> {statuses[1]}")
        if len(statuses) > 2:
            problems.append(
                f"charge {charge.id}: illegal transition {' -> '.join(statuses)} (nothing may follow "
                f"{statuses[1]})"
            )
        last = events[-1]
        if charge.status.value != last.status:
            problems.append(
                f"charge {charge.id}: status {charge.status.value} but its last recorded transition is "
                f"{last.status}"
            )
        elif (charge.model_version, charge.artifact_uri) != (last.model_version, last.artifact_uri):
            problems.append(f"charge {charge.id}: model version / artifact differ from its last transition")
        reserved_at[charge.id] = events[0].id
        released = [e.id for e in events if e.status == ChargeStatus.RELEASED.value]
        if released:
            released_at[charge.id] = released[0]
    return problems, reserved_at, released_at


def _worst_total(active: Sequence[Charge], charge: Charge, period_days: int, delta: float) -> float:
    """Independent composition of ``charge`` with ``active`` in its worst rolling period (as reserve does)."""
    start, end = charge.data_window
    period = dt.timedelta(days=period_days)
    near = [c for c in active if counts_in_period(c, start - period, end + period)]
    bound = independent_epsilon([*(c.mechanism for c in near), charge.mechanism], delta)
    if len(near) <= 1:
        return bound
    candidates = {start} | {c.data_window[0] for c in near if start <= c.data_window[0] <= end + period}
    worst = 0.0
    for t in sorted(candidates):
        counted = [c.mechanism for c in near if counts_in_period(c, t - period, t)]
        worst = max(worst, independent_epsilon([*counted, charge.mechanism], delta))
    return worst


def verify_ledger(
    url: str,
    *,
    key: bytes | None,
    anchors: Sequence[Anchor] = (),
    dp_versions: Sequence[str] = (),
    at: dt.datetime | None = None,
) -> VerifyResult:
    """Check the ledger at ``url`` with its ``key`` against ``anchors``; ``ok`` is False on any problem.

    ``dp_versions``: DP model versions that MLflow holds (an empty ledger is then a failure).
    """
    safe_url = sa.engine.make_url(url).render_as_string(hide_password=True)
    if not ledger_exists(url):
        return _failed(
            f"privacy ledger {safe_url} does not exist (wrong SHOPREC_HOME or ledger URL, or the ledger "
            "was deleted)"
        )
    try:
        tables = _read_tables(url)
    except sa.exc.DBAPIError as err:
        return _failed(f"privacy ledger {safe_url} cannot be read ({type(err.orig).__name__}: {err.orig})")
    n_rows = 0 if tables is None else sum(len(rows) for rows in tables.values())
    if tables is None or n_rows == 0:
        claims = [f"{a.source} anchors {a.rows} rows" for a in anchors if a.rows] + [
            f"MLflow holds DP model version(s) {', '.join(dp_versions)}" for _ in dp_versions[:1]
        ]
        if claims:
            return VerifyResult(
                False,
                INDEPENDENT_ACCOUNTANT,
                0,
                0,
                0.0,
                tuple(f"the privacy ledger {safe_url} is empty but {claim}" for claim in claims),
                anchors_checked=len(anchors),
            )
        return VerifyResult(True, INDEPENDENT_ACCOUNTANT, 0, 0, 0.0, anchors_checked=len(anchors))
    problems: list[str] = []

    if key is None:
        problems.append(
            "no ledger key found (SHOPREC_LEDGER_KEY, Airflow connection, key file): the keyed chains "
            "cannot be checked"
        )
    else:
        problems += _check_chains(tables, key)
        fingerprint = key_fingerprint(key)
        for anchor in anchors:
            if anchor.key_fingerprint not in (None, fingerprint):
                problems.append(f"{anchor.source}: anchored under another ledger key")
    rows_by_table = {name: {row.id: row.row_hash for row in rows} for name, rows in tables.items()}
    for anchor in anchors:
        problems += check_anchor(anchor, rows_by_table)

    budget_rows = {row.id: row for row in tables[budgets_table.name]}
    problems += _check_budget_rows(list(budget_rows.values()))

    charges: dict[int, Charge] = {}
    for row in tables[charges_table.name]:
        try:
            charges[row.id] = charge_from_row(row)
        except (ValueError, TypeError, KeyError, json.JSONDecodeError) as err:
            problems.append(f"charge {row.id}: unreadable ({err})")
    transition_problems, reserved_at, released_at = _check_transitions(tables, charges)
    problems += transition_problems

    worst = 0.0
    for charge in charges.values():
        budget = budget_rows.get(charge.budget_id)
        if budget is None:
            problems.append(f"charge {charge.id}: refers to budget {charge.budget_id}, which does not exist")
        elif budget.scope != charge.scope or budget.unit != charge.unit or budget.delta != charge.delta:
            problems.append(
                f"charge {charge.id}: scope/unit/delta ({charge.scope}, {charge.unit}, {charge.delta:.3g}) differ "
                f"from its budget {budget.id} ({budget.scope}, {budget.unit}, {budget.delta:.3g})"
            )
        own = independent_epsilon([charge.mechanism], charge.delta)
        worst = max(worst, _relative(charge.epsilon, own))
        if not math.isclose(charge.epsilon, own, rel_tol=ACCOUNTANT_RTOL, abs_tol=1e-9):
            problems.append(
                f"charge {charge.id}: stored epsilon {charge.epsilon:.6g} != recomputed {own:.6g} "
                f"(delta={charge.delta:.3g}, {INDEPENDENT_ACCOUNTANT})"
            )
        # the charges that were active (reserved or committed) when this one was reserved
        mine = reserved_at.get(charge.id, 0)
        active = [
            c
            for c in charges.values()
            if c.id < charge.id
            and c.scope == charge.scope
            and c.id in reserved_at
            and not (c.id in released_at and released_at[c.id] < mine)
        ]
        active_ids = {c.id for c in active}
        strangers = [i for i in charge.composed_with if i not in active_ids]
        if strangers:
            problems.append(
                f"charge {charge.id}: composed with {strangers}, which were not active charges of scope "
                f"{charge.scope!r} when it was reserved"
            )
        others = [charges[i].mechanism for i in charge.composed_with if i in charges]
        composed = independent_epsilon([*others, charge.mechanism], charge.delta)
        worst = max(worst, _relative(charge.composed_epsilon, composed))
        if not math.isclose(charge.composed_epsilon, composed, rel_tol=ACCOUNTANT_RTOL, abs_tol=1e-9):
            problems.append(
                f"charge {charge.id}: stored composed epsilon {charge.composed_epsilon:.6g} != recomputed "
                f"{composed:.6g} (delta={charge.delta:.3g}, {INDEPENDENT_ACCOUNTANT})"
            )
        if budget is not None:
            total = _worst_total(active, charge, budget.period_days, budget.delta)
            if total > budget.epsilon_cap * (1 + ACCOUNTANT_RTOL):
                problems.append(
                    f"charge {charge.id}: composed epsilon {total:.4g} with the charges active when it was "
                    f"reserved exceeds the cap {budget.epsilon_cap:.4g} of its policy {budget.id} at "
                    f"delta={budget.delta:.3g} ({INDEPENDENT_ACCOUNTANT})"
                )

    # the policy in force of every scope must hold at the verification time
    moment = at or dt.datetime.now(dt.UTC)
    latest_budgets = {}
    for row in tables[budgets_table.name]:
        latest_budgets[row.scope] = row
    for scope, budget in latest_budgets.items():
        start = moment - dt.timedelta(days=budget.period_days)
        counted = [
            c.mechanism
            for c in charges.values()
            if c.scope == scope
            and c.status is not ChargeStatus.RELEASED
            and counts_in_period(c, start, moment)
        ]
        spent = independent_epsilon(counted, budget.delta)
        if spent > budget.epsilon_cap * (1 + ACCOUNTANT_RTOL):
            problems.append(
                f"budget {scope!r}: composed epsilon {spent:.4g} exceeds cap {budget.epsilon_cap:.4g} "
                f"at delta={budget.delta:.3g} ({INDEPENDENT_ACCOUNTANT})"
            )

    return VerifyResult(
        ok=not problems,
        accountant=INDEPENDENT_ACCOUNTANT,
        rows_checked=n_rows,
        charges_checked=len(charges),
        max_relative_difference=worst,
        problems=tuple(problems),
        anchors_checked=len(anchors),
    )


def verify_settings(
    settings: Settings, *, at: dt.datetime | None = None, use_registry: bool = True
) -> VerifyResult:
    """Verify the ledger of ``settings`` with its key against every anchor found (files, reports, MLflow)."""
    found = find_anchors(settings, use_registry=use_registry)
    result = verify_ledger(
        settings.resolved_ledger_url,
        key=find_ledger_key(settings),
        anchors=found.anchors,
        dp_versions=found.dp_versions,
        at=at,
    )
    if not found.problems:
        return result
    return VerifyResult(
        ok=False,
        accountant=result.accountant,
        rows_checked=result.rows_checked,
        charges_checked=result.charges_checked,
        max_relative_difference=result.max_relative_difference,
        problems=(*result.problems, *found.problems),
        anchors_checked=result.anchors_checked,
    )


def verify_and_anchor(
    settings: Settings, *, at: dt.datetime, name: str
) -> tuple[VerifyResult, dict[str, Any] | None]:
    """Verify; when the ledger verified and has rows, anchor its head in ``anchors/<name>.json`` (the
    ``privacy_audit`` run's anchor) and return the anchor too."""
    result = verify_settings(settings, at=at)
    if not result.ok or not result.rows_checked:
        return result, None
    ledger = open_ledger(settings)
    try:
        anchor = ledger.anchor()
    finally:
        ledger.close()
    write_anchor_file(settings, name, anchor)
    return result, anchor
