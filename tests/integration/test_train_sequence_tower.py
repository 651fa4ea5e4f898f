"""The sequence-aware user tower (attention pooling over the ordered recent items) trained with
user-level DP-SGD through Opacus, its charge reserved on a real (SQLite) privacy ledger first.

A small synthetic shop (DAG_TEST_SHOP), the pipeline's own example construction
(:func:`tasks.dataset.per_user_cuts`, :func:`tasks.training.training_examples`), schedule
(:func:`tasks.training.train_config`) and fit (:func:`tasks.training.fit_model`) with
``train_user_tower="attention"``; the noise multiplier calibrated against the ledger's budget
(:func:`tasks.privacy.ledger.calibrate_noise_multiplier`), the DP-SGD mechanism reserved before
training and committed after it. Each test asserts one outcome of that one run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_shops import DAG_TEST_SHOP

from tasks.catalog import build_item_catalog
from tasks.config import Settings
from tasks.dataset import per_user_cuts, purchases_after_cuts
from tasks.features import user_state_at
from tasks.privacy.accounting import LEDGER_ACCOUNTANT, DpSgdMechanism, compose_epsilon
from tasks.privacy.ledger import Ledger, calibrate_noise_multiplier
from tasks.privacy.verify import verify_ledger
from tasks.training import fit_model, train_config, training_examples

pytestmark = pytest.mark.integration

KEY = b"sequence-tower-test-key"
EPSILON = 4.0


def _shop(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    from tasks.sources.synthetic import generate

    landing = tmp_path / "landing"
    generate(DAG_TEST_SHOP, landing)
    events = pd.concat([pd.read_parquet(p) for p in sorted(landing.glob("date=*/events*.parquet"))])
    items = pd.concat([pd.read_parquet(p) for p in sorted(landing.glob("date=*/items*.parquet"))])
    events["event_timestamp"] = pd.to_datetime(events["event_timestamp"], utc=True)
    return events.reset_index(drop=True), items.drop_duplicates("item_id", keep="last")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("sequence")
    settings = Settings(
        home=tmp / "home",
        train_user_tower="attention",
        train_item_tower="text",
        train_steps=24,
        train_hidden=32,
        history_length=10,
    )
    events, items = _shop(tmp)
    rng = np.random.default_rng(0)  # public stand-in titles: random 16-d vectors
    embeddings = pd.DataFrame(
        {"item_id": items["item_id"], "embedding": list(rng.normal(size=(len(items), 16)))}
    )
    catalog = build_item_catalog(items, embeddings)
    end = events["event_timestamp"].max().normalize()
    user_cuts = per_user_cuts(events, end, 7)
    state = pd.concat(
        [
            user_state_at(events[events["user_id"].isin(set(g["user_id"]))], pd.Timestamp(cut), 10)
            for cut, g in user_cuts.groupby("cut")
        ],
        ignore_index=True,
    )
    state = state[state["recent_items"].map(len) > 0].sort_values("user_id").reset_index(drop=True)
    labels = purchases_after_cuts(events, user_cuts, end, 7)
    examples, users = training_examples(settings, state, labels, catalog)
    config = train_config(settings, n_users=len(examples))
    q, steps = config.sample_rate(len(examples)), config.steps(len(examples))
    delta = 1.0 / (10 * events["user_id"].nunique())
    url = f"sqlite:///{tmp / 'ledger.db'}"
    at = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    ledger = Ledger(url, key=KEY)
    try:
        ledger.ensure_budget("events", epsilon_cap=10.0, delta=delta * 10, period_days=365)
        noise = calibrate_noise_multiplier(
            ledger,
            scope="events",
            sample_rate=q,
            steps=steps,
            delta=delta,
            epsilon_target=EPSILON,
            at=at,
            max_noise_multiplier=settings.dp_max_noise_multiplier,
        )
        mechanism = DpSgdMechanism(noise, q, steps, clip_norm=config.max_grad_norm, cap_k=config.cap_k)
        charge = ledger.reserve(
            scope="events",
            run_id="sequence-tower",
            mechanism=mechanism,
            data_window=(at - dt.timedelta(days=60), at),
            n_users=int(events["user_id"].nunique()),
            code_version="test",
            data_hash="sha256:synthetic",
            purpose="train_recommender",
        )
        torch.manual_seed(0)
        untrained, _ = fit_model(
            settings, catalog, examples, dataclasses.replace(config, private=False, epochs=0)
        )
        model, result = fit_model(
            settings, catalog, examples, dataclasses.replace(config, noise_multiplier=noise), delta=delta
        )
        committed = ledger.commit(int(charge.id), model_version="1", artifact_uri="runs/sequence-tower")
    finally:
        ledger.close()
    return {
        "settings": settings,
        "examples": examples,
        "users": users,
        "config": config,
        "delta": delta,
        "charge": charge,
        "committed": committed,
        "model": model,
        "untrained": untrained,
        "result": result,
        "url": url,
        "at": at,
    }


def test_the_attention_tower_is_what_trained(run: dict[str, Any]) -> None:
    config = run["model"].config
    assert (config.user_tower, config.item_tower, config.max_history) == ("attention", "text", 10)
    assert len(run["examples"]) > 100  # one example per user of the shop


def test_training_ran_the_reserved_mechanism_and_spent_what_the_ledger_charged(run: dict[str, Any]) -> None:
    result, charge = run["result"], run["charge"]
    assert result.private
    assert (result.steps, result.sample_rate) == (charge.mechanism.steps, charge.mechanism.sample_rate)
    assert result.noise_multiplier == pytest.approx(charge.mechanism.noise_multiplier)
    assert result.accountant == LEDGER_ACCOUNTANT
    assert result.epsilon == pytest.approx(compose_epsilon([charge.mechanism], run["delta"]), rel=1e-9)
    assert result.epsilon <= EPSILON + 1e-6
    assert result.epsilon > EPSILON * 0.9  # calibrated to the target, not far below it


def test_the_noise_came_from_os_entropy_not_from_the_configuration(run: dict[str, Any]) -> None:
    assert run["config"].noise_seed is None
    assert not run["settings"].deterministic_noise_for_tests


def test_dp_sgd_moved_the_attention_away_from_the_uniform_start(run: dict[str, Any]) -> None:
    """The attention scores start at zero (uniform weights, the mean); DP-SGD's clipped, noised
    gradients reach them, so the trained pooling is no longer the mean."""
    model, untrained = run["model"], run["untrained"]
    assert float(untrained.attn_score.weight.detach().abs().sum()) == pytest.approx(0.0)
    assert float(model.attn_score.weight.detach().abs().sum()) > 0.0
    history = run["examples"].history[:50]
    with torch.no_grad():
        vectors = model.item_vectors(history)
        pooled = model.pool_history(vectors, history)
        mask = (history != 0).unsqueeze(-1).float()
        mean = (vectors * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    assert float((pooled - mean).norm(dim=1).max()) > 1e-4


def test_the_ledger_holds_the_committed_charge_and_verifies(run: dict[str, Any]) -> None:
    assert str(run["committed"].status) == "committed"
    check = verify_ledger(run["url"], key=KEY, at=run["at"])
    assert check.ok, check
