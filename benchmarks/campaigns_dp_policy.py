"""The DP-SGD offer policy against the simulator's truth, per user-level epsilon (``make bench``: ``campaigns_dp_policy``).

On the default synthetic shop (1,500 customers) and one uniformly logged campaign of ``--decisions``
decisions, trains the user-level DP reward model (:mod:`tasks.campaigns.dp_reward`, each run charged
on its own throw-away ledger at delta 1 / (10 * users)) at each ``--epsilons`` value ``--repeats``
times, and prints the true value per customer of its epsilon-greedy (0.1) policy, with the
non-private per-action ridge policy, the logging policy and the oracle for reference.  ``--seed``
fixes the simulated shop and log (test data); the DP noise always comes from OS entropy.

    python -m benchmarks.campaigns_dp_policy --epsilons 1 2 4 8 --repeats 3 --seed 1

The non-private reference Vowpal Wabbit ``--cb_explore_adf`` (:mod:`tasks.campaigns.vw_reference`,
epsilon-greedy 0.1) is trained on the same log; its true value is in the reference table, and its
IPS / SNIPS / DR estimates on a second, independent log of the same logging policy are set against
that truth.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.campaigns_ope import true_values
from benchmarks.harness import Context, Goal, Section
from tasks.campaigns import dp_reward, policy, simulator, study
from tasks.campaigns.vw_reference import fit_vw_reference
from tasks.config import Settings

SEED = 1
EPSILONS = (1.0, 2.0, 4.0, 8.0)
WINDOW = (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 29, tzinfo=dt.UTC))


@dataclass(frozen=True)
class DpRuns:
    """True values per customer of the DP policy's runs at one epsilon, and what the ledger charged."""

    epsilon: float
    values: list[float]
    spent: float
    delta: float
    noise_multiplier: float
    steps: int


def reference_values(population: simulator.Population, log: simulator.Decisions) -> dict[str, float]:
    """True value per customer of the trivial, logging (uniform), rule and oracle policies
    (:func:`benchmarks.campaigns_ope.true_values`) and of the non-private per-action ridge policy."""
    features = population.features()
    ridge = policy.fit_offer_policy(features[log.users], log.actions, log.rewards, population.n_actions)
    return true_values(population) | {
        "non-private ridge": simulator.true_value(population, ridge.probabilities(features)),
        VW: simulator.true_value(population, vw_probabilities(population, log)),
    }


VW = "non-private VW cb_explore_adf"


def vw_probabilities(population: simulator.Population, log: simulator.Decisions) -> np.ndarray:
    """The VW reference trained on ``log``: its action probabilities per customer (example order and
    exploration draws from a fixed generator: test data, no privacy mechanism)."""
    features = population.features()
    vw = fit_vw_reference(
        features[log.users],
        log.actions,
        log.rewards,
        log.propensities,
        population.n_actions,
        np.random.default_rng(SEED + 1),
    )
    try:
        return vw.probabilities(features)
    finally:
        vw.close()


def vw_estimates(
    population: simulator.Population, log: simulator.Decisions, rng: np.random.Generator
) -> dict[str, dict[str, float]]:
    """IPS / SNIPS / DR of the VW reference on a fresh log of the same size and logging policy."""
    probs = vw_probabilities(population, log)
    held = simulator.draw_decisions(population, simulator.uniform(population), len(log.users), rng)
    estimates = study.estimate_all(population, held, probs, rng)
    return {name: {"value": e.value, "low": e.low, "high": e.high} for name, e in estimates.items()} | {
        "truth": {"value": simulator.true_value(population, probs)}
    }


