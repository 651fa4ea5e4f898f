"""Point-in-time campaign context through real Feast (embedded profile): a decision sees the user
features as of its timestamp, never a snapshot written after it."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.campaigns.context import CONTEXT_NAMES, NEVER_BOUGHT_MONTHS, decision_context, decision_features
from tasks.config import Settings
from tasks.feast_store import apply_definitions
from tasks.features import USER_FEATURES_SCHEMA, snapshot_time, user_features_dir

pytestmark = pytest.mark.integration

DAYS = [dt.date(2026, 9, 1), dt.date(2026, 9, 2), dt.date(2026, 9, 3)]


def snapshot(user: str, day: dt.date, purchases: int, spend: float, top: list[str]) -> dict:
    row: dict = {f.name: 0 for f in USER_FEATURES_SCHEMA}
    row.update(
        user_id=user,
        event_timestamp=snapshot_time(day),
        views_30d=10 * purchases,
        purchases_30d=purchases,
        spend_30d=spend,
        avg_basket_value_30d=spend / max(purchases, 1),
        days_since_last_purchase=3.0 if purchases else -1.0,
        top_categories=top,
        recent_items=[],
        purchased_items=[],
        purchased_counts=[],
    )
    return row


def write_snapshots(settings: Settings) -> None:
    folder = user_features_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    rows = {
        DAYS[0]: [snapshot("u_ann", DAYS[0], 1, 20.0, ["kitchen"])],
        DAYS[1]: [snapshot("u_ann", DAYS[1], 2, 50.0, ["kitchen"]), snapshot("u_bo", DAYS[1], 0, 0.0, [])],
        # after the decisions below: ann's purchases jump and her top category changes
        DAYS[2]: [
            snapshot("u_ann", DAYS[2], 9, 900.0, ["home decor"]),
            snapshot("u_bo", DAYS[2], 1, 5.0, []),
        ],
    }
    for day, part in rows.items():
        table = pa.Table.from_pylist(part, schema=USER_FEATURES_SCHEMA)
        pq.write_table(table, folder / f"{day.isoformat()}.parquet")


def test_a_decision_sees_the_features_as_of_its_timestamp(shoprec_home: Settings) -> None:
    write_snapshots(shoprec_home)
    apply_definitions(shoprec_home)
    stamps = pd.Series(
        pd.to_datetime(
            [
                "2026-09-02 12:00",  # ann: only the 1 Sep snapshot (stamped 2 Sep 00:00) exists yet
                "2026-09-03 23:59",  # ann: the 2 Sep snapshot, not the 3 Sep one (stamped 4 Sep 00:00)
                "2026-09-04 00:00",  # ann: the 3 Sep snapshot, stamped exactly then
                "2026-09-02 12:00",  # bo: no snapshot before 3 Sep 00:00
                "2026-09-03 08:00",  # bo: the 2 Sep snapshot (never bought)
            ],
            utc=True,
        )
    )
    users = ["u_ann", "u_ann", "u_ann", "u_bo", "u_bo"]
    features = decision_features(shoprec_home, users, stamps)
    assert features["user_id"].tolist() == users  # input order kept
    assert features["purchases_30d"].tolist()[:3] == [1, 2, 9]
    assert features["spend_30d"].tolist()[:3] == [20.0, 50.0, 900.0]
    context = decision_context(shoprec_home, users, stamps)
    assert context.shape == (5, len(CONTEXT_NAMES))
    col = {name: i for i, name in enumerate(CONTEXT_NAMES)}
    np.testing.assert_allclose(context[:, col["log_purchases_30d"]], np.log1p([1, 2, 9, 0, 0]))
    assert context[:, col["top_kitchen"]].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert context[:, col["top_home_decor"]].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert context[:, col["has_history"]].tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert context[3, col["recency_months"]] == NEVER_BOUGHT_MONTHS
    assert context[4, col["recency_months"]] == NEVER_BOUGHT_MONTHS  # -1: never bought
    assert context[0, col["recency_months"]] == pytest.approx(0.1)
