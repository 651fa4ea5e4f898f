"""MLflow registry round trip on the embedded profile (SQLite tracking + registry, local artifacts)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.catalog import BlendWeights, build_item_catalog
from tasks.config import Settings, get_settings
from tasks.model import Recommender, build_model

pytestmark = pytest.mark.integration


def _recommender() -> Recommender:
    torch.manual_seed(0)
    n = 12
    items = pd.DataFrame(
        {"item_id": [f"i{j:02d}" for j in range(n)], "category": ["a", "b", "c"] * 4, "price": 2.0}
    )
    rng = np.random.default_rng(0)
    emb = pd.DataFrame({"item_id": items["item_id"], "embedding": list(rng.normal(size=(n, 6)))})
    catalog = build_item_catalog(items, emb)
    popularity = np.arange(n, dtype=float)
    return Recommender(
        build_model(catalog, dim=8, hidden=16),
        catalog,
        weights=BlendWeights(repeat=8.0, popularity=0.5),
        popularity=popularity,
        history_length=5,
    )


def _user() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "purchases_30d": [2.0],
            "days_since_last_purchase": [4.0],
            "recent_items": [["i03", "i05"]],
            "purchased_items": [["i03"]],
            "purchased_counts": [[2]],
        }
    )


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Recommender, str]:
    """One registered, promoted version in this module's own SHOPREC_HOME (read by every test)."""
    from tasks.registry import apply_decision, decide_promotion, log_training

    shoprec_home = get_settings(home=tmp_path_factory.mktemp("registry") / "shoprec")
    rec = _recommender()
    model = log_training(
        shoprec_home,
        rec,
        run_key="run-1",
        params={"epochs": 1},
        metrics={"A_ndcg_at_10": 0.3},
        report={"x": 1},
    )
    decision = decide_promotion(
        challenger_version=model.version,
        challenger={"A": 0.3},
        champion_version=None,
        champion=None,
        baselines={"buy_again": {"A": 0.1}},
        privacy_problems=[],
        tolerance=0.01,
    )
    apply_decision(shoprec_home, decision)
    return shoprec_home, rec, model.version


def test_logging_is_idempotent_on_the_run_key(registered: tuple[Settings, Recommender, str]) -> None:
    from tasks.registry import log_training

    settings, rec, version = registered
    again = log_training(settings, rec, run_key="run-1", params={}, metrics={}, report={})
    assert again.version == version == "1"


def test_pyfunc_champion_returns_the_same_top_k_as_the_recommender(
    registered: tuple[Settings, Recommender, str],
) -> None:
    import mlflow

    settings, rec, _ = registered
    mlflow.set_tracking_uri(settings.resolved_mlflow_tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{settings.registered_model_name}@champion")
    out = model.predict(_user(), params={"k": 4})
    expected_ids, expected_scores = rec.recommend(_user(), 4)[0]
    assert list(out["item_ids"][0]) == expected_ids
    assert expected_ids[0] == "i03"  # the user's own repeat purchase comes first
    np.testing.assert_allclose(list(out["scores"][0]), expected_scores, rtol=1e-5)


def test_load_champion_gives_matrix_product_vectors_for_batch_scoring(
    registered: tuple[Settings, Recommender, str],
) -> None:
    from tasks.registry import load_champion

    settings, rec, version = registered
    champion, champion_version = load_champion(settings)
    assert champion_version == version
    assert champion.item_ids == rec.item_ids
    torch.testing.assert_close(champion.item_vectors(), rec.item_vectors())
    torch.testing.assert_close(champion.user_vectors(_user()), rec.user_vectors(_user()))


def test_gate_decision_is_written_to_the_version_tags(registered: tuple[Settings, Recommender, str]) -> None:
    from tasks.registry import version_tags

    settings, _, version = registered
    tags = version_tags(settings, version)
    assert tags["gate.decision"] == "promoted"
    assert "no champion yet" in tags["gate.reasons"]


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real ``mlflow server`` (one worker) on 127.0.0.1, stopped by its own process group."""
    from tasks.servers import local_server, mlflow_server

    command = mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts")
    with local_server(command, name="mlflow server", log_path=tmp_path / "server.log") as url:
        yield url


def test_a_version_registers_and_loads_through_an_mlflow_tracking_server(
    mlflow_server: str, tmp_path: Path
) -> None:
    """Production profile path: tracking and registry over HTTP (MLflow 3 needs the model id)."""
    from tasks.registry import alias_version, load_version, log_training

    settings = get_settings(home=tmp_path, mlflow_tracking_uri=mlflow_server)  # type: ignore[arg-type]
    rec = _recommender()
    model = log_training(
        settings, rec, run_key="server-run", params={"epochs": 1}, metrics={"A_ndcg_at_10": 0.3}, report={}
    )
    assert model.version == "1"
    assert alias_version(settings, "challenger") == "1"
    loaded = load_version(settings, "1")
    assert loaded.item_ids == rec.item_ids
