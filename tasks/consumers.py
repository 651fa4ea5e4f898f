"""Feature consumers' side: ``shoprec recommend USER`` and ``shoprec search "query" [--user USER]``.

Both read Feast like any other consumer: recommendations come from the feature service
``recommendations_v1`` in the online store (the live blue/green slot, see ``tasks.publishing``); a user
without a published list gets the ``popular:global`` list (DP popularity). Raw customer ids are
pseudonymised with the ingest key (``tasks.pseudonymize``) before any lookup; ids already in pseudonym
form are used as they are.

Search embeds the query with the packaged all-MiniLM-L6-v2 and ranks item title vectors by cosine
(``tasks.feast_store.search_items``). With a user it is personalised: candidates are re-ranked by
``cosine(query, item) + personal_weight * cosine(profile, item)``, where the profile is the mean title
vector of the user's own purchases (else recent items) read from the online ``user_features``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from tasks.config import Settings, get_settings
from tasks.contracts import ExpectedError
from tasks.embeddings import TextEncoder, load_pretrained_encoder
from tasks.feast_store import (
    ServiceNotRegistered,
    get_online_user_features,
    item_vectors,
    read_online_service,
    search_items,
)
from tasks.features import item_features_path
from tasks.pseudonymize import resolve_user as pseudonymize_user
from tasks.publishing import GLOBAL, POPULAR_PREFIX, SERVICE_NAME_DEFAULT

PERSONAL_WEIGHT: Final = 0.3
CANDIDATES: Final = 200


@dataclass(frozen=True)
class Recommendations:
    """One user's published list as a consumer reads it."""

    user_id: str  # the pseudonym looked up
    item_ids: list[str]
    scores: list[float]
    reasons: list[str]
    model_version: str | None
    publish_id: str | None
    fallback: bool = False  # True: the user had no list; this is popular:global
    titles: list[str] = field(default_factory=list)


def resolve_user(settings: Settings, user: str) -> str:
    """The pseudonym of ``user`` (:func:`tasks.pseudonymize.resolve_user`); popularity rows kept."""
    return user if user.startswith(POPULAR_PREFIX) else pseudonymize_user(settings, user)


def _titles(settings: Settings, item_ids: Sequence[str]) -> list[str]:

    path = item_features_path(settings)
    if not path.exists():
        return ["" for _ in item_ids]
    table = pq.read_table(path, columns=["item_id", "title"]).to_pydict()
    by_id = dict(zip(table["item_id"], table["title"], strict=True))
    return [str(by_id.get(i, "")) for i in item_ids]


class NothingPublished(ExpectedError):
    """No recommendations are published yet: the promotion gate has not promoted any model."""


def _read(settings: Settings, user_ids: Sequence[str]) -> dict[str, list[Any]]:
    try:
        return read_online_service(settings, SERVICE_NAME_DEFAULT, user_ids)
    except ServiceNotRegistered as missing:
        raise NothingPublished(
            f"nothing is published yet: feature service {SERVICE_NAME_DEFAULT} does not exist, so no model "
            "has been promoted (the gate kept no champion; its decision is on the model version in MLflow)"
        ) from missing


def get_recommendations(settings: Settings, user: str, k: int | None = None) -> Recommendations:
    """The published list of ``user`` (raw id or pseudonym), ``popular:global`` when there is none."""
    pseudonym = resolve_user(settings, user)
    fallback_key = f"{POPULAR_PREFIX}{GLOBAL}"
    data = _read(settings, [pseudonym, fallback_key])
    row = 0 if data["item_ids"][0] is not None else 1
    items = list(data["item_ids"][row] or [])[:k]
    return Recommendations(
        user_id=pseudonym,
        item_ids=items,
        scores=[float(s) for s in (data["scores"][row] or [])][: len(items)],
        reasons=list(data["reasons"][row] or [])[: len(items)],
        model_version=data["model_version"][row],
        publish_id=data["publish_id"][row],
        fallback=row == 1,
        titles=_titles(settings, items),
    )


def personalised_order(
    candidates: Sequence[tuple[str, float]],
    vectors: dict[str, np.ndarray],
    profile: np.ndarray | None,
    weight: float = PERSONAL_WEIGHT,
) -> list[tuple[str, float]]:
    """Re-rank (item, query cosine) by ``cosine + weight * cosine(profile, item)``; stable on ties."""
    if profile is None or not np.any(profile):
        return list(candidates)
    unit = profile / max(float(np.linalg.norm(profile)), 1e-12)
    scored = [(item, sim + weight * float(vectors[item] @ unit)) for item, sim in candidates]
    return sorted(scored, key=lambda pair: (-pair[1], pair[0]))


def _profile(settings: Settings, pseudonym: str, vectors: dict[str, np.ndarray]) -> np.ndarray | None:

    features = get_online_user_features(settings, [pseudonym])
    history = list((features.get("purchased_items") or [None])[0] or []) or list(
        (features.get("recent_items") or [None])[0] or []
    )
    known = [vectors[i] for i in history if i in vectors]
    return np.mean(known, axis=0) if known else None


def search(
    settings: Settings,
    query: str,
    *,
    user: str | None = None,
    k: int = 10,
    encoder: TextEncoder | None = None,
) -> list[tuple[str, str, float]]:
    """Semantic product search: (item_id, title, score), best first; personalised when ``user`` is given."""
    encoder = encoder or load_pretrained_encoder(package=settings.encoder_package)  # the items' encoder
    query_vector = encoder.encode([query])[0]
    hits = search_items(settings, query_vector, k if user is None else max(k, CANDIDATES))
    if user is not None:
        ids, matrix = item_vectors(settings)
        vectors = dict(zip(ids, matrix, strict=True))
        hits = personalised_order(hits, vectors, _profile(settings, resolve_user(settings, user), vectors))
    hits = hits[:k]
    titles = _titles(settings, [i for i, _ in hits])
    return [(i, t, s) for (i, s), t in zip(hits, titles, strict=True)]


# --- CLI functions (wired into tasks/cli.py as `shoprec recommend` / `shoprec search`) -------------
def recommend_command(user: str, k: int = 10) -> None:
    """Print ``user``'s published recommendations with scores and reasons."""
    settings = get_settings()
    recs = get_recommendations(settings, user, k)
    console = Console()
    note = " (no list for this user: popular items)" if recs.fallback else ""
    table = Table(
        title=f"recommendations for {recs.user_id}{note} — model {recs.model_version}, {recs.publish_id}"
    )
    for column in ("#", "item", "title", "score", "why"):
        table.add_column(column)
    for rank, (item, title, score, reason) in enumerate(
        zip(recs.item_ids, recs.titles, recs.scores, recs.reasons, strict=True), start=1
    ):
        table.add_row(str(rank), item, title, f"{score:.3f}", _why(settings, reason))
    console.print(table)


def _why(settings: Settings, reason: str) -> str:
    kind, _, value = reason.partition(":")
    if kind in {"bought", "viewed"}:
        return f"because you {kind} {_titles(settings, [value])[0] or value}"
    if kind == "popular":
        return f"popular ({value})"
    return ""


def search_command(query: str, user: str | None = None, k: int = 10) -> None:
    """Print the items whose titles best match ``query`` (personalised for ``user`` if given)."""
    hits = search(get_settings(), query, user=user, k=k)
    table = Table(title=f"search: {query!r}" + (f" for {user}" if user else ""))
    for column in ("#", "item", "title", "score"):
        table.add_column(column)
    for rank, (item, title, score) in enumerate(hits, start=1):
        table.add_row(str(rank), item, title, f"{score:.3f}")
    Console().print(table)
