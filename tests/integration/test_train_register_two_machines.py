"""The train_recommender tasks as if on different machines (issue 16): nothing but URIs between them.

Four SHOPREC_HOME folders stand for four workers: D (the default worker with the lake and Feast, which
runs pin_training_data), A (the GPU worker that trains), C (the GPU worker a retry of the training task
lands on) and B (a default worker without a lake that registers and records the membership losses).
They share what a deployment shares: the artifact store (outside every home), the MLflow
tracking store and the privacy ledger (with its key, as SHOPREC_LEDGER_KEY), both in a "servers"
folder. A, B and C have no lake, no catalog, no Feast repository or offline store, and A's run folder is
deleted after training, so a task that opened a worker-local path of another task, or read the lake or
Feast instead of the run's pinned data, fails.

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
import pandas as pd
import pytest
from helpers_s3 import new_bucket, s3_options
from helpers_settings import only_shoprec_env

from tasks.config import Settings

pytestmark = pytest.mark.integration

RUN_KEY = "two-machines-1"


def _has_no_lake_or_feast(settings: Settings) -> list[str]:
    """What of the lake, the catalog and Feast's files the worker of ``settings`` holds (none expected)."""
    places = (
        settings.landing_dir,
        settings.lake_dir,
        settings.items_dir,
        settings.quarantine_dir,
        settings.features_dir,
        settings.feast_dir,
    )
    return [str(p) for p in places if p.exists()]


@pytest.fixture(scope="module", params=["file", "s3"])
def machines(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from tasks.artifacts import run_key_path
    from tasks.config import get_settings
    from tasks.embeddings import tiny_random_encoder
    from tasks.feast_store import apply_definitions
    from tasks.features import compute_features
    from tasks.membership import record_membership_losses
    from tasks.registry import register_and_gate
    from tasks.training import run_training
    from tasks.training_data import pin_training_data
    from tests.integration.test_train_recommender_dag import _write_lake

    root = tmp_path_factory.mktemp("machines")
    servers = root / "servers"
    servers.mkdir()
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
        "SHOPREC_MLFLOW_TRACKING_URI": f"sqlite:///{servers / 'mlflow.db'}",
        "SHOPREC_LEDGER_URL": f"sqlite:///{servers / 'ledger.db'}",
        "SHOPREC_LEDGER_KEY": "two-machines-test-ledger-key",
        "SHOPREC_TRAIN_STEPS": "8",
    }
    homes = {name: root / name / "shoprec" for name in ("d", "a", "b", "c")}
    out: dict[str, Any] = {"homes": homes, "store_url": store["SHOPREC_ARTIFACT_STORE_URL"]}
    with pytest.MonkeyPatch.context() as mp:
        only_shoprec_env(mp, {**shared, "SHOPREC_HOME": str(homes["d"])})
        d = get_settings()
        compute_features(d, _write_lake(d), encoder=tiny_random_encoder(seed=0, dim=32))
        apply_definitions(d)
        pinned = pin_training_data(d, RUN_KEY)  # the pin_training_data task, on the default worker
        out["d"], out["pinned"] = d, pinned
        out["pinned_again"] = pin_training_data(d, RUN_KEY)  # a retry of the pin task

        only_shoprec_env(mp, {**shared, "SHOPREC_HOME": str(homes["a"])})
        a = get_settings()
        out["first"] = run_training(a, run_key=RUN_KEY, training_data_uri=pinned.uri).to_dict()
        out["first_popularity"] = np.load(
            a.models_dir / run_key_path(RUN_KEY) / "recommender" / "popularity_eval.npy"
        )
        out["a"] = a
        shutil.rmtree(a.models_dir)  # machine A is gone: its run folder with it

        only_shoprec_env(mp, {**shared, "SHOPREC_HOME": str(homes["c"])})
        c = get_settings()
        # a retry of train_model on C: the same XCom, so the same pin URI
        out["retry"] = run_training(c, run_key=RUN_KEY, training_data_uri=pinned.uri).to_dict()
        out["retry_checkpoint_epoch"] = _checkpoint_epoch(c.models_dir / run_key_path(RUN_KEY))
        out["c"] = c

        only_shoprec_env(mp, {**shared, "SHOPREC_HOME": str(homes["b"])})
        b = get_settings()
        out["registration"] = register_and_gate(b, out["retry"]).to_dict()
        out["recorded"] = record_membership_losses(b, out["retry"], out["registration"])
        out["b"] = b
    return out


def test_only_the_default_worker_has_a_lake_or_feast(machines: dict[str, Any]) -> None:
    """The trainer, its retry and the registering worker ran without the lake, the catalog or Feast."""
    assert {name: _has_no_lake_or_feast(machines[name]) for name in ("a", "b", "c")} == {
        "a": [],
        "b": [],
        "c": [],
    }
    assert _has_no_lake_or_feast(machines["d"]) != []  # the probe can fail: D holds them


def test_the_pin_holds_feasts_state_for_every_state_the_run_reads(machines: dict[str, Any]) -> None:
    """The pinned rows give what Feast's point-in-time join gives for each request of the run
    (tasks.training_data.state_requests), after the same filtering (tasks.dataset.feature_state),
    value for value. Dtypes are not compared: Feast itself returns a count column as float64 whenever
    a request holds a user without a snapshot (the pin's one request does), and the model reads the
    counts as float64 either way (tasks.catalog.user_feature_matrix)."""
    from tasks.dataset import Cuts, feature_state
    from tasks.training_data import state_requests

    d, pinned = machines["d"], machines["pinned"]
    requests = state_requests(d, pinned.events(), Cuts.from_end(pinned.as_of, d.eval_days))
    assert requests.duplicated().sum() == 0
    for at, rows in requests.groupby("event_timestamp"):
        users = rows["user_id"].tolist()
        from_feast = feature_state(d, users, at)
        from_pin = feature_state(d, users, at, source=pinned.state_rows)
        for frame in (from_feast, from_pin):
            frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).astype(
                "datetime64[ns, UTC]"
            )
        assert len(from_pin) > 0
        pd.testing.assert_frame_equal(from_pin, from_feast, check_dtype=False, check_exact=True)
    with pytest.raises(KeyError, match="not in the pinned state"):
        feature_state(d, ["u-not-pinned"], pinned.as_of, source=pinned.state_rows)
    assert machines["pinned_again"].uri == pinned.uri


def _checkpoint_epoch(run_dir: Path) -> int:
    import torch

    return int(torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["epoch"])


def test_the_manifest_carries_artifact_store_uris_never_worker_paths(machines: dict[str, Any]) -> None:
    manifest = machines["first"]
    for field in ("model_uri", "nonprivate_uri", "training_users_uri", "training_data_uri"):
        assert manifest[field].startswith(machines["store_url"] + "/runs/"), field
    assert manifest["training_data_uri"] == machines["pinned"].uri
    assert not any(str(home) in str(v) for v in manifest.values() for home in machines["homes"].values())


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
