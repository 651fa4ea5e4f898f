"""train_model and register_and_gate as if on different machines (issue 16): nothing but URIs between them.

Three SHOPREC_HOME folders stand for three workers: A (the GPU worker that trains), C (the worker a
retry of the training task lands on) and B (the default worker that registers and records the
membership losses). They share what a deployment shares: the artifact store (a folder outside every
home), the MLflow tracking store, the privacy ledger (with its key, as SHOPREC_LEDGER_KEY) and the
Feast registry. The lake lives in A only, and A's run folder is deleted after training, so a task that
opened a worker-local path of another task, or read the lake instead of the run's pinned data, fails.

The flow runs twice: with the artifact store a folder (``file://``) and a bucket (``s3://``) of a real
S3 protocol server (moto on 127.0.0.1, reached through s3fs with SHOPREC_ARTIFACT_STORE_ENDPOINT_URL and
credentials from the environment, as a worker reaches MinIO or AWS S3).

The shop is the train_recommender DAG test's (400 users, 80 items, 35 days), trained for 2 epochs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_s3 import new_bucket, s3_options
from helpers_settings import only_shoprec_env

pytestmark = pytest.mark.integration

RUN_KEY = "two-machines-1"


@pytest.fixture(scope="module", params=["file", "s3"])
def machines(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tasks.artifacts import run_key_path
    from tasks.config import get_settings
    from tasks.contracts import list_partitions
    from tasks.embeddings import tiny_random_encoder
    from tasks.feast_store import apply_definitions
    from tasks.features import compute_features
    from tasks.membership import record_membership_losses
    from tasks.registry import register_and_gate
    from tasks.training import run_training
    from tests.integration.test_train_recommender_dag import _write_lake

    root = tmp_path_factory.mktemp("machines")
    home_a = root / "a" / "shoprec"
    if request.param == "file":
        store = {"SHOPREC_ARTIFACT_STORE_URL": (root / "store").as_uri()}
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        options = s3_options(endpoint)
        store = {
            "SHOPREC_ARTIFACT_STORE_URL": f"s3://{new_bucket(endpoint)}/shoprec",
            "SHOPREC_ARTIFACT_STORE_ENDPOINT_URL": endpoint,
            "SHOPREC_ARTIFACT_STORE_KEY_ID": options["key"],
            "SHOPREC_ARTIFACT_STORE_SECRET": options["secret"],
        }
    shared = {
        **store,
        "SHOPREC_MLFLOW_TRACKING_URI": f"sqlite:///{home_a / 'mlflow' / 'mlflow.db'}",
        "SHOPREC_LEDGER_URL": f"sqlite:///{home_a / 'privacy' / 'ledger.db'}",
        "SHOPREC_LEDGER_KEY": "two-machines-test-ledger-key",
        "SHOPREC_FEAST_REGISTRY_URL": f"sqlite:///{home_a / 'feast' / 'registry.db'}",
        "SHOPREC_TRAIN_STEPS": "8",
    }
    homes = {name: root / name / "shoprec" for name in ("a", "b", "c")}
    out: dict[str, Any] = {"homes": homes, "store_url": store["SHOPREC_ARTIFACT_STORE_URL"]}
    with pytest.MonkeyPatch.context() as mp:
        only_shoprec_env(mp, {**shared, "SHOPREC_HOME": str(homes["a"])})
        a = get_settings()
        compute_features(a, _write_lake(a), encoder=tiny_random_encoder(seed=0, dim=32))
        apply_definitions(a)
        out["first"] = run_training(a, run_key=RUN_KEY).to_dict()
        out["first_popularity"] = np.load(
            a.models_dir / run_key_path(RUN_KEY) / "recommender" / "popularity_eval.npy"
        )
        shutil.rmtree(a.models_dir)  # machine A is gone: its run folder with it

        only_shoprec_env(mp, {**shared, "SHOPREC_HOME": str(homes["c"])})
        c = get_settings()
        out["retry"] = run_training(c, run_key=RUN_KEY).to_dict()  # a retry of train_model on C
        out["retry_checkpoint_epoch"] = _checkpoint_epoch(c.models_dir / run_key_path(RUN_KEY))

        only_shoprec_env(mp, {**shared, "SHOPREC_HOME": str(homes["b"])})
        b = get_settings()
        assert list_partitions(b.events_dir) == []  # B has no lake: it reads the run's pinned data
        out["registration"] = register_and_gate(b, out["retry"]).to_dict()
        out["recorded"] = record_membership_losses(b, out["retry"], out["registration"])
        out["b"] = b
    return out


def _checkpoint_epoch(run_dir: Path) -> int:
    import torch

    return int(torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["epoch"])


def test_the_manifest_carries_artifact_store_uris_never_worker_paths(machines: dict[str, Any]) -> None:
    manifest = machines["first"]
    for field in ("model_uri", "nonprivate_uri", "training_users_uri", "training_data_uri"):
        assert manifest[field].startswith(machines["store_url"] + "/runs/"), field
    assert not any(str(machines["homes"]["a"]) in str(v) for v in manifest.values())


def test_a_retry_on_another_machine_resumes_the_same_reservation_data_and_noise(
    machines: dict[str, Any],
) -> None:
    """C fetched A's pin, checkpoint (the last epoch: nothing trained again) and popularity releases."""
    from tasks.artifacts import fetch

    first, retry = machines["first"], machines["retry"]
    same = ("charge_id", "popularity_charge_id", "epsilon", "noise_multiplier", "as_of", "training_data_uri")
    assert {k: retry[k] for k in same} == {k: first[k] for k in same}
    assert machines["retry_checkpoint_epoch"] == 2
    retried_popularity = np.load(fetch(machines["b"], retry["model_uri"]) / "popularity_eval.npy")
    assert np.array_equal(retried_popularity, machines["first_popularity"])


def test_registration_on_a_third_machine_registers_and_commits_both_charges(
    machines: dict[str, Any],
) -> None:
    from tasks.privacy.ledger_key import open_ledger

    registration, manifest = machines["registration"], machines["retry"]
    assert registration["version"] == "1"
    assert registration["promoted"] is True  # no champion yet, beats the best baseline, privacy within policy
    ledger = open_ledger(machines["b"])
    try:
        charges = [ledger.charge(int(manifest[k])) for k in ("charge_id", "popularity_charge_id")]
        assert [str(c.status) for c in charges] == ["committed", "committed"]
        assert {c.model_version for c in charges} == {"1"}
        assert len([c for c in ledger.charges(machines["b"].privacy_scope) if c.run_id == RUN_KEY]) == 2
    finally:
        ledger.close()


def test_membership_losses_on_the_third_machine_use_the_runs_training_users(
    machines: dict[str, Any],
) -> None:
    import pandas as pd

    recorded, manifest = machines["recorded"], machines["retry"]
    assert recorded.losses_uri is not None
    assert recorded.n_members == manifest["n_train_users"]
    assert recorded.n_nonmembers > 0
    frame = pd.read_parquet(recorded.losses_uri)
    assert int(frame["member"].sum()) == manifest["n_train_users"]
