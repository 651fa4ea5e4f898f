"""Benchmark 6 (text): item titles embedded per second by the MiniLM encoder, and the cache on a re-run.

Titles are the distinct product descriptions of the shared Online Retail II file (all of them in the full
run, 200 in the quick run).  Three passes through :func:`tasks.embeddings.embed_items` on one cache
folder: cold (every title encoded), an identical re-run (every title from the cache), and a re-run of a
catalog where 5% of the titles are new (only those are encoded).
"""

from __future__ import annotations

import pandas as pd

from benchmarks.harness import Context, Goal, Section, online_retail_file, stopwatch


def distinct_titles(ctx: Context, limit: int | None) -> list[str]:
    frame = pd.read_parquet(online_retail_file(ctx.repo_root), columns=["Description"])
    titles = frame["Description"].dropna().astype(str).str.strip().str.replace(r"\s+", " ", regex=True)
    unique = sorted(t for t in titles.unique() if t)
    return unique[:limit] if limit else unique


def run(ctx: Context) -> Section:
    import torch

    from tasks.embeddings import embed_items, load_pretrained_encoder

    section = Section(key="text", title="6. Text embeddings (MiniLM)")
    titles = distinct_titles(ctx, 200 if ctx.quick else None)
    with stopwatch() as load_time:
        encoder = load_pretrained_encoder(device="cpu")
    items = pd.DataFrame({"item_id": [f"t{i:06d}" for i in range(len(titles))], "title": titles})
    n_new = max(1, len(items) // 20)
    grown = pd.concat(
        [
            items.iloc[n_new:],
            pd.DataFrame(
                {
                    "item_id": [f"n{i:06d}" for i in range(n_new)],
                    "title": [f"{t} (new)" for t in titles[:n_new]],
                }
            ),
        ],
        ignore_index=True,
    )
    cache = ctx.work_dir / "cache"
    table = section.table(
        "Embedding passes on one cache folder",
        ["pass", "titles", "encoded", "cache hits", "hit rate", "seconds", "titles/s"],
    )
    rates, hits = {}, {}
    for name, frame in (("cold", items), ("re-run, same titles", items), ("re-run, 5% new titles", grown)):
        with stopwatch() as elapsed:
            result = embed_items(frame, cache, encoder)
        seconds = elapsed()
        hit_rate = result.n_cache_hits / result.n_items
        rates[name] = result.n_items / seconds
        hits[name] = hit_rate
        table.add(
            name, result.n_items, result.n_embedded, result.n_cache_hits, hit_rate, seconds, rates[name]
        )
    encode_rate = rates["cold"]
    section.goals.append(
        Goal(
            "titles embedded per second (cold) and cache hit rate on an identical re-run (report only)",
            None,
            f"{encode_rate:.0f} titles/s cold; re-run hit rate {hits['re-run, same titles']:.0%}",
        )
    )
    section.notes += [
        f"encoder `{encoder.model_id}` (dim {encoder.dim}) on CPU with {torch.get_num_threads()} torch "
        f"threads, batch 64, loaded in {load_time():.1f} s; mean title length "
        f"{sum(map(len, titles)) / len(titles):.0f} characters",
        "titles: distinct descriptions of the Online Retail II 2009-2010 file",
    ]
    section.data = {
        "titles": len(titles),
        "titles_per_second": rates,
        "hit_rate": hits,
        "load_seconds": load_time(),
    }
    return section
