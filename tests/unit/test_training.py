"""Unit tests of user-level DP-SGD: per-user clipping, accounting, loss, resume (tiny tensors)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_settings import tiny_catalog

from tasks.catalog import ItemCatalog
from tasks.dataset import per_user_cuts, purchases_after_cuts
from tasks.features import user_state_at
from tasks.model import build_model
from tasks.privacy.accounting import (
    LEDGER_ACCOUNTANT,
    DpSgdMechanism,
    calibrate_noise,
    compose_epsilon,
    rdp_epsilon,
    sampled_gaussians,
)
from tasks.training import TrainConfig, UserExamples, UserSoftmaxLoss, make_private_trainer, train

N_ITEMS = 30


def _catalog(seed: int = 0) -> ItemCatalog:
    return tiny_catalog(N_ITEMS, seed)


def _examples(n_users: int, seed: int = 0, cap_k: int = 6) -> UserExamples:
    rng = np.random.default_rng(seed)
    history = np.zeros((n_users, 5), dtype=np.int64)
    positives = []
    for u in range(n_users):
        n_events = 1 + (u * 7) % 25  # from 1 to 25 purchases: heavy and light users
        items = rng.integers(1, N_ITEMS + 1, n_events)
        history[u, : min(5, n_events)] = items[:5]
        positives.append(items)
    return UserExamples(
        rng.normal(size=(n_users, 12)).astype(np.float32),
        history,
        positives,
        n_items=N_ITEMS,
        cap_k=cap_k,
        n_negatives=10,
        seed=seed,
    )


def _tiny_model(item_id_dim: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(_catalog(), dim=8, hidden=16, item_id_dim=item_id_dim)


def _tower_model(item_tower: str, user_tower: str, user_features: bool) -> torch.nn.Module:
    if item_tower == "mlp" and user_tower == "mean" and user_features:
        return _tiny_model()
    torch.manual_seed(0)
    model = build_model(
        _catalog(),
        hidden=16,
        item_tower=item_tower,  # type: ignore[arg-type]
        user_tower=user_tower,  # type: ignore[arg-type]
        user_features=user_features,
        max_history=5,
    )
    if user_tower == "attention":  # away from the uniform start, so every attention layer has a gradient
        torch.nn.init.normal_(model.attn_score.weight)
    return model


TOWERS = [
    ("mlp", "mean", True),
    ("text", "mean", False),
    ("residual", "attention", False),
    ("text", "attention", True),
]


@pytest.mark.parametrize(("item_tower", "user_tower", "user_features"), TOWERS)
def test_each_users_gradient_contribution_is_clipped_to_max_grad_norm_whatever_their_event_count(
    item_tower: str, user_tower: str, user_features: bool
) -> None:
    """Record every sampled user's true gradient (plain autograd, one user at a time) and check that
    the trainer's clipping (Book-Keeping, tasks.dp_clipping; the same as Opacus' ghost clipping,
    tests/unit/test_dp_clipping.py) measures its norm correctly and adds at most ``max_grad_norm`` of
    it, for every tower the pipeline can build (the attention pooling included)."""
    examples = _examples(8)
    batch = [torch.stack(t) for t in zip(*(examples[i] for i in range(len(examples))), strict=True)]
    model = _tower_model(item_tower, user_tower, user_features)
    reference = copy.deepcopy(model)
    config = TrainConfig(max_grad_norm=0.05, noise_multiplier=0.0, batch_size=8)
    module, optimizer, criterion, _, _ = make_private_trainer(model, examples, config)

    optimizer.zero_grad()
    criterion(module(*batch[:3]), batch[3]).backward()
    summed = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    ghost_norms = module.per_sample_gradient_norms.detach()

    per_user = []
    for u in range(len(examples)):
        reference.zero_grad()
        loss = UserSoftmaxLoss(reduction="none")(
            reference(*(t[u : u + 1] for t in batch[:3])), batch[3][u : u + 1]
        )
        loss.sum().backward()
        per_user.append(torch.cat([p.grad.flatten() for p in reference.parameters() if p.requires_grad]))
    true_norms = torch.stack([g.norm() for g in per_user])
    coef = (config.max_grad_norm / (true_norms + 1e-6)).clamp(max=1.0)
    contributions = [c * g for c, g in zip(coef, per_user, strict=True)]

    torch.testing.assert_close(ghost_norms, true_norms, rtol=1e-3, atol=1e-6)
    assert all(float(c.norm()) <= config.max_grad_norm * (1 + 1e-4) for c in contributions)
    assert float(true_norms.min()) > config.max_grad_norm  # every user, light or heavy, was clipped
    torch.testing.assert_close(summed, torch.stack(contributions).sum(dim=0), rtol=1e-3, atol=1e-6)


def test_user_softmax_loss_ignores_padding_and_returns_one_loss_per_user() -> None:
    scores = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.5, 9.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, -1.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0]])
    per_user = UserSoftmaxLoss(reduction="none")(scores, target)
    expected0 = -2.0 + torch.logsumexp(torch.tensor([2.0, 1.0, -1.0]), 0)
    expected1 = -0.5 + torch.logsumexp(torch.tensor([0.5, 0.0, 0.0]), 0)
    torch.testing.assert_close(per_user, torch.stack([expected0, expected1]))


def test_calibrate_noise_fits_the_epsilon_left_after_the_other_mechanisms() -> None:
    delta, q, steps = 1e-4, 0.05, 200
    alone = calibrate_noise(4.0, delta, q, steps)
    with_popularity = calibrate_noise(4.0, delta, q, steps, existing=sampled_gaussians([(5.0, 1.0, 1)]))
    assert rdp_epsilon([(alone, q, steps)], delta) <= 4.0
    assert rdp_epsilon([(5.0, 1.0, 1), (with_popularity, q, steps)], delta) <= 4.0
    assert rdp_epsilon([(alone - 0.01, q, steps)], delta) > 4.0
    assert with_popularity > alone


def test_private_training_reports_the_accountants_epsilon_for_its_steps() -> None:
    examples = _examples(40)
    config = TrainConfig(epochs=2, batch_size=10, noise_multiplier=1.1, max_grad_norm=1.0)
    result = train(_tiny_model(), examples, config, delta=1e-3)
    assert result.steps == 8
    assert result.sample_rate == pytest.approx(0.25)
    assert result.epsilon == pytest.approx(rdp_epsilon([(1.1, 0.25, 8)], 1e-3), rel=1e-6)
    assert result.accountant == LEDGER_ACCOUNTANT


def test_the_trainers_epsilon_is_the_ledgers_for_the_same_mechanism() -> None:
    """One accountant: what train() reports is what the ledger charges for the same DP-SGD run."""
    config = TrainConfig(epochs=3, batch_size=8, noise_multiplier=0.9, max_grad_norm=1.0)
    result = train(_tiny_model(), _examples(40), config, delta=1e-4)
    mechanism = DpSgdMechanism(0.9, result.sample_rate, result.steps, clip_norm=1.0, cap_k=config.cap_k)
    assert result.steps == 15
    assert result.epsilon == pytest.approx(compose_epsilon([mechanism], 1e-4), rel=1e-12)


def test_non_private_training_is_reproducible_with_the_same_seed() -> None:
    config = TrainConfig(private=False, epochs=2, batch_size=10)
    first, second = _tiny_model(), _tiny_model()
    train(first, _examples(30), config)
    train(second, _examples(30), config)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_resumed_private_run_keeps_the_accounting_of_the_epochs_already_done(tmp_path) -> None:
    checkpoint = tmp_path / "ckpt.pt"
    examples = _examples(40)
    train(
        _tiny_model(), examples, TrainConfig(epochs=1, batch_size=10), delta=1e-3, checkpoint_path=checkpoint
    )
    resumed = train(
        _tiny_model(), examples, TrainConfig(epochs=3, batch_size=10), delta=1e-3, checkpoint_path=checkpoint
    )
    assert resumed.resumed_from_epoch == 1
    assert resumed.epsilon == pytest.approx(rdp_epsilon([(1.0, 0.25, 12)], 1e-3), rel=1e-6)


def test_user_state_at_uses_only_events_before_the_cut() -> None:
    ts = pd.to_datetime(["2024-01-01", "2024-01-05", "2024-01-09", "2024-01-20"], utc=True)
    events = pd.DataFrame(
        {
            "event_id": ["e1", "e2", "e3", "e4"],
            "user_id": ["u", "u", "u", "u"],
            "item_id": ["a", "b", "a", "c"],
            "event_type": ["purchase", "view", "purchase", "purchase"],
            "event_timestamp": ts,
            "quantity": [1, 1, 2, 1],
            "unit_price": [2.0, None, 2.0, 5.0],
            "session_id": ["s1", "s2", "s3", "s4"],
        }
    )
    state = user_state_at(events, pd.Timestamp("2024-01-10", tz="UTC"), history_length=5).iloc[0]
    assert state["recent_items"] == ["a", "b"]
    assert dict(zip(state["purchased_items"], state["purchased_counts"], strict=True)) == {"a": 2}
    assert state["purchases_7d"] == 1
    assert state["purchases_30d"] == 2
    assert state["spend_30d"] == pytest.approx(6.0)
    assert state["days_since_last_purchase"] == 1


def _purchases(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [u for u, _, _ in rows],
            "item_id": [i for _, i, _ in rows],
            "event_type": "purchase",
            "event_timestamp": pd.to_datetime([t for _, _, t in rows], utc=True),
        }
    )


def test_each_users_cut_starts_the_horizon_that_ends_with_their_last_day_before_the_end() -> None:
    events = _purchases(
        [
            ("a", "old", "2024-01-01 10:00"),
            ("a", "y", "2024-01-05 10:00"),
            ("a", "z", "2024-01-06 10:00"),
            ("b", "x", "2024-01-02 09:00"),
            ("b", "late", "2024-01-09 09:00"),  # after the end: b has one day before it, no example
            ("c", "p", "2024-01-05 08:00"),  # all of c's days in one horizon: cut at the middle day
            ("c", "q", "2024-01-06 08:00"),
            ("c", "r", "2024-01-07 08:00"),
        ]
    )
    end = pd.Timestamp("2024-01-08", tz="UTC")
    cuts = per_user_cuts(events, end, horizon_days=3)
    assert cuts.set_index("user_id")["cut"].to_dict() == {
        "a": pd.Timestamp("2024-01-04", tz="UTC"),  # last day 01-06, horizon 01-04..01-06
        "c": pd.Timestamp("2024-01-06", tz="UTC"),
    }
    assert purchases_after_cuts(events, cuts, end, horizon_days=3) == {"a": ["y", "z"], "c": ["q", "r"]}
    with pytest.raises(ValueError, match="at least one day"):
        per_user_cuts(events, end, horizon_days=0)


def test_labels_are_only_the_items_in_cut_to_cut_plus_horizon() -> None:
    """A user's labels are what they bought in ``[cut, cut + horizon)``: not before the cut (their
    state), not after the horizon (a later window), not at or after the end (validation)."""
    events = _purchases(
        [
            ("a", "before", "2024-01-01 23:59"),
            ("a", "first", "2024-01-02 00:00"),
            ("a", "inside", "2024-01-04 23:59"),
            ("a", "after", "2024-01-05 00:00"),
            ("b", "in", "2024-01-03 12:00"),
            ("b", "at_end", "2024-01-04 00:00"),
        ]
    )
    cuts = pd.DataFrame(
        {"user_id": ["a", "b"], "cut": pd.to_datetime(["2024-01-02", "2024-01-03"], utc=True)}
    )
    labels = purchases_after_cuts(events, cuts, pd.Timestamp("2024-01-04", tz="UTC"), horizon_days=3)
    assert labels == {"a": ["first"], "b": ["in"]}
    labels = purchases_after_cuts(events, cuts, pd.Timestamp("2024-02-01", tz="UTC"), horizon_days=3)
    assert labels == {"a": ["first", "inside"], "b": ["at_end", "in"]}


def test_on_random_histories_every_label_lies_in_its_users_window_and_every_user_has_a_history() -> None:
    rng = np.random.default_rng(4)
    start, end, horizon = pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-03-01", tz="UTC"), 7
    rows = [
        (f"u{u}", f"i{rng.integers(40)}", str(start + pd.Timedelta(minutes=int(m))))
        for u in range(60)
        for m in rng.integers(0, 70 * 24 * 60, rng.integers(1, 15))
    ]
    events = _purchases(rows)
    cuts = per_user_cuts(events, end, horizon)
    labels = purchases_after_cuts(events, cuts, end, horizon)
    assert len(cuts) > 30
    assert set(labels) == set(cuts["user_id"])  # every cut user has a label: their last day is in the window
    before_end = events[events["event_timestamp"] < end]
    for user, cut in cuts.itertuples(index=False):
        mine = before_end[before_end["user_id"] == user]
        assert (mine["event_timestamp"] < cut).any()  # a history to learn from
        window = mine[
            (mine["event_timestamp"] >= cut) & (mine["event_timestamp"] < cut + pd.Timedelta(days=7))
        ]
        assert sorted(labels[user]) == sorted(set(window["item_id"]))
        if (mine["event_timestamp"] < mine["event_timestamp"].max().floor("D") - pd.Timedelta(days=6)).any():
            assert cut == mine["event_timestamp"].max().floor("D") - pd.Timedelta(days=6)


def test_each_epoch_draws_the_kept_positives_afresh_without_favouring_any_by_order() -> None:
    """cap_k of a user's 12 positives, drawn every time the user is sampled: over many draws every
    positive is kept about equally often (chi-square), not the first cap_k of the label order."""
    positives = np.arange(1, 13)
    examples = UserExamples(
        np.zeros((1, 2), np.float32),
        np.zeros((1, 3), np.int64),
        [positives],
        n_items=N_ITEMS,
        cap_k=3,
        n_negatives=4,
        seed=11,
    )
    draws = [examples[0][2][:3] for _ in range(4000)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:3])  # redrawn every epoch
    assert all(len(set(d.tolist())) == 3 and set(d.tolist()) <= set(positives) for d in draws)
    counts = np.bincount(torch.cat(draws).numpy(), minlength=13)[1:]
    expected = 4000 * 3 / 12
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 45.0, counts  # 11 degrees of freedom: P(chi2 > 45) < 1e-5 for a uniform draw
    # a user with fewer positives than cap_k keeps all of them, padded
    few = UserExamples(
        np.zeros((1, 2), np.float32),
        np.zeros((1, 3), np.int64),
        [np.array([5, 2])],
        n_items=N_ITEMS,
        cap_k=4,
        n_negatives=2,
        seed=0,
    )[0]
    assert sorted(few[2][:4].tolist()) == [0, 0, 2, 5]
    assert sorted(few[3][:4].tolist()) == pytest.approx([-1.0, -1.0, 1.0, 1.0])


def test_a_sampled_negative_that_is_one_of_the_users_positives_is_masked() -> None:
    """Negatives are drawn from the whole catalog; one that the user bought in the window (kept in this
    draw or not) gets target -1, so the loss never counts it as a negative."""
    examples = UserExamples(
        np.zeros((1, 2), np.float32),
        np.zeros((1, 3), np.int64),
        [np.array([1, 2, 3])],
        n_items=5,
        cap_k=1,
        n_negatives=200,
        seed=0,
    )
    _, _, candidates, target = examples[0]
    neg, neg_target = candidates[1:], target[1:]
    assert target[0].item() == pytest.approx(1.0)
    assert set(neg[neg_target == -1].tolist()) == {1, 2, 3}
    assert set(neg[neg_target == 0].tolist()) == {4, 5}
    # the loss ignores the masked candidates whatever their score
    scores = torch.randn(1, len(candidates))
    loss = UserSoftmaxLoss()(scores, target.unsqueeze(0))
    pushed = scores.clone()
    pushed[0, 1:][neg_target == -1] = 1e4
    assert torch.allclose(UserSoftmaxLoss()(pushed, target.unsqueeze(0)), loss)


def test_a_retried_run_reads_its_popularity_releases_back_instead_of_releasing_again(tmp_path: Path) -> None:
    """One ledger charge, one set of releases: a second attempt of the run, here on another machine
    (its own local folder, the same artifact store), must not draw new noise."""
    from tasks.artifacts import ArtifactStore
    from tasks.training import released_once

    calls: list[int] = []

    def release() -> list[np.ndarray]:
        calls.append(1)
        return [np.random.default_rng().normal(size=5) for _ in range(3)]

    store = ArtifactStore((tmp_path / "store").as_uri())
    key = "runs/r1/dp_popularity-charge7.npz"
    path = tmp_path / "machine-a" / "run" / "dp_popularity-charge7.npz"
    first = released_once(store, key, path, release)
    second = released_once(store, key, tmp_path / "machine-b" / "run" / "dp_popularity-charge7.npz", release)
    assert len(calls) == 1
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert len(second) == 3
    assert path.stat().st_mode & 0o777 == 0o600
    assert list(path.parent.iterdir()) == [path]  # no staging file left behind


def test_when_two_attempts_release_the_first_stored_noise_wins(tmp_path: Path) -> None:
    """An attempt that drew its noise after another attempt stored its releases uses the stored ones."""
    from tasks.artifacts import ArtifactStore
    from tasks.training import released_once

    store = ArtifactStore((tmp_path / "store").as_uri())
    key = "runs/r1/dp_popularity-charge7.npz"
    stored = [np.full(4, 1.0)]

    def release_racing() -> list[np.ndarray]:  # the other attempt stores its releases meanwhile
        released_once(store, key, tmp_path / "other" / "r.npz", lambda: stored)
        return [np.full(4, 2.0)]

    got = released_once(store, key, tmp_path / "mine" / "r.npz", release_racing)
    assert np.array_equal(got[0], stored[0])


def test_the_dp_schedule_samples_at_the_settings_rate_for_about_the_settings_steps() -> None:
    from tasks.training import dp_schedule

    for n_users, rate, steps in ((4_000, 0.25, 160), (3_517, 0.25, 160), (300, 0.1, 50), (7, 0.5, 3)):
        batch, epochs = dp_schedule(n_users, rate, steps)
        config = TrainConfig(batch_size=batch, epochs=epochs)
        assert config.sample_rate(n_users) == pytest.approx(rate, rel=0.35)
        per_epoch = round(1 / config.sample_rate(n_users))
        assert abs(config.steps(n_users) - steps) <= per_epoch / 2  # rounded to whole epochs
    assert dp_schedule(4_000, 0.25, 160) == (1_000, 40)
    with pytest.raises(ValueError, match="no DP-SGD schedule"):
        dp_schedule(0, 0.25, 160)


def test_fit_model_builds_the_settings_architecture_and_the_twin_uses_its_own_lr(tmp_path) -> None:
    from tasks.config import Settings
    from tasks.training import fit_model, train_config, twin_config

    settings = Settings(
        home=tmp_path,
        train_item_tower="text",
        train_user_tower="attention",
        train_hidden=16,
        history_length=5,
    )
    examples = _examples(40)
    config = train_config(settings, n_users=len(examples))
    twin = twin_config(settings, config)
    assert (twin.private, twin.lr, twin.batch_size, twin.epochs) == (
        False,
        settings.train_lr_nonprivate,
        config.batch_size,
        config.epochs,
    )
    model, result = fit_model(settings, _catalog(), examples, dataclasses.replace(twin, epochs=1))
    assert (model.config.item_tower, model.config.user_tower, model.config.user_features) == (
        "text",
        "attention",
        False,
    )
    assert model.config.temperature == settings.train_temperature
    assert not result.private
    assert len(result.epoch_losses) == 1


def test_one_charge_bounds_the_validation_window_training_and_the_refit_together() -> None:
    """The run's DP-SGD charge (largest sample rate, summed steps, one noise multiplier) is never
    below the composition of its two trainings under the ledger's accountant."""
    from tasks.training import charged_schedule

    for n1, n2, sigma in ((3_500, 3_900, 2.1), (300, 340, 1.0), (40, 90, 0.8)):
        first, second = (
            TrainConfig(batch_size=max(1, n1 // 4), epochs=40),
            TrainConfig(batch_size=max(1, n2 // 3), epochs=30),
        )
        q, steps = charged_schedule([(first, n1), (second, n2)])
        assert q == max(first.sample_rate(n1), second.sample_rate(n2))
        assert steps == first.steps(n1) + second.steps(n2)
        both = [
            (sigma, first.sample_rate(n1), first.steps(n1)),
            (sigma, second.sample_rate(n2), second.steps(n2)),
        ]
        assert rdp_epsilon(both, 1e-5) <= rdp_epsilon([(sigma, q, steps)], 1e-5) + 1e-12
    with pytest.raises(ValueError, match="no training"):
        charged_schedule([])
