"""Attack on the DP co-occurrence charge of train_model: a retry that draws less noise than was charged.

The first attempt reserves the ``dp_cooccurrence`` charge (noise multiplier 2) and dies before its
release is put in the artifact store (a killed worker, an OOM).  Before the retry the worker's
``SHOPREC_COOC_NOISE_MULTIPLIER`` says 0.05 (a redeploy, another worker's stack.env).  The retry finds
the reserved charge (:func:`tasks.privacy.policy.active_charge`) and must not release under it with
any other mechanism than the one the ledger holds: every draw the run makes is at the charged scale,
and a retry whose settings disagree with the charge is refused in one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers_settings import only_shoprec_env

pytestmark = pytest.mark.integration

RUN_KEY = "cooc-retry-attack-1"


class _AttemptDied(RuntimeError):
    pass


def test_a_retry_cannot_release_under_the_charge_with_less_noise(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import tasks.privacy.cooccurrence as cooccurrence_module
    import tasks.training as training
    from tasks.config import get_settings
    from tasks.embeddings import tiny_random_encoder
    from tasks.feast_store import apply_definitions
    from tasks.features import compute_features
    from tasks.privacy.ledger_key import open_ledger
    from tasks.training_data import pin_training_data
    from tests.integration.test_train_recommender_dag import _write_lake

    root = tmp_path_factory.mktemp("cooc-retry")
    servers = root / "servers"
    servers.mkdir()
    shared = {
        "SHOPREC_ARTIFACT_STORE_URL": (root / "store").as_uri(),
        "SHOPREC_MLFLOW_TRACKING_URI": f"sqlite:///{servers / 'mlflow.db'}",
        "SHOPREC_LEDGER_URL": f"sqlite:///{servers / 'ledger.db'}",
        "SHOPREC_LEDGER_KEY": "cooc-retry-attack-ledger-key",
        "SHOPREC_TRAIN_STEPS": "8",
        "SHOPREC_COOC_ENABLED": "1",
        "SHOPREC_COOC_DIM": "16",
        "SHOPREC_COOC_CAP_PER_USER": "10",
        "SHOPREC_COOC_NOISE_MULTIPLIER": "2.0",
    }
    drawn: list[float] = []
    real_noisy_counts = cooccurrence_module.noisy_counts

    def spy(exact: np.ndarray, sigma: float, l2_sensitivity: float) -> np.ndarray:
        drawn.append(float(sigma))
        return real_noisy_counts(exact, sigma, l2_sensitivity)

    def died(*args: Any, **kwargs: Any) -> Any:
        raise _AttemptDied("the worker died before the release was put in the store")

    with pytest.MonkeyPatch.context() as mp:
        only_shoprec_env(mp, {**shared, "SHOPREC_HOME": str(root / "d" / "shoprec")})
        d = get_settings()
        compute_features(d, _write_lake(d), encoder=tiny_random_encoder(seed=0, dim=32))
        apply_definitions(d)
        pinned = pin_training_data(d, RUN_KEY)

        only_shoprec_env(mp, {**shared, "SHOPREC_HOME": str(root / "a" / "shoprec")})
        mp.setattr(training, "cooccurrence_release", died)
        with pytest.raises(_AttemptDied):
            training.run_training(get_settings(), run_key=RUN_KEY, training_data_uri=pinned.uri)
        mp.undo()

    ledger = open_ledger(d)
    try:
        (charge,) = [c for c in ledger.charges(d.privacy_scope) if c.purpose == "dp_cooccurrence"]
    finally:
        ledger.close()
    assert str(charge.status) == "reserved"

    with pytest.MonkeyPatch.context() as mp:
        only_shoprec_env(
            mp,
            {**shared, "SHOPREC_HOME": str(root / "c" / "shoprec"), "SHOPREC_COOC_NOISE_MULTIPLIER": "0.05"},
        )
        mp.setattr(cooccurrence_module, "noisy_counts", spy)
        refused: Exception | None = None
        try:
            training.run_training(get_settings(), run_key=RUN_KEY, training_data_uri=pinned.uri)
        except RuntimeError as exc:
            refused = exc
    # every co-occurrence draw under the charge is at the scale the ledger was charged for
    assert drawn == [charge.mechanism.scale] * len(drawn), (drawn, charge.mechanism.scale)
    assert refused is not None
    assert "dp_cooccurrence" in str(refused)
    assert "\n" not in str(refused)

    # with the run's own settings back, the retry releases under the charge, at its scale, once
    with pytest.MonkeyPatch.context() as mp:
        only_shoprec_env(mp, {**shared, "SHOPREC_HOME": str(root / "c" / "shoprec")})
        mp.setattr(cooccurrence_module, "noisy_counts", spy)
        manifest = training.run_training(get_settings(), run_key=RUN_KEY, training_data_uri=pinned.uri)
    assert manifest.cooccurrence_charge_id == charge.id
    assert drawn == [charge.mechanism.scale]
