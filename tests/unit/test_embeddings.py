"""Unit tests of tasks.embeddings with a tiny randomly initialised BERT (no weights file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.embeddings import TextEncoder, cache_file, embed_items, tiny_random_encoder


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return tiny_random_encoder(seed=0, dim=32)


def _items(titles: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"item_id": [f"i{n}" for n in range(len(titles))], "title": titles})


def test_encode_returns_float32_unit_rows(encoder: TextEncoder) -> None:
    vectors = encoder.encode(["red ceramic mug", "blue cotton scarf", "x"], batch_size=2)
    assert vectors.shape == (3, 32)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_encode_ignores_padding(encoder: TextEncoder) -> None:
    """A title's vector does not depend on the longer titles it is batched with."""
    alone = encoder.encode(["mug"])
    padded = encoder.encode(["mug", "a very long title about a large vintage enamel coffee pot"])
    np.testing.assert_allclose(alone[0], padded[0], atol=1e-5)


def test_tiny_encoder_is_deterministic_per_seed() -> None:
    a = tiny_random_encoder(seed=3, dim=16).encode(["lamp"])
    b = tiny_random_encoder(seed=3, dim=16).encode(["lamp"])
    c = tiny_random_encoder(seed=4, dim=16).encode(["lamp"])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_embed_items_returns_one_vector_per_item_in_order(encoder: TextEncoder, tmp_path: Path) -> None:
    items = _items(["mug", "scarf", "mug"])
    result = embed_items(items, tmp_path, encoder)
    assert result.frame["item_id"].tolist() == ["i0", "i1", "i2"]
    assert (result.n_items, result.n_embedded, result.n_cache_hits) == (3, 2, 0)
    np.testing.assert_allclose(result.frame["embedding"][0], encoder.encode(["mug"])[0], atol=1e-6)
    np.testing.assert_array_equal(result.frame["embedding"][0], result.frame["embedding"][2])


def test_unchanged_titles_are_not_re_embedded(encoder: TextEncoder, tmp_path: Path) -> None:
    embed_items(_items(["mug", "scarf"]), tmp_path, encoder)
    second = embed_items(_items(["mug", "scarf", "teapot"]), tmp_path, encoder)
    assert (second.n_embedded, second.n_cache_hits) == (1, 2)
    third = embed_items(_items(["mug", "scarf", "teapot"]), tmp_path, encoder)
    assert (third.n_embedded, third.n_cache_hits) == (0, 3)
    np.testing.assert_array_equal(np.stack(second.frame["embedding"]), np.stack(third.frame["embedding"]))


def test_changed_title_is_re_embedded(encoder: TextEncoder, tmp_path: Path) -> None:
    embed_items(_items(["mug", "scarf"]), tmp_path, encoder)
    result = embed_items(_items(["mug", "wool scarf"]), tmp_path, encoder)
    assert (result.n_embedded, result.n_cache_hits) == (1, 1)


def test_changing_the_encoder_re_embeds_everything(encoder: TextEncoder, tmp_path: Path) -> None:
    embed_items(_items(["mug", "scarf"]), tmp_path, encoder)
    other = tiny_random_encoder(seed=1, dim=32)
    result = embed_items(_items(["mug", "scarf"]), tmp_path, other)
    assert (result.n_embedded, result.n_cache_hits) == (2, 0)
    assert result.model_id == other.model_id != encoder.model_id
    assert cache_file(tmp_path, other.model_id).exists()
    assert cache_file(tmp_path, encoder.model_id).exists()


def test_cache_lives_under_cache_dir_embeddings(encoder: TextEncoder, tmp_path: Path) -> None:
    result = embed_items(_items(["mug"]), tmp_path, encoder)
    assert result.cache_path.parent == tmp_path / "embeddings"
    assert result.cache_path.suffix == ".parquet"


def test_embed_items_rejects_frame_without_title(encoder: TextEncoder, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="title"):
        embed_items(pd.DataFrame({"item_id": ["i0"]}), tmp_path, encoder)


@pytest.mark.parametrize("package", ["no_such_encoder_package", "json"])
def test_an_encoder_package_that_holds_no_model_is_one_clear_error(package: str) -> None:
    from tasks.embeddings import EncoderPackageMissing, load_pretrained_encoder

    with pytest.raises(
        EncoderPackageMissing, match=rf"encoder package '{package}' \(SHOPREC_ENCODER_PACKAGE\)"
    ):
        load_pretrained_encoder(device="cpu", package=package)


def test_features_and_search_load_the_configured_encoder_package() -> None:
    import ast
    import inspect

    import tasks.consumers
    import tasks.features

    for module in (tasks.features, tasks.consumers):
        calls = [
            node
            for node in ast.walk(ast.parse(inspect.getsource(module)))
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "load_pretrained_encoder"
        ]
        assert calls, module.__name__
        for call in calls:
            assert [ast.unparse(k.value) for k in call.keywords if k.arg == "package"] == [
                "settings.encoder_package"
            ], module.__name__
