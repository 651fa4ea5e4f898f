"""Benchmark 2 (DP speed): DP-SGD step time and throughput against non-private training, and peak memory.

Same model (:func:`tasks.model.build_model`, dim 64), same loss, same fixed batches of the same data,
same optimizer (Adam): the private side is :func:`tasks.training.make_private_trainer` (Opacus 1.6,
ghost clipping, user = one sample), the plain side the twin loop of :func:`tasks.training.train`.  Steps
are interleaved in one process (a block of private steps, a block of plain steps, repeated), so load on
a shared machine hits both alike.  Peak memory is measured in a fresh child process per side
(``ru_maxrss``; the growth from the start of training to the peak is what training itself needed).

The data are synthetic (random features, 20-item histories, up to 20 positives and 64 sampled negatives
per user over a 4,000-item catalog with 384-d text vectors): step cost depends on shapes, not values.

    python -m benchmarks.dp_speed --peak private --batch 256     # one child measurement (JSON on stdout)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import REPO_ROOT, Context, Goal, Section, line_plot, stopwatch

N_ITEMS = 4_000
N_USERS = 4_096
HISTORY = 20
NEGATIVES = 64
CAP_K = 20


def synthetic_setup(seed: int = 0) -> tuple[Any, Any]:
    """(catalog, examples) with the shapes of a 4,000-item shop and 4,096 users."""
    from tasks.catalog import N_USER_FEATURES, ItemCatalog, price_edges_log
    from tasks.training import UserExamples

    rng = np.random.default_rng(seed)
    text = rng.normal(size=(N_ITEMS, 384)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    edges = price_edges_log(8)
    catalog = ItemCatalog(
        item_ids=tuple(f"i{i:05d}" for i in range(N_ITEMS)),
        text=text,
        category_index=rng.integers(0, 10, N_ITEMS),
        price_bucket=rng.integers(0, len(edges) + 1, N_ITEMS),
        categories=tuple(f"c{i}" for i in range(10)),
        price_edges=edges,
    )
    examples = UserExamples(
        rng.random((N_USERS, N_USER_FEATURES), dtype=np.float32),
        rng.integers(1, N_ITEMS + 1, (N_USERS, HISTORY)),
        [rng.integers(1, N_ITEMS + 1, rng.integers(1, CAP_K + 1)) for _ in range(N_USERS)],
        n_items=N_ITEMS,
        cap_k=CAP_K,
        n_negatives=NEGATIVES,
        seed=seed,
    )
    return catalog, examples


class Side:
    """One side (private or plain) ready to take steps on given batches."""

    def __init__(self, private: bool, catalog: Any, examples: Any, batch: int) -> None:
        import torch

        from tasks.model import build_model
        from tasks.training import TrainConfig, UserSoftmaxLoss, make_private_trainer

        torch.manual_seed(0)
        self.model = build_model(catalog)
        self.model.train()
        config = TrainConfig(private=private, batch_size=batch, noise_multiplier=1.0, n_negatives=NEGATIVES)
        if private:
            self.module, self.optimizer, self.criterion, _, _ = make_private_trainer(
                self.model, examples, config
            )
        else:
            self.module = self.model
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
            self.criterion = UserSoftmaxLoss(reduction="mean")

    def step(self, batch: tuple[Any, ...]) -> float:
        features, history, candidates, target = batch
        self.optimizer.zero_grad()
        loss = self.criterion(self.module(features, history, candidates), target)
        loss.backward()
        self.optimizer.step()
        return float(loss.item())


def fixed_batches(examples: Any, batch: int, count: int) -> list[tuple[Any, ...]]:
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(examples, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(1))
    out: list[tuple[Any, ...]] = []
    while len(out) < count:
        out.extend(tuple(b) for b in loader if len(b[0]) == batch)
    return out[:count]


def interleaved_step_times(batch: int, rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each side, ``rounds`` alternating blocks of ``steps`` steps on the same batches."""
    catalog, examples = synthetic_setup()
    sides = {"dp": Side(True, catalog, examples, batch), "plain": Side(False, catalog, examples, batch)}
    batches = fixed_batches(examples, batch, steps)
    for side in sides.values():  # warm-up (hooks, allocator)
        side.step(batches[0])
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, side in sides.items():
            with stopwatch() as elapsed:
                for b in batches:
                    side.step(b)
            times[name].append(elapsed() / steps)
    return times


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(private: bool, batch: int, steps: int) -> dict[str, float]:
    """In THIS process: RSS when training starts and the peak RSS during ``steps`` steps (MiB).

    The peak mark is reset just before the first step, so set-up (data, batches) is not counted.
    """
    catalog, examples = synthetic_setup()
    side = Side(private, catalog, examples, batch)
    batches = fixed_batches(examples, batch, steps)
    reset = _reset_peak()
    before = _rss_mib()
    for b in batches:
        side.step(b)
    peak = _peak_mib()
    return {
        "rss_before_mib": before,
        "peak_rss_mib": peak,
        "growth_mib": max(0.0, peak - before),
        "peak_reset": float(reset),
    }