def dp_runs(
    population: simulator.Population, log: simulator.Decisions, epsilon: float, repeats: int
) -> DpRuns:
    """Train the DP reward model ``repeats`` times at ``epsilon`` (each on its own throw-away ledger)."""
    features = population.features()
    config = dp_reward.DpRewardConfig()
    examples = dp_reward.group_by_user(
        population.user_id[log.users], features[log.users], log.actions, log.rewards, config.cap_k
    )
    values, spent = [], []
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(home=Path(tmp), privacy_epsilon_cap=max(epsilon * 2, 10.0))
            trained = dp_reward.train_charged(
                settings,
                run_key=f"bench-{epsilon}-{repeat}",
                examples=examples,
                n_actions=population.n_actions,
                data_window=WINDOW,
                epsilon=epsilon,
                config=config,
            )
        probs = policy.OfferPolicy(trained.model, epsilon=0.1).probabilities(features)
        values.append(simulator.true_value(population, probs))
        spent.append(trained.epsilon)
    return DpRuns(epsilon, values, max(spent), trained.delta, trained.noise_multiplier, trained.steps)


def run(ctx: Context) -> Section:
    section = Section(
        key="campaigns_dp_policy", title="Campaigns: the DP offer policy's true value per epsilon"
    )
    decisions, repeats = (10_000, 1) if ctx.quick else (20_000, 3)
    rng = np.random.default_rng(SEED)
    population = simulator.build_population(rng)
    log = simulator.draw_decisions(population, simulator.uniform(population), decisions, rng)
    reference = reference_values(population, log)
    table = section.table(
        f"True value per customer (simulator), uniform log of {decisions:,} decisions, "
        f"{repeats} DP run(s) per epsilon",
        ["policy", "user-level epsilon (ledger)", "true value", "runs"],
    )
    for name, value in reference.items():
        table.add(name, "-", value, "")
    runs = [dp_runs(population, log, epsilon, repeats) for epsilon in EPSILONS]
    for r in runs:
        table.add(
            "DP-SGD reward model, epsilon-greedy 0.1",
            f"{r.spent:.3f} (asked {r.epsilon:g})",
            float(np.mean(r.values)),
            ", ".join(f"{v:.3f}" for v in r.values),
        )
    estimates = vw_estimates(population, log, rng)
    ope_table = section.table(
        "Vowpal Wabbit reference judged off-policy on a second uniform log of the same size",
        ["estimator", "estimate", "95% interval", "true value"],
    )
    for name in ("ips", "snips", "dr"):
        e = estimates[name]
        ope_table.add(name, e["value"], f"[{e['low']:.3f}, {e['high']:.3f}]", estimates["truth"]["value"])
    at_eight = runs[EPSILONS.index(8.0)]
    section.goals.append(
        Goal(
            "at user-level epsilon 8 the learned policy is worth more than the uniform logging policy (true value)",
            bool(np.mean(at_eight.values) > reference["uniform"]),
            f"{np.mean(at_eight.values):.3f} vs {reference['uniform']:.3f} per customer",
        )
    )
    section.notes.append(
        f"default synthetic shop (1,500 customers), shop and log from seed {SEED} (test data); DP noise from "
        f"OS entropy; delta {runs[0].delta:.2e}; each run charged on its own throw-away ledger"
    )
    section.data = {"reference": reference, "dp": [asdict(r) for r in runs], "vw_ope": estimates}
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    population = simulator.build_population(rng)
    log = simulator.draw_decisions(population, simulator.uniform(population), args.decisions, rng)
    for name, value in reference_values(population, log).items():
        print(f"true value {name:24s} {value:7.3f} per customer")
    for name, e in vw_estimates(population, log, rng).items():
        print(
            f"VW reference on a second log: {name:6s} {e['value']:7.3f} {e.get('low', '')} {e.get('high', '')}"
        )
    for epsilon in args.epsilons:
        r = dp_runs(population, log, epsilon, args.repeats)
        print(
            f"true value DP-SGD epsilon {epsilon:<5g}        mean {np.mean(r.values):7.3f} per customer "
            f"(runs: {', '.join(f'{v:.3f}' for v in r.values)}; ledger epsilon {r.spent:.3f} at delta "
            f"{r.delta:.2e}, noise multiplier {r.noise_multiplier:.3f}, {r.steps} steps)"
        )


if __name__ == "__main__":
    main()
