"""Unit tests of the two-tower model: no per-user parameters, cold items via text, the blend."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.catalog import (
    BlendWeights,
    ItemCatalog,
    blend_scores,
    build_item_catalog,
    history_positions,
    user_feature_matrix,
)
from tasks.model import (
    Recommender,
    build_model,
    content_affinity,
    load_recommender,
    save_recommender,
    text_neighbours,
)
from tasks.publishing import scoring_catalog


def _catalog(n: int = 6, dim: int = 4) -> ItemCatalog:
    items = pd.DataFrame(
        {
            "item_id": [f"i{j}" for j in range(n)],
            "category": ["a", "b"] * (n // 2),
            "price": np.arange(n) * 3.0,
        }
    )
    rng = np.random.default_rng(0)
    emb = pd.DataFrame({"item_id": items["item_id"], "embedding": list(rng.normal(size=(n, dim)))})
    return build_item_catalog(items, emb)


def _frame(histories: list[list[str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "purchases_30d": [1] * len(histories),
            "days_since_last_purchase": [3] * len(histories),
            "recent_items": histories,
            "purchased_items": histories,
            "purchased_counts": [[1] * len(h) for h in histories],
        }
    )


def test_model_has_no_per_user_parameters() -> None:
    model = build_model(_catalog(), dim=8, hidden=16)
    n_params = sum(p.numel() for p in model.parameters())
    rec = Recommender(model, _catalog(), weights=BlendWeights(), popularity=None, history_length=3)
    vectors = rec.user_vectors(_frame([["i0"], ["i1", "i2"], []] * 50))
    assert vectors.shape == (150, 8)
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_a_users_vector_depends_only_on_their_own_features_and_history() -> None:
    torch.manual_seed(0)
    rec = Recommender(
        build_model(_catalog(), dim=8, hidden=16),
        _catalog(),
        weights=BlendWeights(),
        popularity=None,
        history_length=3,
    )
    alone = rec.user_vectors(_frame([["i0", "i3"]]))
    together = rec.user_vectors(_frame([["i5"], ["i0", "i3"], ["i1"]]))
    torch.testing.assert_close(alone[0], together[1])


def test_a_new_item_gets_a_vector_from_its_text() -> None:
    torch.manual_seed(0)
    catalog = _catalog()
    model = build_model(catalog, dim=8, hidden=16)
    bigger = _catalog(n=8)  # two new items, same architecture inputs
    grown = build_model(bigger, dim=8, hidden=16)
    grown.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("item_")}, strict=False
    )
    rec = Recommender(grown, bigger, weights=BlendWeights(), popularity=None, history_length=3)
    vectors = rec.item_vectors()
    assert vectors.shape == (8, 8)
    assert float(vectors[7].norm()) > 0


def test_blend_puts_the_users_own_repeat_purchases_first_with_a_large_repeat_weight() -> None:
    model = np.array([[3.0, 2.0, 1.0, 0.0]])
    own = np.array([[0.0, 0.0, 0.0, 2.0]])
    out = blend_scores(model, own, None, BlendWeights(repeat=8.0))
    assert int(out.argmax()) == 3


def test_user_features_use_fixed_transforms_that_do_not_depend_on_other_users() -> None:
    one = user_feature_matrix(pd.DataFrame({"purchases_30d": [4], "days_since_last_purchase": [-1]}))
    many = user_feature_matrix(
        pd.DataFrame({"purchases_30d": [4, 1000], "days_since_last_purchase": [-1, 5]})
    )
    np.testing.assert_allclose(one[0], many[0])
    assert one[0, -1] == pytest.approx(1.0)  # never purchased flag


def _text_catalog(text: list[list[float]]) -> ItemCatalog:
    n = len(text)
    return ItemCatalog(
        item_ids=tuple(f"i{j}" for j in range(n)),
        text=np.asarray(text, dtype=np.float32),
        category_index=np.zeros(n, dtype=np.int64),
        price_bucket=np.zeros(n, dtype=np.int64),
        categories=("a",),
        price_edges=(1.0,),
    )


def test_text_neighbours_are_the_most_similar_titles_by_cosine() -> None:
    catalog = _text_catalog([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]])
    found = text_neighbours(catalog.text, m=2)
    assert found.index.shape == (5, 2)
    assert [sorted(row) for row in found.index.tolist()] == [[0, 1], [0, 1], [2, 3], [2, 3], [2, 4]]
    assert found.similarity[0, 0] == pytest.approx(1.0)


def test_content_affinity_is_the_best_cosine_to_the_users_own_recent_items() -> None:
    catalog = _text_catalog([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]])
    neighbours = text_neighbours(catalog.text, m=3)
    histories = history_positions([["i0", "nope"], ["i2", "i0"], []], catalog, length=1)
    assert [h.tolist() for h in histories] == [[0], [2], []]
    out = content_affinity(histories, neighbours, catalog.n_items)
    unit = catalog.text / np.linalg.norm(catalog.text, axis=1, keepdims=True)
    assert out[0, 1] == pytest.approx(float(unit[0] @ unit[1]), abs=1e-6)
    assert out[1, 3] == pytest.approx(float(unit[2] @ unit[3]), abs=1e-6)
    assert out[0, 4] == pytest.approx(0.0)  # opposite title: negative cosine counts as no affinity
    assert not out[2].any()  # no history, no content signal
    # each user's row comes from that user's history alone
    alone = content_affinity(histories[1:2], neighbours, catalog.n_items)
    np.testing.assert_array_equal(alone[0], out[1])


def test_blend_with_a_content_weight_lifts_items_like_the_users_history() -> None:
    catalog = _text_catalog([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]])
    model = build_model(catalog, dim=4, hidden=8)
    frame = _frame([["i2"]])
    plain = Recommender(model, catalog, weights=BlendWeights(), popularity=None, history_length=3)
    liked = Recommender(
        model, catalog, weights=BlendWeights(content=100.0), popularity=None, history_length=3
    )
    scores = liked.scores(frame)[0]
    assert set(np.argsort(-scores)[:2].tolist()) == {2, 3}
    assert not np.allclose(plain.scores(frame), liked.scores(frame))


def test_normalised_towers_score_the_cosine_over_the_temperature_everywhere(tmp_path) -> None:
    """Item vectors have unit norm, user vectors norm 1/T: training's forward, the Recommender and
    anything else multiplying the two (publishing) score cosine / T, in [-1/T, 1/T]."""
    from tasks.model import load_recommender, save_recommender

    torch.manual_seed(0)
    catalog = _catalog()
    model = build_model(catalog, dim=8, hidden=16, temperature=0.05)
    rec = Recommender(model, catalog, weights=BlendWeights(), popularity=None, history_length=3)
    frame = _frame([["i0"], ["i1", "i2"], ["i3", "i4", "i5"]])
    items, users = rec.item_vectors(), rec.user_vectors(frame)
    torch.testing.assert_close(items.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(users.norm(dim=1), torch.full((3,), 20.0))
    scores = rec.model_scores(frame)
    assert np.abs(scores).max() <= 20.0 + 1e-4
    cosine = torch.nn.functional.cosine_similarity(users.unsqueeze(1), items.unsqueeze(0), dim=-1)
    np.testing.assert_allclose(scores, (cosine / 0.05).numpy(), rtol=1e-5, atol=1e-4)
    features = torch.from_numpy(user_feature_matrix(frame))
    history = torch.tensor([[1, 0, 0], [2, 3, 0], [4, 5, 6]])
    with torch.no_grad():
        forward = model(features, history, torch.arange(1, 7).repeat(3, 1))
    np.testing.assert_allclose(forward.numpy(), scores, rtol=1e-5, atol=1e-4)
    loaded = load_recommender(save_recommender(rec, tmp_path / "rec"))
    assert loaded.model.config.temperature == pytest.approx(0.05)
    np.testing.assert_allclose(loaded.model_scores(frame), scores, rtol=1e-6)


def test_a_model_saved_before_normalisation_loads_and_scores_as_it_was_trained(tmp_path) -> None:
    import json

    from tasks.model import load_recommender, save_recommender

    torch.manual_seed(0)
    catalog = _catalog()
    old = Recommender(
        build_model(catalog, dim=8, hidden=16, temperature=None),
        catalog,
        weights=BlendWeights(),
        popularity=None,
        history_length=3,
    )
    path = save_recommender(old, tmp_path / "old")
    meta = json.loads((path / "recommender.json").read_text())
    del meta["model_config"]["temperature"]  # what a model registered before this field wrote
    (path / "recommender.json").write_text(json.dumps(meta))
    loaded = load_recommender(path)
    assert loaded.model.config.temperature is None
    frame = _frame([["i0"], ["i1", "i2"]])
    np.testing.assert_allclose(loaded.model_scores(frame), old.model_scores(frame), rtol=1e-6)
    assert float(loaded.item_vectors().norm(dim=1).std()) > 0  # raw dot product, not normalised


def test_behaviour_vectors_join_the_item_input_and_travel_with_the_saved_model(tmp_path) -> None:
    """DP behaviour vectors are further columns of the item tower's input; the saved model carries
    them (it scores without the lake), and publishing's scoring catalog keeps them for known items
    and gives new items zero rows."""
    torch.manual_seed(0)
    catalog = _catalog()
    behaviour = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    joined = catalog.with_behaviour(behaviour)
    assert joined.item_features.shape == (6, 4 + 3)
    np.testing.assert_array_equal(joined.item_features[:, 4:], behaviour)
    np.testing.assert_array_equal(joined.behaviour_for(["i2", "unknown"]), [behaviour[2], np.zeros(3)])
    with pytest.raises(ValueError, match="2 behaviour vectors for 6 items"):
        catalog.with_behaviour(behaviour[:2])
    model = build_model(joined, dim=8, hidden=16)
    assert model.config.text_dim == 7
    rec = Recommender(model, joined, weights=BlendWeights(), popularity=None, history_length=3)
    frame = _frame([["i0"], ["i1", "i2"]])
    loaded = load_recommender(save_recommender(rec, tmp_path / "rec"))
    assert loaded.catalog.behaviour is not None
    np.testing.assert_array_equal(loaded.catalog.behaviour, behaviour)
    np.testing.assert_allclose(loaded.model_scores(frame), rec.model_scores(frame), rtol=1e-6)

    # "new": i0's title, category and price, but never seen by the release
    current = pd.DataFrame(
        {
            "item_id": [*joined.item_ids, "new"],
            "category": ["a", "b"] * 3 + ["a"],
            "price": [*(np.arange(6) * 3.0), 0.0],
            "embedding": [*catalog.text, catalog.text[0]],
        }
    )
    scored = scoring_catalog(loaded, current)
    assert scored.n_new == 1
    torch.testing.assert_close(scored.vectors[:6], loaded.item_vectors())
    zeroed = copy.deepcopy(loaded.model)
    with torch.no_grad():
        zeroed.item_text[1, 4:] = 0.0  # i0 without behaviour vector
        expected = zeroed.item_vectors(torch.tensor([1]))[0]
    torch.testing.assert_close(scored.vectors[6], expected)
    assert not torch.allclose(scored.vectors[6], scored.vectors[0])
