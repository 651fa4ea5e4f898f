"""Off-policy estimators against the campaign simulator's truth (not yet part of ``make bench``).

Prints, per logging policy and estimator, the coverage of the 95% intervals, the bias of the mean
estimate, the spread of the estimates and their mean standard error, for the oracle target policy on
the default synthetic shop (1,500 customers).

    python -m benchmarks.campaigns_ope --logs 1000 --decisions 5000
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
    args = parser.parse_args()
    rng = np.random.default_rng()
    population = simulator.build_population(rng)
    target = simulator.oracle(population)
    print(f"oracle true value {simulator.true_value(population, target):.3f} per customer")
    for name, logging in (
        ("uniform", simulator.uniform(population)),
        ("rule", simulator.business_rule(population)),
    ):
        study = repeat_logs(
            population, logging, target, n_logs=args.logs, n_decisions=args.decisions, rng=rng
        )
        for estimator, row in study.summary().items():
            print(f"{name:8s} {estimator:6s} " + "  ".join(f"{k} {v:+.3f}" for k, v in row.items()))


if __name__ == "__main__":
    main()
