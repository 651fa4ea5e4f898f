"""The data one training run reads, fixed at its first try: a retry and the registration see the same.

A ``train_recommender`` run trains on the lake days up to the last day its triggering ``features``
asset events name (``partitions``; a manual run without them: the lake's latest partition at the first
try) and on the item catalog as of that day's end (items first seen before it, with their title
vectors). :func:`pin_training_data` (the DAG's ``pin_training_data`` task, on a worker that has the
lake and Feast's offline store) writes that choice once, as a folder: ``data.json`` with the days and
the days of the window that ingest rejected (more than ``SHOPREC_MAX_REJECTED_DAY_SHARE`` of them
refuses the run, :class:`TrainingRefused`, and nothing is pinned), ``events.parquet``, the clean
events of exactly those days, ``items.parquet`` plus ``item_vectors.parquet``, the catalog copy, and
``state.parquet``, the Feast point-in-time rows (``recommender_v1``) of every (user, time) the run
reads (:func:`state_requests`). It puts the folder write-once in the shared artifact store
(:mod:`tasks.artifacts`, key ``runs/<run>/data``) and hands on its URI only. ``train_model`` (on the
GPU worker, any try), ``register_and_gate`` and ``record_membership_losses`` fetch that folder by its
URI (:func:`fetch_training_data`) and read nothing else of the lake or of Feast: the same events,
catalog and user state however the lake and the catalog grew since (new days landing during a
backfill, new items), and without the lake's disk.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
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
from tasks.dataset import Cuts, training_user_cuts, users_before
from tasks.feast_store import get_training_frame, item_vectors
from tasks.features import read_events, read_items, snapshot_time
from tasks.ingest import rejected_days
from tasks.io import replace_dir

log = logging.getLogger(__name__)

PIN_FILE: Final = "data.json"
ITEMS_FILE: Final = "items.parquet"
VECTORS_FILE: Final = "item_vectors.parquet"
EVENTS_FILE: Final = "events.parquet"
STATE_FILE: Final = "state.parquet"
STATE_KEYS: Final = ["user_id", "event_timestamp"]


class TrainingRefused(ValueError):
    """Training will not run on this data; the message says why."""


def refuse_if_too_many_rejected(settings: Settings, lake_days: Sequence[dt.date]) -> list[dt.date]:
    """The days of the training window (first to last lake day) that ingest rejected.

    Raises :class:`TrainingRefused` when they are more than ``max_rejected_day_share`` of the window's
    days with data (lake days plus rejected days): a model trained on what is left would not describe
    the shop.
    """
    rejected = rejected_days(settings, lake_days[0], lake_days[-1])
    share = len(rejected) / (len(lake_days) + len(rejected))
    if share > settings.max_rejected_day_share:
        shown = ", ".join(d.isoformat() for d in rejected[:10]) + (" ..." if len(rejected) > 10 else "")
        raise TrainingRefused(
            f"training refused: {len(rejected)} of {len(lake_days) + len(rejected)} days in its window "
            f"{lake_days[0]}..{lake_days[-1]} were rejected by ingest ({share:.1%} > "
            f"SHOPREC_MAX_REJECTED_DAY_SHARE {settings.max_rejected_day_share:.1%}): {shown}; "
            f"see {settings.quarantine_dir}/date=D/report.json"
        )
    if rejected:
        log.warning("training window has %d rejected days: %s", len(rejected), rejected)
    return rejected


def _state_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame``'s (user_id, event_timestamp) as str and UTC nanoseconds, the state's lookup key."""
    return pd.DataFrame(
        {
            "user_id": frame["user_id"].astype(str).to_numpy(),
            "event_timestamp": pd.to_datetime(frame["event_timestamp"], utc=True).astype(
                "datetime64[ns, UTC]"
            ),
        }
    )


def state_requests(settings: Settings, events: pd.DataFrame, cuts: Cuts) -> pd.DataFrame:
    """Every (user_id, event_timestamp) whose ``recommender_v1`` state a run on ``events`` reads, once:

    - each candidate user at their own cut before the validation cut, held-out users included
      (``run_training`` trains on the others; the membership audit scores all of them);
    - every user at the validation cut (``run_training``'s blend tuning);
    - every user with an event before the test cut, at the test cut (``register_and_gate``);
    - each candidate user at their own cut before the data's end (the served refit,
      ``SHOPREC_TRAIN_REFIT``; pinned whatever that setting, so a retry may change it).
    """
    candidates = training_user_cuts(settings, events, cuts.validation, with_held_out=True)
    latest = training_user_cuts(settings, events, cuts.as_of, with_held_out=True)
    everyone = sorted(events["user_id"].astype(str).unique())
    requests = [
        candidates.rename(columns={"cut": "event_timestamp"}),
        pd.DataFrame({"user_id": everyone, "event_timestamp": cuts.validation}),
        pd.DataFrame({"user_id": users_before(events, cuts.test), "event_timestamp": cuts.test}),
        latest.rename(columns={"cut": "event_timestamp"}),
    ]
    return _state_keys(pd.concat(requests, ignore_index=True)).drop_duplicates(ignore_index=True)


