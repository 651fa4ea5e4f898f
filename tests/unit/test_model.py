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


# --- the towers the pipeline chooses among (Settings.train_item_tower / train_user_tower) ----------
def test_the_text_item_tower_is_the_normalised_item_input_with_no_item_parameters() -> None:
    catalog = _catalog()
    model = build_model(catalog, hidden=16, item_tower="text", user_features=False)
    vectors = Recommender(
        model, catalog, weights=BlendWeights(), popularity=None, history_length=3
    ).item_vectors()
    unit = catalog.item_features / np.linalg.norm(catalog.item_features, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors.numpy(), unit, rtol=1e-5, atol=1e-6)
    assert model.config.dim == catalog.item_features.shape[1]
    assert not [
        name for name, _ in model.named_parameters() if name.startswith(("item_", "category", "price"))
    ]


@torch.no_grad()
def test_the_residual_item_tower_starts_from_the_text_and_learns_a_correction() -> None:
    torch.manual_seed(0)
    catalog = _catalog()
    model = build_model(catalog, hidden=16, item_tower="residual", user_features=False)
    vectors = model.item_vectors(torch.arange(1, catalog.n_items + 1))
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(catalog.n_items))
    unit = torch.nn.functional.normalize(torch.from_numpy(catalog.item_features), dim=1)
    assert not torch.allclose(vectors, unit, atol=1e-3)  # the MLP moves it ...
    with torch.no_grad():
        model.item_fc2.weight.zero_()
        model.item_fc2.bias.zero_()
    torch.testing.assert_close(
        model.item_vectors(torch.arange(1, catalog.n_items + 1)), unit
    )  # ... by a skip


@torch.no_grad()
def test_without_user_features_a_users_vector_depends_on_their_history_only() -> None:
    torch.manual_seed(0)
    model = build_model(_catalog(), hidden=16, item_tower="text", user_features=False)
    history = torch.tensor([[1, 2, 0], [3, 0, 0]])
    a = model.user_vectors(torch.zeros(2, model.config.n_user_features), history)
    b = model.user_vectors(torch.randn(2, model.config.n_user_features) * 10, history)
    torch.testing.assert_close(a, b)
    assert model.user_fc1.in_features == model.config.dim


@torch.no_grad()
def test_attention_pooling_starts_as_the_mean_and_can_weigh_recent_items_more() -> None:
    torch.manual_seed(0)
    catalog = _catalog()
    mean = build_model(
        catalog, hidden=16, item_tower="text", user_tower="mean", user_features=False, max_history=3
    )
    attention = build_model(
        catalog, hidden=16, item_tower="text", user_tower="attention", user_features=False, max_history=3
    )
    history = torch.tensor([[1, 2, 3], [4, 5, 0], [0, 0, 0]])
    vectors = mean.item_vectors(history)
    torch.testing.assert_close(attention.pool_history(vectors, history), mean.pool_history(vectors, history))
    assert not attention.pool_history(vectors, history)[2].any()  # no history, no vector
    with torch.no_grad():  # a large score for recency position 0 (the most recent item)
        attention.attn_key.weight.zero_()
        attention.attn_key.bias.zero_()
        attention.attn_position.weight.zero_()
        attention.attn_position.weight[0] = 1.0
        attention.attn_score.weight.fill_(20.0)
    pooled = attention.pool_history(vectors, history)
    torch.testing.assert_close(pooled[:2], vectors[:2, 0], atol=1e-3, rtol=1e-3)
    # order matters: the same items, most recent first, pool differently once position weighs in
    reordered = attention.pool_history(vectors.flip(1), history.flip(1))
    assert not torch.allclose(reordered[0], pooled[0], atol=1e-3)


@torch.no_grad()
def test_a_padding_position_never_gets_attention() -> None:
    torch.manual_seed(0)
    model = build_model(_catalog(), hidden=16, item_tower="text", user_tower="attention", max_history=4)
    torch.nn.init.normal_(model.attn_score.weight, std=5.0)
    history = torch.tensor([[2, 0, 0, 0]])
    vectors = model.item_vectors(history)
    vectors[0, 1:] = 100.0  # whatever sits at the padding positions
    torch.testing.assert_close(model.pool_history(vectors, history)[0], vectors[0, 0])


def test_every_tower_saves_and_loads_with_its_architecture(tmp_path) -> None:
    from tasks.model import load_recommender, save_recommender

    catalog = _catalog()
    frame = _frame([["i0"], ["i1", "i2"], ["i3", "i4", "i5"]])
    for item_tower, user_tower in (("text", "attention"), ("residual", "mean")):
        torch.manual_seed(0)
        model = build_model(
            catalog,
            hidden=16,
            temperature=0.05,
            item_tower=item_tower,
            user_tower=user_tower,
            user_features=False,
        )
        rec = Recommender(model, catalog, weights=BlendWeights(), popularity=None, history_length=3)
        loaded = load_recommender(save_recommender(rec, tmp_path / f"{item_tower}-{user_tower}"))
        assert (loaded.model.config.item_tower, loaded.model.config.user_tower) == (item_tower, user_tower)
        np.testing.assert_allclose(loaded.model_scores(frame), rec.model_scores(frame), rtol=1e-6)


def test_a_model_saved_before_the_tower_options_loads_as_the_mlp_tower(tmp_path) -> None:
    import json

    from tasks.model import load_recommender, save_recommender

    torch.manual_seed(0)
    catalog = _catalog()
    old = Recommender(
        build_model(catalog, dim=8, hidden=16),
        catalog,
        weights=BlendWeights(),
        popularity=None,
        history_length=3,
    )
    path = save_recommender(old, tmp_path / "old")
    meta = json.loads((path / "recommender.json").read_text())
    for key in ("item_tower", "user_tower", "user_features", "max_history", "attention_dim"):
        del meta["model_config"][key]
    (path / "recommender.json").write_text(json.dumps(meta))
    loaded = load_recommender(path)
    assert (loaded.model.config.item_tower, loaded.model.config.user_tower) == ("mlp", "mean")
    frame = _frame([["i0"], ["i1", "i2"]])
    np.testing.assert_allclose(loaded.model_scores(frame), old.model_scores(frame), rtol=1e-6)


def test_an_unknown_tower_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="item tower one of"):
        build_model(_catalog(), item_tower="transformer")  # type: ignore[arg-type]
