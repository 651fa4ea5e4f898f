"""ShopRec: the importable, typed library behind the Airflow DAGs.

One module per stage (config, contracts, sources, ingest, validation, features, embeddings, model,
training, evaluation, registry, privacy, publishing, cli).  Importing it has no side effects.
"""

__version__ = "0.1.0"
