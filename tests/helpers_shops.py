"""Synthetic shops shared by the tests that need the promotion gate to promote a first model."""

from __future__ import annotations

import datetime as dt

from tasks.sources.synthetic import SyntheticConfig


def personal_taste_shop(
    n_users: int, n_items: int, *, days: int = 35, start: dt.date | None = None
) -> SyntheticConfig:
    """A small shop whose customers' own taste is stronger than popularity (flat Zipf, focused categories).

    The chain tests need the gate to promote the first model: it must beat the strongest non-private
    baseline in each variant (buy again in A, co-occurrence in B on these shops). DP-SGD noise is drawn
    from OS entropy (never seeded), so the model's quality varies between runs; the promotion rate and
    the margins over that baseline are measured by ``python scripts/gate_promotion_rate.py chain|dag N``.
    With 60 items buy again is strong in A (the margin came down to 0.0003 once); 150 items leave the
    personal taste to the model.
    """
    extra = {"start": start} if start is not None else {}
    return SyntheticConfig(
        n_users=n_users,
        n_items=n_items,
        days=days,
        seed=3,
        zipf_exponent=0.6,
        affinity_concentration=0.1,
        **extra,
    )


# test_publish_chain and the production e2e (a real MiniLM encoder, epsilon 8, 5 epochs)
CHAIN_SHOP: SyntheticConfig = personal_taste_shop(300, 150)
# test_train_recommender_dag and test_train_register_two_machines (a tiny random encoder)
DAG_TEST_SHOP: SyntheticConfig = personal_taste_shop(400, 80)
