"""Independent verification of the ledger: hash chains, status history and every epsilon recomputed.

The verifier trusts nothing the trainer computed.  It reads the raw rows, recomputes each table's
hash chain, checks that every charge's status is its last transition's, and recomputes each charge's
own epsilon and its composed epsilon from the stored mechanism parameters with the independent
accountant (``dp_accounting``'s RDP accountant), within :data:`~tasks.privacy.accounting.ACCOUNTANT_RTOL`.
Finally it checks that no budget's current composition exceeds its cap.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import sqlalchemy as sa

from tasks.privacy.accounting import ACCOUNTANT_RTOL, INDEPENDENT_ACCOUNTANT, independent_epsilon
from tasks.privacy.ledger import (
    CHAINED_TABLES,
    GENESIS_HASH,
    ChargeStatus,
    charge_from_row,
    charges_table,
    counts_in_period,
    events_table,
    make_engine,
    row_digest,
)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    accountant: str
    rows_checked: int
    charges_checked: int
    max_relative_difference: float
    problems: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        head = "ledger verified" if self.ok else f"LEDGER VERIFICATION FAILED ({len(self.problems)} problems)"
        lines = [
            f"{head}: {self.rows_checked} rows, {self.charges_checked} charges recomputed with "
            f"{self.accountant} (max relative difference {self.max_relative_difference:.2e}, "
            f"tolerance {ACCOUNTANT_RTOL:.0e})"
        ]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def verify_ledger(url: str, *, at: dt.datetime | None = None) -> VerifyResult:
    """Check the ledger at ``url``; ``ok`` is False on any tampering, broken chain or epsilon mismatch."""
    engine = make_engine(url)
    problems: list[str] = []
    rows_checked = 0
    worst = 0.0
    try:
        with engine.begin() as conn:
            missing = [t.name for t in CHAINED_TABLES if not sa.inspect(conn).has_table(t.name)]
            if len(missing) == len(CHAINED_TABLES):  # nothing was ever charged: an empty ledger
                return VerifyResult(True, INDEPENDENT_ACCOUNTANT, 0, 0, 0.0)
            if missing:
                return VerifyResult(False, INDEPENDENT_ACCOUNTANT, 0, 0, 0.0, (f"missing tables: {missing}",))
            tables = {t.name: conn.execute(sa.select(t).order_by(t.c.id)).all() for t in CHAINED_TABLES}
    finally:
        engine.dispose()

    for table in CHAINED_TABLES:
        prev = GENESIS_HASH
        for expected_id, row in enumerate(tables[table.name], start=1):
            rows_checked += 1
            values = row._asdict()
            if row.id != expected_id:
                problems.append(
                    f"{table.name}: row id {row.id} where {expected_id} was expected (row removed?)"
                )
            if row.prev_hash != prev:
                problems.append(
                    f"{table.name} row {row.id}: prev_hash does not match the previous row's hash"
                )
            if row_digest(table.name, row.prev_hash, values) != row.row_hash:
                problems.append(f"{table.name} row {row.id}: content does not match its hash (row altered)")
            prev = row.row_hash

    last_event: dict[int, ChargeStatus] = {}
    for row in tables[events_table.name]:
        last_event[row.charge_id] = ChargeStatus(row.status)

    charges = {}
    for row in tables[charges_table.name]:
        try:
            charges[row.id] = charge_from_row(row)
        except (ValueError, TypeError) as err:
            problems.append(f"charge {row.id}: unreadable ({err})")
    for charge in charges.values():
        if last_event.get(charge.id) is not charge.status:
            problems.append(
                f"charge {charge.id}: status {charge.status.value} but its last recorded transition is "
                f"{last_event.get(charge.id)}"
            )
        own = independent_epsilon([charge.mechanism], charge.delta)
        worst = max(worst, _relative(charge.epsilon, own))
        if not math.isclose(charge.epsilon, own, rel_tol=ACCOUNTANT_RTOL, abs_tol=1e-9):
            problems.append(
                f"charge {charge.id}: stored epsilon {charge.epsilon:.6g} != recomputed {own:.6g} "
                f"(delta={charge.delta:.3g}, {INDEPENDENT_ACCOUNTANT})"
            )
        others = [charges[i].mechanism for i in charge.composed_with if i in charges]
        if len(others) != len(charge.composed_with):
            problems.append(f"charge {charge.id}: composed with unknown charges {charge.composed_with}")
        composed = independent_epsilon([*others, charge.mechanism], charge.delta)
        worst = max(worst, _relative(charge.composed_epsilon, composed))
        if not math.isclose(charge.composed_epsilon, composed, rel_tol=ACCOUNTANT_RTOL, abs_tol=1e-9):
            problems.append(
                f"charge {charge.id}: stored composed epsilon {charge.composed_epsilon:.6g} != recomputed "
                f"{composed:.6g} (delta={charge.delta:.3g}, {INDEPENDENT_ACCOUNTANT})"
            )

    # every budget in force must hold at the verification time
    moment = at or dt.datetime.now(dt.UTC)
    latest_budgets = {}
    for row in tables["privacy_budgets"]:
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
        rows_checked=rows_checked,
        charges_checked=len(charges),
        max_relative_difference=worst,
        problems=tuple(problems),
    )
