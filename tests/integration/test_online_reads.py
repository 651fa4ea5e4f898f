"""One-user lookups (issue 19): ``shoprec recommend USER`` and :func:`tasks.consumers.get_recommendations`
give the same answer through the Feast SDK (one cached FeatureStore, the registry's cached service
definition) as through a running feature server (HTTP, no SDK import), and the same as the SDK read
with a fresh registry read that they replaced; a blue/green switch is visible to a fresh process.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from benchmarks import feast_online
from tasks.cli import app
from tasks.config import Settings
from tasks.consumers import get_recommendations
from tasks.feast_store import USER_FEATURES, apply_definitions, get_store, materialize, write_repo_yaml
from tasks.publishing import SERVICE_NAME_DEFAULT, TopK, build_rows, publish_online, recommendation_objects
from tasks.servers import feast_server, local_server

pytestmark = pytest.mark.integration

K = 5


def _publish(settings: Settings, users: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    item_ids = [f"i{n:05d}" for n in range(1000)]
    n = len(users)
    top = TopK(
        indices=np.stack([rng.choice(len(item_ids), K, replace=False) for _ in range(n)]),
        scores=np.sort(rng.random((n, K), dtype=np.float32), axis=1)[:, ::-1],
    )
    at = feast_online.AT.to_pydatetime() + dt.timedelta(hours=seed)
    rows = build_rows(
        users, top, [["popular:global"] * K] * n, item_ids, model_version=str(seed), scoring_time=at
    )
    publish_online(get_store(settings), rows)


def _sdk_with_fresh_registry_read(settings: Settings, user: str) -> dict[str, object]:
    """The read ``get_recommendations`` made before issue 19."""
    store = get_store(settings)
    service = store.get_feature_service(SERVICE_NAME_DEFAULT, allow_cache=False)
    return dict(store.get_online_features(features=service, entity_rows=[{"user_id": user}]).to_dict())


def test_sdk_and_feature_server_give_the_same_recommendations(
    shoprec_home: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = shoprec_home
    users = feast_online.write_synthetic_features(settings, 40)
    apply_definitions(settings, extra=recommendation_objects(settings))
    materialize(
        settings, feast_online.AT.to_pydatetime(), feast_online.AT.to_pydatetime(), views=[USER_FEATURES]
    )
    _publish(settings, [*users[:30], "popular:global"], seed=1)
    known, unknown = users[3], users[35]  # users[35] has no list: popular:global
    sdk = {u: get_recommendations(settings, u) for u in (known, unknown)}
    before = _sdk_with_fresh_registry_read(settings, known)
    assert sdk[known].item_ids == list(before["item_ids"][0])
    assert sdk[known].scores == pytest.approx([float(s) for s in before["scores"][0]])
    assert sdk[known].model_version == "1"
    assert not sdk[known].fallback
    assert sdk[unknown].fallback
    assert len(sdk[unknown].item_ids) == K

    with local_server(feast_server(write_repo_yaml(settings)), name="feast serve") as url:
        served = settings.model_copy(update={"feature_server_url": url})
        for user in (known, unknown):
            assert get_recommendations(served, user) == sdk[user]
        monkeypatch.setenv("SHOPREC_FEATURE_SERVER_URL", url)
        capsys.readouterr()  # what set-up printed
        with pytest.raises(SystemExit) as exited:
            app(args=["recommend", known, "--k", "3"], prog_name="shoprec")
        through_server = capsys.readouterr().out
    monkeypatch.delenv("SHOPREC_FEATURE_SERVER_URL")
    with pytest.raises(SystemExit) as exited_sdk:
        app(args=["recommend", known, "--k", "3"], prog_name="shoprec")
    through_sdk = capsys.readouterr().out
    assert (exited.value.code or 0, exited_sdk.value.code or 0) == (0, 0)
    assert through_server == through_sdk
    assert all(item in through_sdk for item in sdk[known].item_ids[:3])


def test_an_unreachable_feature_server_is_one_line_and_a_non_zero_exit(
    shoprec_home: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SHOPREC_FEATURE_SERVER_URL", "http://127.0.0.1:9")
    with pytest.raises(SystemExit) as exited:
        app(args=["recommend", "u_" + "0" * 32], prog_name="shoprec")
    err = capsys.readouterr().err
    assert exited.value.code == 1
    assert err.startswith("shoprec: error: feature server http://127.0.0.1:9 does not answer: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err
