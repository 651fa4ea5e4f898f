"""The campaign-log gate: the ``offers`` and ``exposures`` suites of ``expectations/`` run through GX 1.x.

An exposures row that fails a row-level expectation is quarantined with the names of what it failed
(``failed_expectations``) and counted per reason; the rest stay usable.  In particular a row without a
propensity in [:data:`~tasks.campaigns.contracts.MIN_PROPENSITY`, 1] is quarantined
(``propensity_present`` / ``propensity_in_unit_interval``): off-policy evaluation divides by it.  A table-level failure (columns not matching the contract) or an
expectation that raised stops the batch with one :class:`~tasks.contracts.ContractError` line.  The
offers table is small and all-or-nothing, as the item catalog is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from tasks.campaigns.contracts import EXPOSURE_COLUMNS, MIN_PROPENSITY, NO_OFFER, OFFER_COLUMNS, OFFER_KINDS
from tasks.config import Settings
from tasks.contracts import ContractError
from tasks.validation import GateResult, run_gate

FAILED_EXPECTATIONS = "failed_expectations"


@dataclass(frozen=True)
class ExposureGate:
    """Exposures split by the gate: ``clean`` rows, ``quarantined`` rows with their reasons, and counts."""

    clean: pd.DataFrame
    quarantined: pd.DataFrame
    reason_counts: dict[str, int]


def _stop_on_table_failures(gate: GateResult, where: str) -> None:
    problems = list(gate.table_failures) + list(gate.errors)
    if problems:
        raise ContractError(f"{where}: {'; '.join(problems)}")


def exposures_parameters(offer_ids: Iterable[str]) -> dict[str, object]:
    """The ``exposures`` suite's parameters: the known actions (``offer_ids`` and :data:`NO_OFFER`) and
    the smallest propensity accepted (:data:`MIN_PROPENSITY`)."""
    return {"known_actions": sorted({*offer_ids, NO_OFFER}), "min_propensity": MIN_PROPENSITY}


def validate_exposures(frame: pd.DataFrame, offer_ids: Iterable[str], *, settings: Settings) -> ExposureGate:
    """Run the ``exposures`` suite; actions must be one of ``offer_ids`` or :data:`NO_OFFER`."""
    batch = frame.reset_index(drop=True)
    gate = run_gate(batch, "exposures", exposures_parameters(offer_ids), settings=settings)
    _stop_on_table_failures(gate, "exposures")
    failed = pd.Series([gate.row_failures.get(i, ()) for i in range(len(batch))], index=batch.index)
    bad = failed.map(bool)
    quarantined = batch[bad].copy()
    quarantined[FAILED_EXPECTATIONS] = failed[bad]
    counts = Counter(name for names in failed[bad] for name in names)
    return ExposureGate(
        clean=batch[~bad][list(EXPOSURE_COLUMNS)].reset_index(drop=True),
        quarantined=quarantined.reset_index(drop=True),
        reason_counts=dict(sorted(counts.items())),
    )


def validate_offers(frame: pd.DataFrame, *, settings: Settings) -> pd.DataFrame:
    """Run the ``offers`` suite; any failing row stops the batch (one line naming rows and reasons)."""
    batch = frame.reset_index(drop=True)
    parameters = {"offer_kinds": list(OFFER_KINDS), "reserved_ids": [NO_OFFER]}
    gate = run_gate(batch, "offers", parameters, settings=settings)
    _stop_on_table_failures(gate, "offers")
    if gate.row_failures:
        rows = "; ".join(
            f"row {i} ({batch.at[i, 'offer_id']!r}): {', '.join(names)}"
            for i, names in sorted(gate.row_failures.items())[:20]
        )
        raise ContractError(f"offers: {len(gate.row_failures)} rows break the contract: {rows}")
    return batch[list(OFFER_COLUMNS)]
