"""Unit tests of batch scoring, business rules, reasons and the offline copy on tiny tensors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from tasks.catalog import BlendWeights
from tasks.config import Settings
from tasks.publishing import (
    PublishRules,
    ScoreBlend,
    TopK,
    build_rows,
    explain,
    offline_path,
    popularity_top_k,
    publish_id_for,
    reason_labels,
    resolve_scoring_time,
    score_top_k,
    top_k_with_rules,
    write_offline_copy,
)

T0 = dt.datetime(2026, 10, 11, tzinfo=dt.UTC)


def _no_purchases(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.zeros(0, dtype=np.int64), np.zeros(0)) for _ in range(n)]


def test_top_k_orders_items_by_score() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    values, indices = top_k_with_rules(scores, k=3)
    assert indices.tolist() == [[1, 3, 2]]
    assert values[0].tolist() == pytest.approx([0.9, 0.7, 0.5])


def test_items_no_longer_in_the_catalog_are_never_recommended() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    allowed = torch.tensor([True, False, True, True])
    _, indices = top_k_with_rules(scores, k=4, allowed=allowed)
    assert indices.tolist() == [[3, 2, 0, -1]]


def test_category_cap_keeps_at_most_n_items_per_category() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.1]])
    category = torch.tensor([0, 0, 0, 1, 2])
    _, indices = top_k_with_rules(scores, k=4, category=category, max_per_category=2)
    assert indices.tolist() == [[0, 1, 3, 4]]


def test_category_cap_ranks_within_category_per_row() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]])
    category = torch.tensor([0, 0, 1, 1])
    _, indices = top_k_with_rules(scores, k=2, category=category, max_per_category=1)
    assert indices.tolist() == [[0, 2], [3, 1]]


def test_scoring_matches_a_full_matrix_product_across_batches() -> None:
    gen = torch.Generator().manual_seed(0)
    users, items = torch.randn(7, 4, generator=gen), torch.randn(9, 4, generator=gen)
    top = score_top_k(
        users,
        items,
        rules=PublishRules(k=3, max_per_category=None, batch_size=2),
        purchases=_no_purchases(7),
    )
    expected = torch.topk(users @ items.T, 3, dim=1).indices.numpy()
    assert np.array_equal(top.indices, expected)


def test_purchased_items_are_included_by_default() -> None:
    users, items = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.0, 1.0]])
    bought = [(np.array([0]), np.array([1.0]))]
    top = score_top_k(users, items, rules=PublishRules(k=2), purchases=bought)
    assert top.indices.tolist() == [[0, 1]]


def test_purchased_items_can_be_excluded() -> None:
    users, items = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.0, 1.0]])
    bought = [(np.array([0]), np.array([1.0]))]
    rules = PublishRules(k=2, include_purchased=False)
    top = score_top_k(users, items, rules=rules, purchases=bought)
    assert top.indices.tolist() == [[1, 2]]


def test_blend_receives_own_purchase_counts() -> None:
    """z-scored model scores [1, -1]; the repeat term 2 * log1p(4) = 3.22 lifts the bought item."""
    users, items = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.5, 0.0]])
    bought = [(np.array([1]), np.array([4.0]))]
    blend = ScoreBlend(BlendWeights(repeat=2.0))
    top = score_top_k(users, items, rules=PublishRules(k=2), purchases=bought, blend=blend)
    assert top.indices.tolist() == [[1, 0]]
    assert top.scores[0].tolist() == pytest.approx([-1.0 + 2.0 * np.log1p(4.0), 1.0], abs=1e-5)


def test_a_new_item_is_recommended_through_its_text_vector() -> None:
    """An item nobody interacted with scores on its (text-derived) vector alone."""
    users = torch.tensor([[0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.2, 0.1], [0.0, 2.0]])  # index 2: new item, no interactions
    top = score_top_k(users, items, rules=PublishRules(k=1), purchases=_no_purchases(1))
    assert top.indices.tolist() == [[2]]


def test_cold_start_list_is_the_top_of_dp_popularity_under_the_rules() -> None:
    popularity = np.array([5.0, 50.0, 20.0, 40.0])
    top = popularity_top_k(popularity, rules=PublishRules(k=2), allowed=np.array([1, 0, 1, 1], bool))
    assert top.indices.tolist() == [[3, 2]]


def test_reason_is_the_history_item_with_the_most_similar_text() -> None:
    text = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9]], dtype=np.float32)
    recommended = np.array([[2, 3, -1]])
    reasons = explain(recommended, [np.array([0, 1])], text)
    assert reasons.tolist() == [[0, 1, -1]]


def test_no_history_gives_no_reason() -> None:
    text = np.eye(3, dtype=np.float32)
    reasons = explain(np.array([[1, 2]]), [np.zeros(0, dtype=np.int64)], text)
    assert reasons.tolist() == [[-1, -1]]


def test_reason_labels_name_the_history_kind_and_item() -> None:
    labels = reason_labels(np.array([[0, -1]]), ["bought:"], ["A", "B"])
    assert labels == [["bought:A", ""]]


def test_publish_id_is_model_version_at_scoring_time() -> None:
    assert publish_id_for("3", T0) == "3@20261011T000000Z"


def _rows() -> pd.DataFrame:
    top = TopK(indices=np.array([[1, 0], [0, -1]]), scores=np.array([[0.5, 0.25], [0.75, -np.inf]]))
    return build_rows(
        ["u_b", "u_a"],
        top,
        [["bought:A", ""], ["viewed:B", ""]],
        ["A", "B"],
        model_version="3",
        scoring_time=T0,
    )


def test_rows_drop_empty_slots_and_carry_the_scoring_time() -> None:
    rows = _rows()
    assert rows["item_ids"].tolist() == [["B", "A"], ["A"]]
    assert rows["reasons"].tolist() == [["bought:A", ""], ["viewed:B"]]
    assert rows["event_timestamp"].tolist() == [pd.Timestamp(T0)] * 2


def test_offline_copy_is_byte_identical_when_rewritten(tmp_path: Path) -> None:
    path = offline_path(tmp_path, publish_id_for("3", T0))
    first = write_offline_copy(_rows(), path).read_bytes()
    second = write_offline_copy(_rows(), path).read_bytes()
    assert first == second
    assert pq.read_table(path).column("user_id").to_pylist() == ["u_a", "u_b"]


def test_scoring_time_is_the_end_of_the_last_run_conf_day(shoprec_home: Settings) -> None:
    conf = {"days": ["2026-10-09", "2026-10-10"]}
    assert resolve_scoring_time(shoprec_home, conf) == T0


def test_scoring_time_comes_from_the_features_event_partitions(shoprec_home: Settings) -> None:
    extras = [{"partitions": ["2026-10-10", "2026-10-08"]}]
    assert resolve_scoring_time(shoprec_home, {}, extras) == T0


def test_scoring_time_without_conf_is_the_latest_snapshot(shoprec_home: Settings) -> None:
    folder = shoprec_home.features_dir / "user_features"
    folder.mkdir(parents=True)
    for day in ("2026-10-09", "2026-10-10"):
        (folder / f"{day}.parquet").write_bytes(b"")
    assert resolve_scoring_time(shoprec_home, None) == T0


def test_category_cap_looks_past_a_pool_that_one_category_fills() -> None:
    """The best 4K items are all of one category: the second slot must come from further down."""
    scores = torch.tensor([[float(20 - i) for i in range(20)]])
    category = torch.tensor([0] * 19 + [1])
    _, indices = top_k_with_rules(scores, k=2, category=category, max_per_category=1)
    assert indices.tolist() == [[0, 19]]
