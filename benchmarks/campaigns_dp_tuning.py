"""Tune the DP offer reward model's settings on VALIDATION logs, never on the evaluation log.

    python -m benchmarks.campaigns_dp_tuning --epsilon 2 --repeats 2

Same shop as ``benchmarks.campaigns_dp_policy`` (default synthetic shop, population from seed 1), but
two other logs of the uniform logging policy: a training log (seed ``TRAIN_SEED``) and a validation log
(seed ``VALIDATION_SEED``), both independent of the evaluation log the benchmark draws (seed 1). Each
candidate :class:`~tasks.campaigns.dp_reward.DpRewardConfig` is trained with user-level DP-SGD on the
training log (each run on its own throw-away ledger, noise from OS entropy) and its 0.1-greedy policy is
scored by the DR estimate on the validation log, as it would be on real logs (no simulator truth is used
to choose). Prints one JSON line per run and the chosen setting (highest mean DR estimate). ``--grid`` takes
another list of changes as JSON, e.g. ``'[{}, {"epochs": 15}]'``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import tempfile
from pathlib import Path

import numpy as np

from tasks.campaigns import dp_reward, policy, simulator, study
from tasks.config import Settings

SEED = 1  # the shop (population) of benchmarks.campaigns_dp_policy
TRAIN_SEED = 1001
VALIDATION_SEED = 1002
WINDOW = (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 29, tzinfo=dt.UTC))
GRID: tuple[dict[str, float], ...] = (
    {},  # the defaults
    {"lr": 0.05},
    {"lr": 0.01},
    {"epochs": 15},
    {"epochs": 60},
    {"clip_norm": 0.5},
    {"hidden": 64},
)


def logs(decisions: int) -> tuple[simulator.Population, simulator.Decisions, simulator.Decisions]:
    population = simulator.build_population(np.random.default_rng(SEED))
    uniform = simulator.uniform(population)
    train = simulator.draw_decisions(population, uniform, decisions, np.random.default_rng(TRAIN_SEED))
    validation = simulator.draw_decisions(
        population, uniform, decisions, np.random.default_rng(VALIDATION_SEED)
    )
    return population, train, validation


def train_policy(
    population: simulator.Population,
    log: simulator.Decisions,
    config: dp_reward.DpRewardConfig,
    epsilon: float,
) -> np.ndarray:
    """The 0.1-greedy policy of one DP-SGD reward model trained on ``log`` (per-customer probabilities)."""
    features = population.features()
    examples = dp_reward.group_by_user(
        population.user_id[log.users], features[log.users], log.actions, log.rewards, config.cap_k
    )
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp), privacy_epsilon_cap=max(epsilon * 2, 10.0))
        trained = dp_reward.train_charged(
            settings,
            run_key="tune",
            examples=examples,
            n_actions=population.n_actions,
            data_window=WINDOW,
            epsilon=epsilon,
            config=config,
        )
    return policy.OfferPolicy(trained.model, epsilon=0.1).probabilities(features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilon", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument(
        "--grid",
        type=json.loads,
        default=list(GRID),
        help="JSON list of DpRewardConfig changes ({} = defaults)",
    )
    args = parser.parse_args()
    population, train, validation = logs(args.decisions)
    rng = np.random.default_rng(VALIDATION_SEED + 1)  # cross-fitting folds of DR (test data)
    scores: dict[str, list[float]] = {}
    for change in args.grid:
        config = dataclasses.replace(dp_reward.DpRewardConfig(), **change)
        name = json.dumps(change, sort_keys=True) if change else "defaults"
        for repeat in range(args.repeats):
            probs = train_policy(population, train, config, args.epsilon)
            dr = study.estimate_all(population, validation, probs, rng)["dr"]
            scores.setdefault(name, []).append(dr.value)
            print(json.dumps({"setting": name, "repeat": repeat, "validation_dr": round(dr.value, 4),
                              "low": round(dr.low, 4), "high": round(dr.high, 4)}), flush=True)  # fmt: skip
    means = {name: float(np.mean(values)) for name, values in scores.items()}
    best = max(means, key=means.__getitem__)
    print(json.dumps({"epsilon": args.epsilon, "mean_validation_dr": means, "chosen": best}))


if __name__ == "__main__":
    main()
