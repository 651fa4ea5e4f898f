"""The data one training run reads, fixed at its first try: a retry and the registration see the same.

A ``train_recommender`` run trains on the lake days up to the last day its triggering ``features``
asset events name (``partitions``; a manual run without them: the lake's latest partition at the first
try) and on the item catalog as of that day's end (items first seen before it, with their title
vectors). :func:`pin_training_data` writes that choice once, as a folder (``data.json`` with the days,
``events.parquet``, the clean events of exactly those days, and ``items.parquet`` plus
``item_vectors.parquet``, the catalog copy), and puts it write-once in the shared artifact store
(:mod:`tasks.artifacts`, key ``runs/<run>/data``). Every later try of the run, on whichever machine,
and ``register_and_gate`` and ``record_membership_losses`` fetch that folder by its URI
(:func:`fetch_training_data`): the same events and catalog however the lake and the catalog grew since
(new days landing during a backfill, new items), and without the trainer's disk.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.artifacts import ArtifactRefused, artifact_store, fetch, run_key_path
from tasks.catalog import ItemCatalog, build_item_catalog
from tasks.config import Settings
from tasks.contracts import list_partitions
from tasks.feast_store import item_vectors
from tasks.features import read_events, read_items, snapshot_time
from tasks.io import replace_dir

PIN_FILE: Final = "data.json"
ITEMS_FILE: Final = "items.parquet"
VECTORS_FILE: Final = "item_vectors.parquet"
EVENTS_FILE: Final = "events.parquet"


@dataclass(frozen=True)
class TrainingData:
    """A run's pinned data: the lake days it reads (the last is its data end), their events and the
    catalog copy, in the local folder ``folder``, fetched from (or put at) ``uri`` in the store."""

    folder: Path
    days: tuple[dt.date, ...]
    source: str  # where the data end came from: "asset events or run conf" / "latest lake partition"
    uri: str = ""

    @property
    def as_of(self) -> pd.Timestamp:
        """The data end: the end of the last pinned day."""
        return snapshot_time(self.days[-1])

    def events(self) -> pd.DataFrame:
        """The clean events of exactly the pinned days, as the lake held them at the first try."""
        return pq.read_table(self.folder / EVENTS_FILE).to_pandas()

    def catalog(self) -> ItemCatalog:
        """The pinned item catalog (built as :func:`tasks.training.load_catalog` builds the live one)."""
        items = pq.read_table(self.folder / ITEMS_FILE).to_pandas()
        vectors = pq.read_table(self.folder / VECTORS_FILE).to_pandas()
        dim = len(vectors["embedding"].iloc[0]) if len(vectors) else 0
        vectors["embedding"] = vectors["embedding"].map(lambda v: np.asarray(v, dtype=np.float32))
        return build_item_catalog(items, vectors, encoder_id=f"dim{dim}")


def load_training_data(folder: Path, uri: str = "") -> TrainingData:
    """The data pinned in the local folder ``folder`` (put at ``uri``)."""
    pin = json.loads((folder / PIN_FILE).read_text())
    return TrainingData(
        folder=folder,
        days=tuple(dt.date.fromisoformat(d) for d in pin["days"]),
        source=pin["source"],
        uri=uri,
    )


def fetch_training_data(settings: Settings, uri: str) -> TrainingData:
    """The data a run pinned at ``uri`` in the artifact store, fetched to this machine's cache."""
    return load_training_data(fetch(settings, uri), uri)


def pinned_days(lake: Sequence[dt.date], named_days: Sequence[dt.date] = ()) -> list[dt.date]:
    """The lake days a run trains on: those up to the last of ``named_days`` (the days of its
    triggering asset events or conf), all of them when none is named. The one rule, read by
    :func:`pin_training_data` and by the due check (``tasks.registry.training_due``)."""
    end = max(named_days) if named_days else None
    return sorted(d for d in lake if end is None or d <= end)


def pin_training_data(settings: Settings, run_key: str, named_days: Sequence[dt.date] = ()) -> TrainingData:
    """The run's pinned data: fetched from the artifact store when an earlier try (on any machine)
    pinned it, else chosen now, written below the run's local folder and put in the store write-once.

    ``named_days``: the days the run's triggering asset events (or its conf) name; the data end is the
    last of them, else the lake's latest partition now. Raises FileNotFoundError when the lake has no
    partition up to the data end.
    """
    store = artifact_store(settings)
    key = f"runs/{run_key_path(run_key)}/data"
    if store.exists(store.uri(key)):
        return fetch_training_data(settings, store.uri(key))
    days = pinned_days(list_partitions(settings.events_dir), named_days)
    if not days:
        end = max(named_days) if named_days else None
        raise FileNotFoundError(f"no event partitions under {settings.events_dir} up to {end}")
    source = "asset events or run conf" if named_days else "latest lake partition at the first try"
    as_of = snapshot_time(days[-1])
    events = read_events(settings, days=days)
    items = read_items(settings)
    items = items[items["first_seen"] < as_of].reset_index(drop=True)
    ids, matrix = item_vectors(settings)
    vectors = pa.table(
        {
            "item_id": pa.array(ids, pa.string()),
            "embedding": pa.array([row.tolist() for row in matrix], pa.list_(pa.float32())),
        }
    )
    pin = {"days": [d.isoformat() for d in days], "source": source, "items": len(items)}

    def write(staging: Path) -> None:
        pq.write_table(pa.Table.from_pandas(events, preserve_index=False), staging / EVENTS_FILE)
        pq.write_table(pa.Table.from_pandas(items, preserve_index=False), staging / ITEMS_FILE)
        pq.write_table(vectors, staging / VECTORS_FILE)
        (staging / PIN_FILE).write_text(json.dumps(pin, indent=2) + "\n")

    folder = replace_dir(settings.models_dir / run_key_path(run_key) / "data", write, private=True)
    try:
        uri = store.put(folder, key, once=True)
    except ArtifactRefused:  # another try of the run pinned first: its data wins
        return fetch_training_data(settings, store.uri(key))
    return load_training_data(folder, uri)
