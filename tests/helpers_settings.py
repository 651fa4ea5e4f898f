"""Shared test set-up: the process's SHOPREC_* environment and a tiny item catalog."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:  # conftest imports this module: keep torch out of its import
    from tasks.catalog import ItemCatalog


def only_shoprec_env(mp: pytest.MonkeyPatch, env: Mapping[str, str]) -> None:
    """Clear every SHOPREC_* variable, then set ``env`` (tasks run by Airflow read the process's)."""
    for key in [k for k in os.environ if k.startswith("SHOPREC_")]:
        mp.delenv(key)
    for key, value in env.items():
        mp.setenv(key, value)


def tiny_catalog(n_items: int, seed: int = 0) -> ItemCatalog:
    """A random catalog of ``n_items`` items with 8-d text vectors, 3 categories and 4 price buckets."""
    from tasks.catalog import ItemCatalog

    rng = np.random.default_rng(seed)
    return ItemCatalog(
        item_ids=tuple(f"i{j:02d}" for j in range(n_items)),
        text=rng.normal(size=(n_items, 8)).astype(np.float32),
        category_index=rng.integers(0, 3, n_items),
        price_bucket=rng.integers(0, 4, n_items),
        categories=("a", "b", "c"),
        price_edges=(1.0, 5.0, 20.0),
    )
