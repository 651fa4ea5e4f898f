"""Unit tests of the membership split and the per-user losses (tiny tensors, no services)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_settings import tiny_catalog

from tasks.catalog import ItemCatalog
from tasks.config import Settings
from tasks.dataset import drop_held_out, holdout_mask, purchases_after_cuts, training_user_cuts
from tasks.membership import per_user_losses, split_members
from tasks.model import build_model
from tasks.training import TrainConfig, UserExamples, UserSoftmaxLoss, train

N_ITEMS = 20


def _catalog() -> ItemCatalog:
    return tiny_catalog(N_ITEMS)


def _examples(n_users: int) -> UserExamples:
    rng = np.random.default_rng(1)
    return UserExamples(
        rng.normal(size=(n_users, 12)).astype(np.float32),
        rng.integers(1, N_ITEMS + 1, (n_users, 4)).astype(np.int64),
        [rng.integers(1, N_ITEMS + 1, 1 + u % 4) for u in range(n_users)],
        n_items=N_ITEMS,
        cap_k=3,
        n_negatives=6,
        seed=0,
    )


def test_holdout_mask_holds_out_the_requested_share_of_users() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    assert holdout_mask(users, 0.1, seed=7).mean() == pytest.approx(0.1, abs=0.01)


def test_holdout_mask_decides_each_user_alone_whatever_the_order_or_the_other_users() -> None:
    users = [f"user-{i}" for i in range(500)]
    whole = dict(zip(users, holdout_mask(users, 0.3, seed=7), strict=True))
    subset = users[::-3]
    assert list(holdout_mask(subset, 0.3, seed=7)) == [whole[u] for u in subset]


def test_holdout_mask_depends_on_the_seed() -> None:
    users = [f"user-{i}" for i in range(500)]
    assert (holdout_mask(users, 0.5, seed=1) != holdout_mask(users, 0.5, seed=2)).any()


def test_holdout_share_zero_holds_out_nobody_and_one_is_refused() -> None:
    assert not holdout_mask(["a", "b", "c"], 0.0, seed=7).any()
    with pytest.raises(ValueError, match="held-out share"):
        holdout_mask(["a"], 1.0, seed=7)


def test_drop_held_out_keeps_exactly_the_users_the_mask_does_not_hold_out(tmp_path) -> None:
    settings = Settings(home=tmp_path, membership_holdout_share=0.4, seed=3)
    cuts = pd.DataFrame(
        {"user_id": [f"u{i}" for i in range(200)], "cut": pd.Timestamp("2024-01-01", tz="UTC")}
    )
    kept = drop_held_out(settings, cuts)
    held = holdout_mask(cuts["user_id"], 0.4, seed=3)
    assert kept["user_id"].tolist() == cuts.loc[~held, "user_id"].tolist()
    assert 0 < len(kept) < len(cuts)


def _events(n_users: int) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    rows = []
    for u in range(n_users):
        for day in rng.choice(20, size=int(rng.integers(1, 6)), replace=False):
            ts = pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(
                days=int(day), hours=int(rng.integers(24))
            )
            rows.append(
                (f"u{u:03d}", f"i{int(rng.integers(10)):02d}", str(rng.choice(["view", "purchase"])), ts)
            )
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "event_timestamp"])


def test_training_and_the_membership_audit_agree_on_the_training_users(tmp_path) -> None:
    """run_training's users (no held-out) are exactly the audit's candidates minus the held-out ones,
    with the same cut and the same labels per user (one function: tasks.dataset.training_user_cuts)."""
    settings = Settings(home=tmp_path, membership_holdout_share=0.3, seed=3)
    events, validation = _events(120), pd.Timestamp("2026-01-18", tz="UTC")
    trained = training_user_cuts(settings, events, validation)
    audited = training_user_cuts(settings, events, validation, with_held_out=True)
    held = holdout_mask(audited["user_id"], 0.3, seed=3)
    assert 0 < held.sum() < len(audited)
    assert len(trained) > 20
    pd.testing.assert_frame_equal(trained, audited[~held].reset_index(drop=True))
    trained_labels = purchases_after_cuts(events, trained, validation, settings.eval_days)
    audited_labels = purchases_after_cuts(events, audited, validation, settings.eval_days)
    assert trained_labels == {u: audited_labels[u] for u in trained["user_id"] if u in audited_labels}
    assert set(trained_labels) <= set(trained["user_id"])


def test_run_training_and_the_audit_build_candidates_with_the_same_function() -> None:
    import ast
    import inspect

    from tasks.membership import record_membership_losses
    from tasks.training import run_training

    def calls(function: object) -> list[str]:
        tree = ast.parse(inspect.getsource(function))  # type: ignore[arg-type]
        return [
            ast.unparse(node)
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id
            in {"training_candidates", "per_user_cuts", "drop_held_out", "purchases_after_cuts"}
        ]

    assert calls(run_training) == [
        "training_candidates(settings, events, cuts.validation, source=data.state_rows)",
        # the served refit (SHOPREC_TRAIN_REFIT): the same function at the data's end, from the pin too
        "training_candidates(settings, events, cuts.as_of, source=data.state_rows)",
    ]
    assert calls(record_membership_losses) == [
        "training_candidates(settings, events, validation, with_held_out=True, source=data.state_rows)"
    ]


def test_split_members_never_counts_a_user_who_trained_as_a_non_member() -> None:
    users = [f"u{i}" for i in range(300)]
    held = holdout_mask(users, 0.5, seed=7)
    trained = [u for u, h in zip(users, held, strict=True) if not h] + [users[int(np.argmax(held))]]
    split = split_members(users, trained, 0.5, seed=7)
    assert set(split.members) == set(trained)
    assert set(split.nonmembers) == {u for u, h in zip(users, held, strict=True) if h} - set(trained)


def test_per_user_losses_are_each_users_training_loss_on_fixed_negatives() -> None:
    torch.manual_seed(0)
    model = build_model(_catalog(), dim=8, hidden=16)
    examples = _examples(9)
    losses = per_user_losses(model, examples, draws=1, seed=5, batch_size=4)
    replay = copy.copy(examples)
    replay.generator = torch.Generator().manual_seed(5_000)
    criterion = UserSoftmaxLoss(reduction="none")
    with torch.no_grad():
        expected = []
        for row in range(len(examples)):
            features, history, candidates, target = (t.unsqueeze(0) for t in replay[row])
            expected.append(float(criterion(model(features, history, candidates), target)[0]))
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


def test_per_user_losses_are_reproducible_and_leave_the_examples_generator_alone() -> None:
    torch.manual_seed(0)
    model = build_model(_catalog(), dim=8, hidden=16)
    examples = _examples(9)
    before = examples.generator.get_state()
    first = per_user_losses(model, examples, draws=3, seed=1)
    second = per_user_losses(model, examples, draws=3, seed=1)
    np.testing.assert_array_equal(first, second)
    assert torch.equal(examples.generator.get_state(), before)


def test_per_user_losses_of_an_opacus_trained_model_are_those_of_its_weights() -> None:
    torch.manual_seed(0)
    model = build_model(_catalog(), dim=8, hidden=16)
    examples = _examples(20)
    train(model, examples, TrainConfig(epochs=1, batch_size=10, noise_multiplier=1.0), delta=1e-3)
    clean = build_model(_catalog(), dim=8, hidden=16)
    clean.load_state_dict(model.state_dict())
    np.testing.assert_allclose(
        per_user_losses(model, examples, draws=2), per_user_losses(clean, examples, draws=2), rtol=1e-6
    )
