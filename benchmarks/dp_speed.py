"""Benchmark 2 (DP speed): DP-SGD step time against non-private training on the SHIPPED model, and peak memory.

Same model (:func:`tasks.training.model_for` from :class:`tasks.config.Settings`: the shipped towers,
both user towers), same loss, same fixed batches of the same data, same optimizer (Adam), the same
step (:func:`tasks.training.train_step`): the private side is :func:`tasks.training.make_private_trainer`
(the trainer's Book-Keeping clipping, :mod:`tasks.dp_clipping`; Opacus' ghost clipping as the
reference), the plain side the non-private twin of :func:`tasks.training.train`.  Steps are interleaved
in one process (a block of steps of every side, repeated), so load on a shared machine hits all alike;
CPU time per step (``time.process_time``, all threads) is reported beside wall time, as it moves less
with other processes' load.  Peak memory is measured in a fresh child process per side (``VmHWM``).

The data are synthetic (random features, 20-item histories, the shipped positives and negatives per
user over a 4,000-item catalog with 384-d text vectors): step cost depends on shapes, not values.

    python -m benchmarks.dp_speed --peak book_keeping --batch 256     # one child measurement (JSON)
    python -m benchmarks.dp_speed --candidates --batch 64 256 1024    # every clipping candidate (JSON)
    python -m benchmarks.dp_speed --profile book_keeping --batch 256  # torch profiler, top ops
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import REPO_ROOT, Context, Goal, Section, line_plot

N_ITEMS = 4_000
N_USERS = 4_096
USER_TOWERS = ("attention", "mean")
SHIPPED = "book_keeping"  # what tasks.training.make_private_trainer uses by default
REFERENCE = "ghost"  # Opacus' ghost clipping (the trainer's path before)
# every candidate measured by --candidates: the trainer's two, Opacus' per-sample modes, torch.func
# One torch thread: on the shared 2-core machine two threads per process measured 40x slower steps
# (plain, batch 64: 8.5 CPU ms/step at 1 thread, 337 at 2, OpenMP threads fighting other processes),
# so the ratio, a property of the work each step does, is measured single-threaded.
THREADS = 1
CANDIDATES = ("book_keeping", "ghost", "hooks", "functorch", "ew", "vmap")


def shipped_settings(user_tower: str) -> Any:
    """The pipeline's Settings (defaults) with ``user_tower``; nothing is written to its home."""
    from tasks.config import Settings

    return Settings(home=Path(tempfile.gettempdir()) / "shoprec-bench-dp", train_user_tower=user_tower)


def synthetic_setup(settings: Any, seed: int = 0) -> tuple[Any, Any]:
    """(catalog, examples) with the shapes of a 4,000-item shop and 4,096 users, and the shipped
    history length, positives per user (``train_cap_k``) and negatives (``train_negatives``)."""
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
    cap_k = settings.train_cap_k
    examples = UserExamples(
        rng.random((N_USERS, N_USER_FEATURES), dtype=np.float32),
        rng.integers(1, N_ITEMS + 1, (N_USERS, settings.history_length)),
        [rng.integers(1, N_ITEMS + 1, rng.integers(1, 2 * cap_k + 1)) for _ in range(N_USERS)],
        n_items=N_ITEMS,
        cap_k=cap_k,
        n_negatives=settings.train_negatives,
        seed=seed,
    )
    return catalog, examples


