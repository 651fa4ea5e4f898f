"""train_model with the DP co-occurrence release on (issue 17 item 2), across machines as in issue 16.

The shop and the machines are those of tests/integration/test_train_register_two_machines.py: A trains,
C retries the training task, B registers. With ``SHOPREC_COOC_ENABLED`` the run reserves a third ledger
charge (``dp_cooccurrence``, OpenDP discrete Gaussian) before drawing, the retry reads the release
back instead of drawing again, the model artifact carries the behaviour vectors its item tower reads
(it scores from the artifact alone), registration commits the charge and the privacy statement lists
the release.
"""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import pytest
from helpers_settings import only_shoprec_env

pytestmark = pytest.mark.integration

RUN_KEY = "cooccurrence-1"


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tasks.artifacts import fetch
    from tasks.config import get_settings
    from tasks.embeddings import tiny_random_encoder
    from tasks.feast_store import apply_definitions
    from tasks.features import compute_features
    from tasks.model import load_recommender
    from tasks.registry import register_and_gate
    from tasks.training import run_training
    from tasks.training_data import pin_training_data
    from tests.integration.test_train_recommender_dag import _write_lake

    root = tmp_path_factory.mktemp("cooc")
    home_a = root / "a" / "shoprec"
    shared = {
        "SHOPREC_ARTIFACT_STORE_URL": (root / "store").as_uri(),
        "SHOPREC_MLFLOW_TRACKING_URI": f"sqlite:///{home_a / 'mlflow' / 'mlflow.db'}",
        "SHOPREC_LEDGER_URL": f"sqlite:///{home_a / 'privacy' / 'ledger.db'}",
        "SHOPREC_LEDGER_KEY": "cooccurrence-test-ledger-key",
        "SHOPREC_FEAST_REGISTRY_URL": f"sqlite:///{home_a / 'feast' / 'registry.db'}",
        "SHOPREC_TRAIN_STEPS": "8",
        "SHOPREC_COOC_ENABLED": "1",
        "SHOPREC_COOC_DIM": "16",
        "SHOPREC_COOC_CAP_PER_USER": "10",
        "SHOPREC_COOC_MAX_ITEMS": "60",  # the shop has 80 items: the top 60 by DP popularity
    }
    homes = {name: root / name / "shoprec" for name in ("a", "b", "c")}
    out: dict[str, Any] = {"homes": homes}
    with pytest.MonkeyPatch.context() as mp:
        only_shoprec_env(mp, {**shared, "SHOPREC_HOME": str(homes["a"])})
        a = get_settings()
        compute_features(a, _write_lake(a), encoder=tiny_random_encoder(seed=0, dim=32))
        apply_definitions(a)
        pinned = pin_training_data(a, RUN_KEY)  # the pin_training_data task
        out["first"] = run_training(a, run_key=RUN_KEY, training_data_uri=pinned.uri).to_dict()
        out["first_model"] = load_recommender(fetch(a, out["first"]["model_uri"]))
        shutil.rmtree(a.models_dir)

        only_shoprec_env(mp, {**shared, "SHOPREC_HOME": str(homes["c"])})
        c = get_settings()
        out["retry"] = run_training(c, run_key=RUN_KEY, training_data_uri=pinned.uri).to_dict()
        out["retry_model"] = load_recommender(fetch(c, out["retry"]["model_uri"]))

        only_shoprec_env(mp, {**shared, "SHOPREC_HOME": str(homes["b"])})
        b = get_settings()
        out["registration"] = register_and_gate(b, out["retry"]).to_dict()
        out["b"] = b
    return out


def test_the_release_is_charged_on_the_ledger_before_it_is_drawn_and_once(machines: dict[str, Any]) -> None:
    from tasks.privacy import DiscreteGaussianCountMechanism
    from tasks.privacy.accounting import mechanism_kind
    from tasks.privacy.ledger_key import open_ledger

    first, retry, b = machines["first"], machines["retry"], machines["b"]
    assert first["cooccurrence_charge_id"] is not None
    assert retry["cooccurrence_charge_id"] == first["cooccurrence_charge_id"]
    ledger = open_ledger(b)
    try:
        charge = ledger.charge(int(first["cooccurrence_charge_id"]))
        run_charges = [c for c in ledger.charges(b.privacy_scope) if c.run_id == RUN_KEY]
    finally:
        ledger.close()
    assert charge.purpose == "dp_cooccurrence"
    assert mechanism_kind(charge.mechanism) == "discrete_gaussian_count"
    assert isinstance(charge.mechanism, DiscreteGaussianCountMechanism)
    assert charge.mechanism.releases == 1
    assert charge.mechanism.l2_sensitivity == pytest.approx(np.sqrt(10 * 11 / 2))
    assert charge.mechanism.rho == pytest.approx(1 / (2 * b.cooc_noise_multiplier**2))
    assert charge.unit == "user"
    assert charge.epsilon > 0
    assert sorted(c.purpose for c in run_charges) == ["dp_cooccurrence", "dp_popularity", "train_recommender"]
    assert all(str(c.status) == "committed" for c in run_charges)
    assert {c.model_version for c in run_charges} == {machines["registration"]["version"]}


def test_the_retry_reads_the_same_release_and_the_model_carries_its_vectors(machines: dict[str, Any]) -> None:
    first, retry = machines["first_model"], machines["retry_model"]
    assert first.catalog.behaviour is not None
    assert retry.catalog.behaviour is not None
    assert first.catalog.behaviour.shape == (first.catalog.n_items, 16)
    np.testing.assert_array_equal(retry.catalog.behaviour, first.catalog.behaviour)  # no second draw
    assert first.model.config.text_dim == 32 + 16  # title vectors and behaviour vectors
    outside = ~np.abs(first.catalog.behaviour).any(axis=1)
    assert int(outside.sum()) == first.catalog.n_items - 60  # outside the domain: zero vectors
    # the item tower reads the vectors from the model itself (its input buffer), not from the lake
    inputs = retry.model.item_text[1:, 32:].numpy()
    np.testing.assert_array_equal(inputs, retry.catalog.behaviour)


def test_the_privacy_statement_lists_the_release(machines: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    b = machines["b"]
    client = MlflowClient(
        tracking_uri=b.resolved_mlflow_tracking_uri, registry_uri=b.resolved_mlflow_registry_uri
    )
    version = client.get_model_version(b.registered_model_name, machines["registration"]["version"])
    listed = version.tags["privacy.count_mechanisms"].split(" | ")
    assert len(listed) == 2
    assert any("(dp_cooccurrence)" in line and "OpenDP discrete Gaussian" in line for line in listed)
    assert any("(dp_popularity)" in line for line in listed)
    # the loss of everything the version ships, composed by the ledger accountant
    shipped = float(version.tags["privacy.epsilon_with_counts"])
    assert shipped > float(version.tags["privacy.epsilon"])


def test_the_ledger_with_the_cooccurrence_charge_verifies_independently(machines: dict[str, Any]) -> None:
    from tasks.privacy.verify import verify_settings

    result = verify_settings(machines["b"])
    assert result.ok, result.problems
