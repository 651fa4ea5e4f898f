"""Choose the two-tower's settings on the VALIDATION window only (issue 17, item 1).

    nice -n 10 python -m benchmarks.model_sweep [--epsilon 8] [--only base,temperature 0.1] [--seeds 0]

Online Retail II 2009-2010, the quality benchmark's protocol (:func:`benchmarks.quality.prepare`):
training set as ``run_training`` builds it, before the validation cut; every model is scored on the
validation window ``[validation, test)`` and never on the test window. Each row changes one setting
(``Settings`` field) from the pipeline's defaults and trains through the shipped functions
(:func:`benchmarks.quality.fit_bare`): the non-private twin and DP-SGD at ``--epsilon`` (user level,
delta = 1 / (10 N), RDP accountant). Prints one line per run (bare model NDCG@10, variants A and B).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness import Context
from benchmarks.quality import fit_bare, online_retail, prepare

# one change at a time from the Settings defaults
CHANGES: dict[str, dict[str, Any]] = {
    "base": {},
    "item tower residual": {"train_item_tower": "residual"},
    "item tower mlp": {"train_item_tower": "mlp"},
    "user features on": {"train_user_features": True},
    "user tower mean": {"train_user_tower": "mean"},
    "temperature 0.1": {"train_temperature": 0.1},
    "temperature 0.2": {"train_temperature": 0.2},
    "lr 2e-3 / 1e-3": {"train_lr": 2e-3, "train_lr_nonprivate": 1e-3},
    "lr 1e-2 / 5e-3": {"train_lr": 1e-2, "train_lr_nonprivate": 5e-3},
    "steps 80": {"train_steps": 80},
    "steps 320": {"train_steps": 320},
    "sample rate 0.1": {"train_sample_rate": 0.1},
    "clip 0.5": {"train_clip_norm": 0.5},
    "clip 2": {"train_clip_norm": 2.0},
    "negatives 32": {"train_negatives": 32},
    "positives 20": {"train_cap_k": 20},
}


def main(argv: list[str] | None = None) -> None:
    from tasks.config import get_settings
    from tasks.evaluation import evaluate_scores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--only", default="", help="comma-separated change names (default: all)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--no-private", action="store_true", help="only the non-private twin")
    parser.add_argument("--no-twin", action="store_true", help="only DP-SGD")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(CHANGES)
    unknown = [n for n in names if n not in CHANGES]
    if unknown:
        raise SystemExit(f"unknown change(s) {unknown}; known: {list(CHANGES)}")
    with tempfile.TemporaryDirectory(prefix="shoprec-sweep-") as scratch:
        ctx = Context(quick=True, work_dir=Path(scratch), figures_dir=Path(scratch), figures_link="")
        events, items = online_retail(ctx)
        prep = prepare(events, items, 28, None)
    base = get_settings()
    print(
        f"validation window {prep.cuts.validation} .. {prep.cuts.test}: {prep.val.n_users} users", flush=True
    )
    for name in names:
        settings = base.model_copy(update=CHANGES[name])
        for seed in (int(s) for s in args.seeds.split(",")):
            kinds = ([] if args.no_twin else [False]) + ([] if args.no_private else [True])
            for private in kinds:
                bare, result, seconds = fit_bare(
                    prep, settings, private=private, epsilon=args.epsilon if private else None, seed=seed
                )
                report = evaluate_scores(name, bare.model_scores(prep.val.state), prep.val, prep.catalog)
                what = f"DP eps {result.epsilon:.2f}" if private else "no DP"
                print(
                    f"{name:24s} seed {seed} {what:12s} VALIDATION NDCG@10 A {report.metric('A', 'ndcg@10'):.4f} "
                    f"B {report.metric('B', 'ndcg@10'):.4f}  steps {result.steps} q {result.sample_rate:.3f} "
                    f"sigma {result.noise_multiplier:.2f} {seconds:.0f}s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
