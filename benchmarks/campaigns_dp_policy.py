"""The DP-SGD offer policy against the simulator's truth, per user-level epsilon (not yet in ``make bench``).

On the default synthetic shop (1,500 customers) and one uniformly logged campaign of ``--decisions``
decisions, trains the user-level DP reward model (:mod:`tasks.campaigns.dp_reward`, each run charged
on its own throw-away ledger at delta 1 / (10 * users)) at each ``--epsilons`` value ``--repeats``
times, and prints the true value per customer of its epsilon-greedy (0.1) policy, with the
non-private per-action ridge policy, the logging policy and the oracle for reference.  ``--seed``
fixes the simulated shop and log (test data); the DP noise always comes from OS entropy.

    python -m benchmarks.campaigns_dp_policy --epsilons 1 2 4 8 --repeats 3 --seed 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
from pathlib import Path

import numpy as np

from tasks.campaigns import dp_reward, policy, simulator
from tasks.config import Settings

WINDOW = (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 29, tzinfo=dt.UTC))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    population = simulator.build_population(rng)
    features = population.features()
    log = simulator.draw_decisions(population, simulator.uniform(population), args.decisions, rng)
    ridge = policy.fit_offer_policy(features[log.users], log.actions, log.rewards, population.n_actions)
    for name, probs in (
        ("uniform (logging)", simulator.uniform(population)),
        ("nobody", simulator.nobody(population)),
        ("non-private ridge", ridge.probabilities(features)),
        ("oracle", simulator.oracle(population)),
    ):
        print(f"true value {name:24s} {simulator.true_value(population, probs):7.3f} per customer")
    config = dp_reward.DpRewardConfig()
    examples = dp_reward.group_by_user(
        population.user_id[log.users], features[log.users], log.actions, log.rewards, config.cap_k
    )
    for epsilon in args.epsilons:
        values, spent = [], []
        for repeat in range(args.repeats):
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
        print(
            f"true value DP-SGD epsilon {epsilon:<5g}        mean {np.mean(values):7.3f} per customer "
            f"(runs: {', '.join(f'{v:.3f}' for v in values)}; ledger epsilon {max(spent):.3f} at delta "
            f"{trained.delta:.2e}, noise multiplier {trained.noise_multiplier:.3f}, {trained.steps} steps)"
        )


if __name__ == "__main__":
    main()
