"""Off-policy estimators against the campaign simulator's truth (not yet part of ``make bench``).

Prints the true value per customer of the trivial, logging and oracle policies, then, per logging
policy and estimator, the coverage of the 95% intervals, the bias of the mean
estimate, the spread of the estimates and their mean standard error, for the oracle target policy on
the default synthetic shop (1,500 customers).  ``--seed`` fixes the simulated responses and logs
(test data, not a privacy mechanism); without it each run draws new ones.

    python -m benchmarks.campaigns_ope --logs 1000 --decisions 5000 --seed 1
"""

from __future__ import annotations

import argparse

import numpy as np

from tasks.campaigns import simulator
from tasks.campaigns.study import repeat_logs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=int, default=1000)
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    population = simulator.build_population(rng)
    target = simulator.oracle(population)
    policies = {
        "nobody": simulator.nobody(population),
        **{f"everybody {o}": simulator.everybody(population, o) for o in population.actions[1:]},
        "uniform": simulator.uniform(population),
        "business rule": simulator.business_rule(population),
        "oracle": target,
    }
    for name, probs in policies.items():
        print(f"true value {name:22s} {simulator.true_value(population, probs):7.3f} per customer")
    for name, logging in (
        ("uniform", simulator.uniform(population)),
        ("rule", simulator.business_rule(population)),
    ):
        study = repeat_logs(
            population, logging, target, n_logs=args.logs, n_decisions=args.decisions, rng=rng
        )
        for estimator, row in study.summary().items():
            print(
                f"{name:8s} {estimator:6s} coverage {row['coverage']:.3f}  bias {row['bias']:+.3f}  "
                f"sd {row['sd']:.3f}  mean se {row['mean_se']:.3f}"
            )


if __name__ == "__main__":
    main()