@dataclass(frozen=True)
class TrainingData:
    """A run's pinned data: the lake days it reads (the last is its data end), their events and the
    catalog copy, in the local folder ``folder``, fetched from (or put at) ``uri`` in the store."""

    folder: Path
    days: tuple[dt.date, ...]
    source: str  # where the data end came from: "asset events or run conf" / "latest lake partition"
    rejected: tuple[dt.date, ...] = ()  # days of the window that ingest rejected (quarantined)
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

    @cached_property
    def _state(self) -> pd.DataFrame:
        pinned = pq.read_table(self.folder / STATE_FILE).to_pandas()
        return pd.concat([_state_keys(pinned), pinned.drop(columns=STATE_KEYS)], axis=1)

    def state_rows(self, entity: pd.DataFrame) -> pd.DataFrame:
        """The pinned Feast rows of ``entity``'s (user_id, event_timestamp), in its order (a
        :data:`tasks.dataset.StateSource`). Raises KeyError for a pair the pin did not take: the run
        would read state that :func:`state_requests` does not list."""
        found = _state_keys(entity).merge(
            self._state, on=STATE_KEYS, how="left", indicator=True, validate="many_to_one"
        )
        missing = found[found["_merge"] != "both"]
        if len(missing):
            first = missing.iloc[0]
            raise KeyError(
                f"{len(missing)} (user, time) pairs are not in the pinned state of {self.uri or self.folder} "
                f"(first: {first['user_id']} at {first['event_timestamp']}); tasks.training_data."
                "state_requests must list every state a run reads"
            )
        return found.drop(columns="_merge")


def load_training_data(folder: Path, uri: str = "") -> TrainingData:
    """The data pinned in the local folder ``folder`` (put at ``uri``)."""
    pin = json.loads((folder / PIN_FILE).read_text())
    return TrainingData(
        folder=folder,
        days=tuple(dt.date.fromisoformat(d) for d in pin["days"]),
        source=pin["source"],
        rejected=tuple(dt.date.fromisoformat(d) for d in pin["rejected"]),
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
    pinned it, else chosen now from the lake, the catalog and Feast, written below the run's local
    folder and put in the store write-once.

    ``named_days``: the days the run's triggering asset events (or its conf) name; the data end is the
    last of them, else the lake's latest partition now. Raises FileNotFoundError when the lake has no
    partition up to the data end, :class:`TrainingRefused` (nothing pinned) when too many of the
    window's days were rejected.
    """
    store = artifact_store(settings)
    key = f"runs/{run_key_path(run_key)}/data"
    if store.exists(store.uri(key)):
        return fetch_training_data(settings, store.uri(key))
    days = pinned_days(list_partitions(settings.events_dir), named_days)
    if not days:
        end = max(named_days) if named_days else None
        raise FileNotFoundError(f"no event partitions under {settings.events_dir} up to {end}")
    rejected = refuse_if_too_many_rejected(settings, days)
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
    state = get_training_frame(
        settings, state_requests(settings, events, Cuts.from_end(as_of, settings.eval_days))
    )
    pin = {
        "days": [d.isoformat() for d in days],
        "source": source,
        "items": len(items),
        "rejected": [d.isoformat() for d in rejected],
        "state_rows": len(state),
    }

    def write(staging: Path) -> None:
        pq.write_table(pa.Table.from_pandas(events, preserve_index=False), staging / EVENTS_FILE)
        pq.write_table(pa.Table.from_pandas(items, preserve_index=False), staging / ITEMS_FILE)
        pq.write_table(vectors, staging / VECTORS_FILE)
        pq.write_table(pa.Table.from_pandas(state, preserve_index=False), staging / STATE_FILE)
        (staging / PIN_FILE).write_text(json.dumps(pin, indent=2) + "\n")

    folder = replace_dir(settings.models_dir / run_key_path(run_key) / "data", write, private=True)
    try:
        uri = store.put(folder, key, once=True)
    except ArtifactRefused:  # another try of the run pinned first: its data wins
        return fetch_training_data(settings, store.uri(key))
    return load_training_data(folder, uri)
