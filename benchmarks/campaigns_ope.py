"""Benchmark (campaigns_ope): off-policy estimators against the campaign simulator's truth as the log grows.

On the default synthetic shop (1,500 customers), for the oracle as target policy and uniform logging,
draws ``logs`` independent logs at each log size and reports, per estimator (IPS, SNIPS, DR), the
root-mean-square error against the true value, the bias of the mean estimate, the coverage of the 95%
intervals and the mean standard error; also the true value per customer of the trivial, logging and
oracle policies.  Simulated responses and logs come from a fixed seed (test data, not a privacy
mechanism).  Registered in ``benchmarks.run``; standalone:

    python -m benchmarks.campaigns_ope --logs 1000 --decisions 5000 --seed 1
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from benchmarks.harness import Context, Goal, Section
from tasks.campaigns import simulator
from tasks.campaigns.study import repeat_logs

SEED = 1
FULL_LOGS = 200
MIN_COVERAGE = 0.90  # the rate the OPE tests state for 95% intervals on uniform logs (docs/campaigns.md)


def true_values(population: simulator.Population) -> dict[str, float]:
    policies = {
        "nobody": simulator.nobody(population),
        **{f"everybody {o}": simulator.everybody(population, o) for o in population.actions[1:]},
        "uniform": simulator.uniform(population),
        "business rule": simulator.business_rule(population),
        "oracle": simulator.oracle(population),
    }
    return {name: simulator.true_value(population, probs) for name, probs in policies.items()}


def error_summary(
    population: simulator.Population,
    logging: np.ndarray,
    n_decisions: int,
    n_logs: int,
    rng: np.random.Generator,
) -> dict[str, dict[str, float]]:
    """Per estimator: rmse, bias, coverage, sd and mean se of the oracle's value over ``n_logs`` logs."""
    study = repeat_logs(
        population,
        logging,
        simulator.oracle(population),
        n_logs=n_logs,
        n_decisions=n_decisions,
        rng=rng,
    )
    return {
        name: row | {"rmse": float(np.hypot(row["bias"], row["sd"]))} for name, row in study.summary().items()
    }


def run(ctx: Context) -> Section:
    section = Section(key="campaigns_ope", title="Campaigns: off-policy estimators against the truth")
    sizes, n_logs = ((1_000, 5_000), 40) if ctx.quick else ((1_000, 5_000, 20_000), FULL_LOGS)
    rng = np.random.default_rng(SEED)
    population = simulator.build_population(rng)
    truth = true_values(population)
    values = section.table("True value per customer (simulator)", ["policy", "value"])
    for name, value in truth.items():
        values.add(name, value)
    uniform = simulator.uniform(population)
    errors = {size: error_summary(population, uniform, size, n_logs, rng) for size in sizes}
    table = section.table(
        f"Error against the oracle's true value {truth['oracle']:.3f}, uniform logging, {n_logs} logs per size",
        ["decisions", "estimator", "rmse", "bias", "coverage of 95% interval", "mean std. error"],
    )
    for size, rows in errors.items():
        for name, row in rows.items():
            table.add(size, name, row["rmse"], row["bias"], row["coverage"], row["mean_se"])
    worst = min(row["coverage"] for rows in errors.values() for row in rows.values())
    section.goals.append(
        Goal(
            f"every estimator's 95% interval covers the truth in at least {MIN_COVERAGE:.0%} of uniform "
            f"logs at every size (the OPE tests' rate; judged on the full run's {FULL_LOGS} logs per size)",
            None if ctx.quick else worst >= MIN_COVERAGE,
            f"lowest coverage {worst:.1%}",
        )
    )
    section.notes.append(
        f"default synthetic shop (1,500 customers), population and logs from seed {SEED} (test data); "
        "rmse = sqrt(bias^2 + sd^2) over the logs"
    )
    data: dict[str, Any] = {"true_values": truth, "errors": {str(k): v for k, v in errors.items()}}
    section.data = data
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=int, default=1000)
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    population = simulator.build_population(rng)
    for name, value in true_values(population).items():
        print(f"true value {name:22s} {value:7.3f} per customer")
    for name, logging in (
        ("uniform", simulator.uniform(population)),
        ("rule", simulator.business_rule(population)),
    ):
        for estimator, row in error_summary(population, logging, args.decisions, args.logs, rng).items():
            print(
                f"{name:8s} {estimator:6s} coverage {row['coverage']:.3f}  bias {row['bias']:+.3f}  "
                f"sd {row['sd']:.3f}  mean se {row['mean_se']:.3f}"
            )


if __name__ == "__main__":
    main()
