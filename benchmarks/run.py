"""Run the ShopRec benchmarks and write the document, the JSON file and the plots.

    python -m benchmarks.run --full            # make bench: docs/benchmarks.md, docs/benchmarks.json,
                                               # docs/benchmarks/*.png
    python -m benchmarks.run --quick           # make bench-quick: reduced sizes, written below
                                               # $SHOPREC_HOME/benchmarks/quick/ (docs/ stays untouched)
    python -m benchmarks.run --quick --only text,scoring --out /tmp/b

Each benchmark runs in this process, one after another; one that fails is reported as failed in the
document (with its error) and the exit status is 1.  Benchmarks never share state: each gets its own
scratch folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness import REPO_ROOT, Context, Section, machine_info, write_report

# Module names in the order of the brief (cheapest, most valuable first); each has run(ctx) -> Section.
BENCHMARKS: dict[str, str] = {
    "text": "benchmarks.text",
    "scoring": "benchmarks.scoring_rate",
    "features_scale": "benchmarks.features_scale",
    "dp_speed": "benchmarks.dp_speed",
    "serving": "benchmarks.serving",
    "quality": "benchmarks.quality",
    "pipeline": "benchmarks.pipeline",
    "ingest": "benchmarks.ingest_backfill",
    "campaigns_ope": "benchmarks.campaigns_ope",
    "campaigns_dp_policy": "benchmarks.campaigns_dp_policy",
}


def default_out(quick: bool) -> Path:
    if not quick:
        return REPO_ROOT / "docs"
    from tasks.config import get_settings

    return get_settings().home / "benchmarks" / "quick"


def run_benchmarks(names: Sequence[str], *, quick: bool, out_dir: Path) -> tuple[list[Section], bool]:
    """Run the named benchmarks; write ``benchmarks.md``, ``benchmarks.json`` and ``benchmarks/*.png``.

    Returns the sections and whether every benchmark completed.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
    mode = "quick" if quick else "full"
    machine = machine_info()
    sections: list[Section] = []
    started = time.perf_counter()
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"shoprec-bench-{name}-") as scratch:
            ctx = Context(
                quick=quick,
                work_dir=Path(scratch),
                figures_dir=out_dir / "benchmarks",
                figures_link="benchmarks",
            )
            tic = time.perf_counter()
            print(f"[bench] {name} ({mode}) ...", flush=True)
            try:
                module = importlib.import_module(BENCHMARKS[name])
                section = module.run(ctx)
            except Exception as exc:  # a failed benchmark is reported, the others still run
                traceback.print_exc()
                section = Section(key=name, title=name, error=f"{type(exc).__name__}: {exc}")
            section.seconds = time.perf_counter() - tic
            print(f"[bench] {name} done in {section.seconds:.1f} s", flush=True)
            sections.append(section)
            # Write after every benchmark: a long run that is interrupted keeps what it measured.
            write_report(
                machine,
                sections,
                markdown_path=out_dir / "benchmarks.md",
                json_path=out_dir / "benchmarks.json",
                mode=mode,
                seconds=time.perf_counter() - started,
            )
    return sections, all(s.error is None for s in sections)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ShopRec benchmarks")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--full", action="store_true", help="the full suite (make bench)")
    size.add_argument("--quick", action="store_true", help="reduced sizes (make bench-quick)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=None, help="folder for benchmarks.md/.json and plots")
    args = parser.parse_args(argv)
    out_dir = args.out or default_out(args.quick)
    if out_dir.exists() and (out_dir / "benchmarks").is_dir() and args.quick:
        shutil.rmtree(out_dir / "benchmarks")  # stale plots of an earlier quick run
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    sections, ok = run_benchmarks(names, quick=args.quick, out_dir=out_dir)
    print(f"[bench] wrote {out_dir / 'benchmarks.md'} and {out_dir / 'benchmarks.json'}")
    for section in sections:
        for goal in section.goals:
            verdict = "n/a" if goal.met is None else ("MET" if goal.met else "NOT MET")
            print(f"[bench] {section.key}: {goal.text} -> {goal.measured} [{verdict}]")
        if section.error:
            print(f"[bench] {section.key}: FAILED {section.error}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