class Side:
    """One way of taking a step (``plain`` or a clipping candidate) on the shipped model."""

    def __init__(self, kind: str, settings: Any, catalog: Any, examples: Any, batch: int) -> None:
        import torch

        from tasks.training import (
            UserSoftmaxLoss,
            make_private_trainer,
            model_for,
            train_config,
            train_step,
            twin_config,
        )

        torch.manual_seed(0)
        self.model = model_for(settings, catalog)
        self.model.train()
        config = dataclasses.replace(
            train_config(settings, n_users=len(examples)), batch_size=batch, noise_multiplier=1.0
        )
        self._train_step = train_step
        self.criterion: Any
        if kind == "plain":
            self.module: Any = self.model
            self.optimizer: Any = torch.optim.Adam(
                self.model.parameters(), lr=twin_config(settings, config).lr
            )
            self.criterion = UserSoftmaxLoss(reduction="mean")
        elif kind in ("book_keeping", "ghost"):
            self.module, self.optimizer, self.criterion, _, _ = make_private_trainer(
                self.model, examples, config, clipping=kind
            )
        elif kind in ("hooks", "functorch", "ew"):
            from opacus import PrivacyEngine
            from torch.utils.data import DataLoader

            self.module, self.optimizer, _ = PrivacyEngine(accountant="rdp").make_private(
                module=self.model,
                optimizer=torch.optim.Adam(self.model.parameters(), lr=config.lr),
                data_loader=DataLoader(examples, batch_size=batch),
                noise_multiplier=config.noise_multiplier,
                max_grad_norm=config.max_grad_norm,
                grad_sample_mode=kind,
                poisson_sampling=True,
            )
            self.criterion = UserSoftmaxLoss(reduction="mean")
        elif kind == "vmap":
            # torch.func per-user gradients of the whole model, clipped and summed by hand, then the
            # trainer's optimizer (same noise, scaling and accountant as the ghost reference)
            from opacus.optimizers import DPOptimizerFastGradientClipping

            self.optimizer = DPOptimizerFastGradientClipping(
                torch.optim.Adam(self.model.parameters(), lr=config.lr),
                noise_multiplier=config.noise_multiplier,
                max_grad_norm=config.max_grad_norm,
                expected_batch_size=batch,
            )
            self.module = self.model
            self.criterion = UserSoftmaxLoss(reduction="none")
            self._train_step = _vmap_step(self.model, config.max_grad_norm)
        else:
            raise ValueError(f"unknown side {kind!r}")

    def step(self, batch: Sequence[Any]) -> float:
        return self._train_step(self.module, self.optimizer, self.criterion, batch)


def _vmap_step(model: Any, max_grad_norm: float) -> Callable[..., float]:
    import torch
    from torch.func import functional_call, grad, vmap

    from tasks.dp_clipping import CLIP_EPS

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    buffers = dict(model.named_buffers())

    def step(module: Any, optimizer: Any, criterion: Any, batch: Sequence[Any]) -> float:
        features, history, candidates, target = batch
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

        def loss_one(p: dict[str, Any], f: Any, h: Any, c: Any, t: Any) -> Any:
            scores = functional_call(model, (p, buffers), (f[None], h[None], c[None]))
            return criterion(scores, t[None]).sum()

        grads = vmap(grad(loss_one), in_dims=(None, 0, 0, 0, 0))(
            params, features, history, candidates, target
        )
        flat = torch.cat([grads[n].flatten(1) for n in names], dim=1)
        coef = (max_grad_norm / (flat.norm(dim=1) + CLIP_EPS)).clamp(max=1.0)
        optimizer.zero_grad()
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.grad = torch.einsum("b,b...->...", coef, grads[n])
        optimizer.step()
        with torch.no_grad():
            return float(criterion(model(features, history, candidates), target).mean())

    return step


def fixed_batches(examples: Any, batch: int, count: int) -> list[tuple[Any, ...]]:
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(examples, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(1))
    out: list[tuple[Any, ...]] = []
    while len(out) < count:
        out.extend(tuple(b) for b in loader if len(b[0]) == batch)
    return out[:count]


