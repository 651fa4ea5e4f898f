"""The packaged all-MiniLM-L6-v2 loads offline, is the expected file and embeds meaningfully."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.embeddings import (
    PRETRAINED_DIM,
    PRETRAINED_SHA256,
    file_sha256,
    load_pretrained_encoder,
    pretrained_model_dir,
)

pytestmark = pytest.mark.integration


def test_packaged_weights_match_the_pinned_hash() -> None:
    assert file_sha256(pretrained_model_dir() / "model.safetensors") == PRETRAINED_SHA256


def test_pretrained_encoder_embeds_similar_titles_closer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = load_pretrained_encoder(device="cpu")
    assert encoder.dim == PRETRAINED_DIM
    assert encoder.model_id == f"all-MiniLM-L6-v2@{PRETRAINED_SHA256[:12]}"
    vectors = encoder.encode(["white ceramic coffee mug", "porcelain tea cup", "red wool knitted scarf"])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    mug_cup = float(vectors[0] @ vectors[1])
    mug_scarf = float(vectors[0] @ vectors[2])
    assert mug_cup > mug_scarf + 0.1


def test_the_configured_encoder_package_is_the_pinned_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.config import get_settings

    monkeypatch.setenv("SHOPREC_HOME", str(tmp_path))
    monkeypatch.delenv("SHOPREC_ENCODER_PACKAGE", raising=False)
    package = get_settings().encoder_package
    assert file_sha256(pretrained_model_dir(package) / "model.safetensors") == PRETRAINED_SHA256
    assert load_pretrained_encoder(device="cpu", package=package).model_id == (
        f"all-MiniLM-L6-v2@{PRETRAINED_SHA256[:12]}"
    )
