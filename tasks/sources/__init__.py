"""Data sources that write landing batches in the data contract (see docs/data-contract.md).

* :mod:`tasks.sources.synthetic`: a seeded, deterministic shop simulator (:func:`generate`).
* :mod:`tasks.sources.online_retail`: the UCI Online Retail / Online Retail II adapter
  (:func:`load_online_retail`).
* :mod:`tasks.sources.loader`: files already in the contract (:func:`load_contract_files`) and the
  writer of one landing day folder that every source shares.

Every source returns a :class:`SourceManifest`: what it wrote, never the data itself.  Importing this
package imports pandas and pyarrow: DAG files import it inside task bodies.
"""

from __future__ import annotations

from tasks.sources.loader import SourceManifest, load_contract_files
from tasks.sources.online_retail import OnlineRetailReport, load_online_retail
from tasks.sources.synthetic import SyntheticConfig, generate

__all__ = [
    "OnlineRetailReport",
    "SourceManifest",
    "SyntheticConfig",
    "generate",
    "load_contract_files",
    "load_online_retail",
]
