"""Unit tests of the consumer helpers: pseudonymising raw ids and personalised search order."""

from __future__ import annotations

import numpy as np

from tasks.config import Settings
from tasks.consumers import personalised_order, resolve_user
from tasks.pseudonymize import load_key, pseudonymize


def test_a_raw_customer_id_is_pseudonymised_with_the_ingest_key(shoprec_home: Settings) -> None:
    assert resolve_user(shoprec_home, "C-17") == pseudonymize("C-17", load_key(shoprec_home))


def test_a_pseudonym_is_looked_up_as_is(shoprec_home: Settings) -> None:
    pseudonym = "u_" + "ab" * 16
    assert resolve_user(shoprec_home, pseudonym) == pseudonym


def test_personalisation_lifts_items_close_to_the_users_history() -> None:
    vectors = {"mug": np.array([1.0, 0.0]), "tea": np.array([0.0, 1.0])}
    order = personalised_order([("mug", 0.50), ("tea", 0.45)], vectors, profile=np.array([0.0, 2.0]))
    assert [item for item, _ in order] == ["tea", "mug"]


def test_without_a_profile_the_query_order_is_kept() -> None:
    hits = [("mug", 0.5), ("tea", 0.45)]
    assert personalised_order(hits, {}, profile=None) == hits