def interleaved_step_times(
    user_tower: str, batch: int, rounds: int, steps: int, kinds: Sequence[str], threads: int = THREADS
) -> dict[str, dict[str, list[float]]]:
    """Per side: wall and CPU seconds per step over ``rounds`` blocks of ``steps`` steps, the sides'
    blocks alternating, on the same batches, with ``threads`` torch threads."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _interleaved(user_tower, batch, rounds, steps, kinds)
    finally:
        torch.set_num_threads(previous)


def _interleaved(
    user_tower: str, batch: int, rounds: int, steps: int, kinds: Sequence[str]
) -> dict[str, dict[str, list[float]]]:
    settings = shipped_settings(user_tower)
    catalog, examples = synthetic_setup(settings)
    sides = {kind: Side(kind, settings, catalog, examples, batch) for kind in kinds}
    batches = fixed_batches(examples, batch, steps)
    for side in sides.values():  # warm-up (hooks, allocator)
        side.step(batches[0])
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in sides}
    for _ in range(rounds):
        for name, side in sides.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for b in batches:
                side.step(b)
            times[name]["wall"].append((time.perf_counter() - wall) / steps)
            times[name]["cpu"].append((time.process_time() - cpu) / steps)
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


def peak_memory(kind: str, user_tower: str, batch: int, steps: int) -> dict[str, float]:
    """In THIS process: RSS when training starts and the peak RSS during ``steps`` steps (MiB).

    The peak mark is reset just before the first step, so set-up (data, batches) is not counted.
    """
    settings = shipped_settings(user_tower)
    catalog, examples = synthetic_setup(settings)
    side = Side(kind, settings, catalog, examples, batch)
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


def _child_peak(kind: str, user_tower: str, batch: int, steps: int) -> dict[str, float]:
    args = ["--peak", kind, "--user-tower", user_tower, "--batch", str(batch), "--steps", str(steps)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.dp_speed", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,  # our `benchmarks` package, not the one opacus installs into site-packages
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _median(times: dict[str, list[float]], clock: str = "cpu") -> float:
    return statistics.median(times[clock])


def run(ctx: Context) -> Section:

    section = Section(key="dp_speed", title="2. DP-SGD training speed")
    batches = (64, 256) if ctx.quick else (64, 256, 1024)
    rounds, steps = (2, 2) if ctx.quick else (5, 4)
    kinds = ("plain", SHIPPED, REFERENCE)
    table = section.table(
        "Step time, shipped model (Settings), same batches, interleaved in one process (median CPU "
        "ms/step over rounds; min-max of the per-round DP / plain ratio in brackets)",
        [
            "user tower",
            "batch (users)",
            "plain ms/step",
            "DP (book-keeping) ms/step",
            "DP / plain",
            "Opacus ghost ms/step",
            "ghost / plain",
            "plain peak RSS growth MiB",
            "DP peak RSS growth MiB",
        ],
    )
    runs = []
    for tower in USER_TOWERS:
        for batch in batches:
            times = interleaved_step_times(tower, batch, rounds, steps, kinds)
            plain, dp, ghost = (_median(times[k]) for k in kinds)
            per_round = [d / p for d, p in zip(times[SHIPPED]["cpu"], times["plain"]["cpu"], strict=True)]
            mem = {k: _child_peak(k, tower, batch, steps) for k in ("plain", SHIPPED)}
            table.add(
                tower,
                batch,
                plain * 1000,
                dp * 1000,
                f"{dp / plain:.2f} [{min(per_round):.2f}-{max(per_round):.2f}]",
                ghost * 1000,
                ghost / plain,
                mem["plain"]["growth_mib"],
                mem[SHIPPED]["growth_mib"],
            )
            runs.append(
                {
                    "user_tower": tower,
                    "batch": batch,
                    "seconds_per_step": times,
                    "memory": mem,
                    "ratio": dp / plain,
                }
            )
    main = next(r for r in runs if r["user_tower"] == "attention" and r["batch"] == 256)
    section.goals.append(
        Goal(
            "DP-SGD step time at most 1.2x non-private (shipped model, attention user tower, batch 256)",
            main["ratio"] <= 1.2,
            f"{main['ratio']:.2f}x (all: "
            + ", ".join(f"{r['user_tower']} {r['batch']}: {r['ratio']:.2f}x" for r in runs)
            + ")",
        )
    )
    path, link = ctx.figure_path("dp_speed.png")
    curves = {}
    for tower in USER_TOWERS:
        mine = [r for r in runs if r["user_tower"] == tower]
        for kind, label in (
            ("plain", "non-private"),
            (SHIPPED, "DP-SGD book-keeping"),
            (REFERENCE, "Opacus ghost"),
        ):
            curves[f"{label} ({tower})"] = (
                [r["batch"] for r in mine],
                [1000 * _median(r["seconds_per_step"][kind]) for r in mine],
                None,
            )
    line_plot(
        path,
        curves,
        title="CPU time per step vs batch size",
        xlabel="users per batch",
        ylabel="CPU ms per step",
        logx=True,
        logy=True,
    )
    section.figures.append(link)
    section.notes += [
        f"{rounds} rounds x {steps} steps per side, {THREADS} torch thread (on the shared 2-core machine two "
        "threads per process made steps ~40x slower: plain batch 64, 8.5 vs 337 CPU ms), CPU time "
        "(time.process_time); synthetic users "
        f"over a {N_ITEMS:,}-item catalog with the shipped Settings (model_for, train_config: item tower "
        "'text', hidden 128, history 20, 10 positives and 100 negatives per user)",
        "DP side: tasks.training.make_private_trainer (Book-Keeping clipping, one backward pass, "
        "tasks.dp_clipping) into Opacus' DPOptimizerFastGradientClipping and RDP accountant; Opacus ghost "
        "clipping (two backward passes) is the reference; the timed steps use fixed full batches so every "
        "side does the same work. python -m benchmarks.dp_speed --candidates measures Opacus' hooks / "
        "functorch / ew modes and torch.func vmap(grad) too",
        "peak memory: a fresh child process per side; its peak-RSS mark (VmHWM) is reset just before the "
        "first step and the growth over the RSS at that moment is reported",
    ]
    section.data = {"runs": runs}
    return section


def candidates(
    user_towers: Sequence[str], batches: Sequence[int], rounds: int, steps: int
) -> list[dict[str, Any]]:
    """Every candidate against plain, interleaved; a candidate that fails says why."""
    out = []
    for tower in user_towers:
        for batch in batches:
            kinds = ["plain"]
            failed = {}
            settings = shipped_settings(tower)
            catalog, examples = synthetic_setup(settings)
            for kind in CANDIDATES:
                try:
                    Side(kind, settings, catalog, examples, batch).step(fixed_batches(examples, batch, 1)[0])
                    kinds.append(kind)
                except Exception as error:  # a candidate Opacus cannot run on this model: reported
                    failed[kind] = f"{type(error).__name__}: {str(error)[:200]}"
            times = interleaved_step_times(tower, batch, rounds, steps, kinds)
            plain = times["plain"]["cpu"]
            row: dict[str, Any] = {"user_tower": tower, "batch": batch, "failed": failed}
            for kind in kinds:
                ratios = [c / p for c, p in zip(times[kind]["cpu"], plain, strict=True)]
                row[kind] = {
                    "cpu_ms": 1000 * _median(times[kind]),
                    "wall_ms": 1000 * _median(times[kind], "wall"),
                    "cpu_ratio_median": statistics.median(ratios),
                    "cpu_ratio_min": min(ratios),
                    "cpu_ratio_max": max(ratios),
                }
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def profile(kind: str, user_tower: str, batch: int, steps: int) -> str:
    """Top operators by self CPU time over ``steps`` steps of ``kind``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    settings = shipped_settings(user_tower)
    catalog, examples = synthetic_setup(settings)
    side = Side(kind, settings, catalog, examples, batch)
    batches = fixed_batches(examples, batch, steps)
    side.step(batches[0])
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches:
            side.step(b)
    table: str = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description="DP-SGD speed: one measurement (the benchmark runs run())")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--peak", choices=("plain", *CANDIDATES), help="peak memory of one side (JSON)")
    mode.add_argument("--candidates", action="store_true", help="every clipping candidate vs plain (JSON)")
    mode.add_argument("--profile", choices=("plain", *CANDIDATES), help="torch profiler of one side")
    parser.add_argument("--user-tower", choices=USER_TOWERS, nargs="+", default=["attention"])
    parser.add_argument("--batch", type=int, nargs="+", default=[256])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.peak:
        print(json.dumps(peak_memory(args.peak, args.user_tower[0], args.batch[0], args.steps)))
    elif args.profile:
        print(profile(args.profile, args.user_tower[0], args.batch[0], args.steps))
    else:
        candidates(args.user_tower, args.batch, args.rounds, args.steps)


if __name__ == "__main__":
    main()
