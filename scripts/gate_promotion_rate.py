"""How often the first model of a test shop is promoted by the gate, and by how much it clears the
strongest baseline: ``python scripts/gate_promotion_rate.py SHOP TRIALS`` (one JSON line per trial).

The chain tests (tests/integration/test_publish_chain.py, test_train_recommender_dag.py,
tests/production/test_production_e2e.py) need the gate to promote their shop's first model; DP-SGD
noise is unseeded, so this measures the promotion rate and margins behind tests/helpers_shops.py.
Each trial trains and registers outside Airflow (run_training + register_and_gate, ~30 s) in a fresh
home under a temporary folder, with the tests' settings.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers_shops import CHAIN_SHOP, DAG_TEST_SHOP

from tasks.sources.synthetic import generate

E2E = {"SHOPREC_TRAIN_STEPS": "20", "SHOPREC_TRAINING_EPSILON": "8.0", "SHOPREC_TOP_K": "20"}
SHOPS = {  # name: (shop, settings, tiny text encoder as the DAG test uses)
    "chain": (CHAIN_SHOP, E2E, False),  # test_publish_chain and the production e2e
    "dag": (DAG_TEST_SHOP, {"SHOPREC_TRAIN_STEPS": "16"}, True),  # test_train_recommender_dag
    "two-machines": (DAG_TEST_SHOP, {"SHOPREC_TRAIN_STEPS": "8"}, True),  # test_train_register_two_machines
}
RANKERS = ("challenger", "popularity_all", "popularity_recent", "buy_again", "cooccurrence")


def trial(name: str, number: int, root: Path) -> dict[str, object]:
    from tasks.config import get_settings
    from tasks.contracts import EVENTS_SCHEMA, ITEMS_SCHEMA, landing_files, list_partitions, partition_dir
    from tasks.embeddings import tiny_random_encoder
    from tasks.feast_store import apply_definitions
    from tasks.features import compute_features
    from tasks.registry import client, register_and_gate
    from tasks.training import run_training
    from tasks.training_data import pin_training_data

    shop, extra, tiny = SHOPS[name]
    for key in [k for k in os.environ if k.startswith("SHOPREC_")]:
        del os.environ[key]
    os.environ.update(
        {"SHOPREC_HOME": str(root / "shoprec"), "SHOPREC_MIN_TRAINING_INTERVAL_HOURS": "0", **extra}
    )
    settings = get_settings()
    settings.ensure_dirs()
    generate(shop, settings.landing_dir)
    days, items = list_partitions(settings.landing_dir), []
    for day in days[:-1]:
        folder, target = partition_dir(settings.landing_dir, day), partition_dir(settings.events_dir, day)
        target.mkdir(parents=True, exist_ok=True)
        for path in landing_files(folder, "events"):
            pq.write_table(pq.read_table(path).cast(EVENTS_SCHEMA), target / "part-0.parquet")
        items += [pq.read_table(p).to_pandas() for p in landing_files(folder, "items")]
    catalog = pd.concat(items, ignore_index=True).drop_duplicates("item_id")
    table = pa.Table.from_pandas(catalog, schema=ITEMS_SCHEMA, preserve_index=False)
    pq.write_table(table, settings.items_dir / "items.parquet")
    compute_features(settings, days[:-1], encoder=tiny_random_encoder(seed=0, dim=32) if tiny else None)
    apply_definitions(settings)
    started = time.monotonic()
    run_key = f"trial{number}"
    data_uri = pin_training_data(settings, run_key).uri
    manifest = run_training(settings, run_key=run_key, training_data_uri=data_uri).to_dict()
    registration = register_and_gate(settings, manifest)
    metrics = client(settings).get_run(registration.run_id).data.metrics
    ndcg = {r: [round(metrics[f"{r}.{v}_ndcg_at_10"], 4) for v in "AB"] for r in RANKERS}
    margin = [round(ndcg["challenger"][i] - max(ndcg[r][i] for r in RANKERS[1:]), 4) for i in (0, 1)]
    return {
        "shop": name,
        "trial": number,
        "promoted": registration.promoted,
        "margin_A_B": margin,
        "ndcg": ndcg,
        "seconds": round(time.monotonic() - started),
    }


def main() -> None:
    name, trials = sys.argv[1], int(sys.argv[2])
    for number in range(trials):
        root = Path(tempfile.mkdtemp(prefix=f"gate-{name}-"))
        try:
            print(json.dumps(trial(name, number, root)), flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
