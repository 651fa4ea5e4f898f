"""Attack on training resume: a checkpoint that carries a pickled object must not run it."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_settings import tiny_catalog

from tasks.model import build_model
from tasks.training import TrainConfig, UserExamples, train

N_ITEMS = 20


class _RunsCodeWhenUnpickled:
    """Unpickling this object calls ``os.makedirs(marker)``: any code could stand in its place."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.makedirs, (str(self.marker),)


def _examples(n_users: int = 40) -> UserExamples:
    rng = np.random.default_rng(0)
    history = rng.integers(1, N_ITEMS + 1, (n_users, 5)).astype(np.int64)
    positives = [rng.integers(1, N_ITEMS + 1, 1 + u % 7) for u in range(n_users)]
    features = rng.normal(size=(n_users, 12)).astype(np.float32)
    return UserExamples(features, history, positives, n_items=N_ITEMS, cap_k=6, n_negatives=10, seed=0)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(tiny_catalog(N_ITEMS, 0), dim=8, hidden=16, item_id_dim=4)


def test_a_checkpoint_with_a_pickled_object_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"epoch": 1, "losses": [1.0], "payload": _RunsCodeWhenUnpickled(marker)}, checkpoint)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train(
            _model(),
            _examples(),
            TrainConfig(epochs=2, batch_size=10),
            delta=1e-3,
            checkpoint_path=checkpoint,
        )
    assert not marker.exists()


def test_a_real_checkpoint_holds_only_tensors_and_plain_values(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt.pt"
    train(_model(), _examples(), TrainConfig(epochs=1, batch_size=10), delta=1e-3, checkpoint_path=checkpoint)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # raises on anything else
    assert (state["epoch"], len(state["losses"])) == (1, 1)
    assert state["accountant"]["mechanism"] == "rdp"
    assert [type(v) for v in state["accountant"]["history"][0]] == [float, float, int]
