"""One campaign round for ``shoprec demo``: land a simulated campaign, then read the round back.

:func:`land_campaign` simulates a campaign on the synthetic shop's own customers (the simulator's
ground truth, uniform logging by default) and lands it as the campaign system would:
``landing/date=D/offers.parquet`` and ``exposures.parquet`` with raw customer and decision ids, for
the ``ingest_campaigns`` DAG (:mod:`tasks.campaigns.ingest`) to pseudonymise, gate and put in the lake.
The per-customer features (``Settings.campaigns_dir/customers.parquet``, pseudonymised by the ingest
key) are the stand-in ``train_offer_policy`` still reads.  :func:`round_lines` reads the latest offer-policy run back from the stores it wrote (MLflow
tags, the DP release file, the candidate's probabilities) and returns the lines the demo prints.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pandas as pd

from tasks.campaigns import exposure, release, simulator
from tasks.campaigns.contracts import run_folder
from tasks.campaigns.policy import explore
from tasks.config import Settings
from tasks.contracts import partition_dir
from tasks.pseudonymize import load_key, pseudonymize
from tasks.sources.synthetic import SyntheticConfig

SHOWN_ESTIMATES = (
    "dr:candidate",
    "dr:running",
    "dr:nobody",
    "dr:candidate-nobody",
    "dr:running-nobody",
    "ips:candidate_cost",
)


def land_campaign(
    settings: Settings,
    *,
    shop: SyntheticConfig,
    day: dt.datetime,
    n_decisions: int,
    logging: str = "uniform",
    seed: int = 1,
) -> float:
    """Land one day of ``logging``'s decisions (``uniform`` or ``near_oracle``) on ``shop``'s customers;
    return the logging policy's true value per customer (the simulator's truth)."""

    if logging not in ("uniform", "near_oracle"):
        raise ValueError(f"logging must be 'uniform' or 'near_oracle', not {logging!r}")
    population = simulator.build_population(np.random.default_rng(seed), shop=shop)
    probs = (
        simulator.uniform(population) if logging == "uniform" else explore(simulator.oracle(population), 0.2)
    )
    rng = np.random.default_rng(seed + 1)
    decisions = simulator.draw_decisions(population, probs, n_decisions, rng)
    exposures = simulator.exposures_frame(
        population, decisions, policy_name=logging, policy_version="1", start=day, rng=rng
    )
    landing = partition_dir(settings.landing_dir, day.date())
    landing.mkdir(parents=True, exist_ok=True)
    # the campaign system's own tables, raw ids included, as they land (tasks.campaigns.ingest reads them)
    population.offers_frame().to_parquet(landing / "offers.parquet", index=False)
    exposures.to_parquet(landing / "exposures.parquet", index=False)
    key = load_key(settings)
    pseudonyms = {raw: pseudonymize(str(raw), key) for raw in population.user_id}
    customers = pd.DataFrame(population.features(), columns=list(simulator.FEATURE_NAMES))
    customers.insert(0, "user_id", [pseudonyms[raw] for raw in population.user_id])
    customers.insert(1, "country", population.country.astype(str))
    settings.campaigns_dir.mkdir(parents=True, exist_ok=True)
    customers.to_parquet(settings.campaigns_dir / "customers.parquet", index=False)
    return simulator.true_value(population, probs)


def latest_version(settings: Settings) -> Any | None:
    """The newest registered version of the offer policy (None before the first run)."""
    from tasks.registry import client

    versions = client(settings).search_model_versions(f"name = '{settings.offer_registered_model_name}'")
    return max(versions, key=lambda v: int(v.version)) if versions else None


def round_lines(settings: Settings, users: int = 3) -> list[str]:
    """The latest round: the gate's decision, the DP-released estimates, a few customers' action
    probabilities and the DP exposure report of the published decision set."""
    version = latest_version(settings)
    if version is None:
        return ["[bold]offer policy[/]: none registered"]
    tags = dict(version.tags)
    folder = run_folder(settings, tags["shoprec.run_key"])
    lines = [
        f"[bold]offer policy[/]: {settings.offer_registered_model_name} version {version.version}, "
        f"gate {tags.get('gate.decision', '?')}",
        *(f"  {reason}" for reason in tags.get("gate.reasons", "").split("; ") if reason),
    ]
    releases = sorted(folder.glob(f"{release.PURPOSE}-charge*.json"))
    if releases:
        rows = {row["name"]: row for row in json.loads(releases[-1].read_text())}
        first = next(iter(rows.values()))
        lines.append(
            f"  released estimates per customer, ({first['epsilon']:.3g}, {first['delta']:.2e})-DP per "
            f"{first['unit']}, accountant {first['accountant']}:"
        )
        for name in SHOWN_ESTIMATES:
            if name in rows:
                row = rows[name]
                lines.append(
                    f"    {name}: {row['value']:.3f} [{row['low']:.3f}, {row['high']:.3f}] "
                    f"({row['level']:.0%})"
                )
    candidate_path = folder / "candidate.parquet"
    if candidate_path.exists():
        candidate = pd.read_parquet(candidate_path)
        actions = [c for c in candidate.columns if c != "user_id"]
        lines.append("  decisions (action probabilities of the candidate policy):")
        for _, row in candidate.head(users).iterrows():
            shown = ", ".join(f"{a} {row[a]:.2f}" for a in actions)
            lines.append(f"    {str(row['user_id'])[:12]}..: {shown}")
    reports = sorted(folder.glob(f"{exposure.PURPOSE}-charge*.json"))
    if reports:
        lines += [f"  {line}" for line in exposure.summary_lines(json.loads(reports[-1].read_text()))]
    elif tags.get("gate.decision") != "promoted":
        lines.append("  nothing published (gate refused), so no exposure report")
    return lines