def _child_peak(private: bool, batch: int, steps: int) -> dict[str, float]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.dp_speed",
            "--peak",
            "private" if private else "plain",
            "--batch",
            str(batch),
            "--steps",
            str(steps),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,  # our `benchmarks` package, not the one opacus installs into site-packages
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(ctx: Context) -> Section:
    import torch

    section = Section(key="dp_speed", title="2. DP-SGD training speed")
    batches = (64, 256) if ctx.quick else (64, 256, 1024)
    rounds, steps = (2, 2) if ctx.quick else (3, 5)
    table = section.table(
        "Step time, same model / batch / data, interleaved in one process (median over rounds)",
        [
            "batch (users)",
            "plain ms/step",
            "DP ms/step",
            "DP / plain",
            "plain users/s",
            "DP users/s",
            "plain peak RSS growth MiB",
            "DP peak RSS growth MiB",
        ],
    )
    runs = []
    for batch in batches:
        times = interleaved_step_times(batch, rounds, steps)
        plain, dp = statistics.median(times["plain"]), statistics.median(times["dp"])
        mem_plain = _child_peak(False, batch, steps)
        mem_dp = _child_peak(True, batch, steps)
        table.add(
            batch,
            plain * 1000,
            dp * 1000,
            dp / plain,
            batch / plain,
            batch / dp,
            mem_plain["growth_mib"],
            mem_dp["growth_mib"],
        )
        runs.append({"batch": batch, "seconds_per_step": times, "memory": {"plain": mem_plain, "dp": mem_dp}})
    ratios = [
        statistics.median(r["seconds_per_step"]["dp"]) / statistics.median(r["seconds_per_step"]["plain"])
        for r in runs
    ]
    main_batch = 256
    main_ratio = ratios[batches.index(main_batch)]
    section.goals.append(
        Goal(
            f"DP-SGD step time at most 1.5x non-private (batch {main_batch} users)",
            main_ratio <= 1.5,
            f"{main_ratio:.2f}x (all batches: "
            + ", ".join(f"{b}: {r:.2f}x" for b, r in zip(batches, ratios, strict=True))
            + ")",
        )
    )
    path, link = ctx.figure_path("dp_speed.png")
    line_plot(
        path,
        {
            "non-private": (
                list(batches),
                [
                    r["seconds_per_step"]["plain"]
                    and 1000 * statistics.median(r["seconds_per_step"]["plain"])
                    for r in runs
                ],
                None,
            ),
            "DP-SGD (ghost clipping)": (
                list(batches),
                [1000 * statistics.median(r["seconds_per_step"]["dp"]) for r in runs],
                None,
            ),
        },
        title="Step time vs batch size",
        xlabel="users per batch",
        ylabel="ms per step",
        logx=True,
        logy=True,
    )
    section.figures.append(link)
    section.notes += [
        f"{rounds} rounds x {steps} steps per side per batch size, {torch.get_num_threads()} torch threads, "
        f"synthetic users over a {N_ITEMS:,}-item catalog, {HISTORY}-item histories, {NEGATIVES} negatives",
        "DP side: Opacus PrivacyEngine.make_private(grad_sample_mode='ghost', poisson_sampling=True) as in "
        "tasks.training; the timed steps use fixed full batches so both sides do the same work",
        "peak memory: a fresh child process per side; its peak-RSS mark (VmHWM) is reset just before the "
        "first step and the growth over the RSS at that moment is reported",
    ]
    section.data = {"runs": runs}
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description="one peak-memory measurement (used by the benchmark)")
    parser.add_argument("--peak", choices=("private", "plain"), required=True)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(peak_memory(args.peak == "private", args.batch, args.steps)))


if __name__ == "__main__":
    main()
