"""The offer-policy gate decides from DP-released estimates: the candidate's lower bound against the
running policy's estimate, and the expected daily redemption cost against the budget."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.campaigns.pipeline import decide
from tasks.config import Settings


def _released(candidate_low: float, running: float, cost_per_customer: float) -> list[dict[str, Any]]:
    common = {
        "std_error": 0.1,
        "high": 9.0,
        "level": 0.95,
        "epsilon": 1.0,
        "delta": 1e-5,
        "accountant": "opacus-rdp",
        "unit": "user",
    }
    return [
        {"name": "dr:candidate-nobody", "value": candidate_low + 0.2, "low": candidate_low, **common},
        {"name": "dr:running-nobody", "value": running, "low": running - 0.2, **common},
        {"name": "ips:candidate_cost", "value": cost_per_customer, "low": 0.0, **common},
    ]


def test_promotes_only_when_the_lower_bound_beats_the_running_policy(shoprec_home: Settings) -> None:
    assert decide(shoprec_home, _released(0.51, 0.5, 1.0)).promote
    refused = decide(shoprec_home, _released(0.49, 0.5, 1.0))
    assert not refused.promote
    assert "does not beat the running policy's 0.500" in refused.reasons[0]
    assert refused.to_tags()["gate.decision"] == "rejected"


def test_refuses_a_better_policy_over_the_daily_cost_budget(shoprec_home: Settings) -> None:
    settings = shoprec_home.model_copy(
        update={"offer_daily_audience": 1000, "offer_daily_cost_budget": 500.0}
    )
    assert decide(settings, _released(2.0, 0.5, 0.5)).promote  # 500 per day: within
    over = decide(settings, _released(2.0, 0.5, 0.51))
    assert not over.promote
    assert over.daily_cost == pytest.approx(510.0)
    assert "over the budget 500" in over.reasons[1]
