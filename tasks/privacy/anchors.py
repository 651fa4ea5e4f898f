"""Anchors: the ledger's chain heads recorded outside the ledger database, and where verify finds them.

An anchor (:meth:`~tasks.privacy.ledger.Ledger.anchor`) is, per chained table, the row count, the last id and that row's hash (``TableHead``), plus
the public fingerprint of the ledger key.  It is written

* on the MLflow model version, next to its privacy statement (tag :data:`ANCHOR_TAG`), after the
  version's charges are committed (``tasks.registry.register_and_gate``);
* in every compliance report (``ledger_anchor`` in ``privacy_report.json``);
* as a file under ``<home>/privacy/anchors/`` after every other commit (country popularity), every
  budget policy change and every ``privacy_audit`` run.

Because each row's hash chains all rows before it, an anchor at row N pins rows 1..N: verify fails
when a table has fewer rows up to the anchored id than anchored (rows removed) or when the row with
the anchored id no longer has the anchored hash (rows altered or re-hashed, even with the key).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tasks.config import Settings
from tasks.io import atomic_write_text
from tasks.privacy.ledger import GENESIS_HASH, TableHead

log = logging.getLogger(__name__)

ANCHOR_TAG: Final = "privacy.ledger_anchor"
# a registered version with this tag was trained with DP-SGD charged to the ledger
DP_VERSION_TAG: Final = "privacy.epsilon"
REPORT_ANCHOR_FIELD: Final = "ledger_anchor"


@dataclass(frozen=True)
class Anchor:
    """Chain heads recorded at ``source`` (where verify found it)."""

    source: str
    tables: Mapping[str, TableHead]
    key_fingerprint: str | None

    @property
    def rows(self) -> int:
        return sum(head.rows for head in self.tables.values())


def anchor_from_payload(source: str, payload: Mapping[str, Any]) -> Anchor:
    tables = {
        name: TableHead(rows=int(h["rows"]), last_id=int(h["last_id"]), head=str(h["head"]))
        for name, h in payload["tables"].items()
    }
    return Anchor(source=source, tables=tables, key_fingerprint=payload.get("key_fingerprint"))


def anchors_dir(settings: Settings) -> Path:
    return settings.privacy_dir / "anchors"


def write_anchor_file(settings: Settings, name: str, payload: Mapping[str, Any]) -> Path:
    """Write ``anchors/<name>.json`` (write-then-rename; the same name is replaced)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    path = anchors_dir(settings) / f"{safe}.json"
    atomic_write_text(path, json.dumps(payload, sort_keys=True, indent=2), private=True)
    return path


def head_anchor_name(anchor: Mapping[str, Any]) -> str:
    """``head-<rows>-<rows>-<rows>`` (tables by name: budgets, charge events, charges): one anchor file
    per state of the ledger."""
    return "head-" + "-".join(str(anchor["tables"][name]["rows"]) for name in sorted(anchor["tables"]))


@dataclass(frozen=True)
class FoundAnchors:
    """Every anchor verify could find, the number of DP model versions in MLflow, and what it could not read."""

    anchors: tuple[Anchor, ...]
    dp_versions: tuple[str, ...]
    problems: tuple[str, ...]


def _file_anchors(settings: Settings) -> tuple[list[Anchor], list[str]]:
    anchors, problems = [], []
    folder = anchors_dir(settings)
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    reports = settings.reports_dir / "privacy"
    report_files = sorted(reports.glob("*/privacy_report.json")) if reports.is_dir() else []
    for path in files + report_files:
        try:
            data = json.loads(path.read_text())
            payload = data.get(REPORT_ANCHOR_FIELD, data) if path in report_files else data
            if payload is None:
                continue  # a report of a failed verification anchors nothing
            anchors.append(anchor_from_payload(f"file {path}", payload))
        except (OSError, ValueError, KeyError, TypeError) as err:
            problems.append(f"anchor {path} is unreadable ({err})")
    return anchors, problems


def _mlflow_anchors(settings: Settings) -> tuple[list[Anchor], list[str], list[str]]:
    """Anchors and DP versions on the registered model's versions (nothing when no registry exists)."""
    uri = settings.resolved_mlflow_registry_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return [], [], []
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=settings.resolved_mlflow_tracking_uri, registry_uri=uri)
    try:
        versions = client.search_model_versions(f"name='{settings.registered_model_name}'")
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(err, "error_code", "")):
            return [], [], []
        return [], [], [f"could not read the MLflow registry at {uri} for anchors ({err})"]
    except Exception as err:  # an unreachable server: anchors there cannot be checked
        return [], [], [f"could not read the MLflow registry at {uri} for anchors ({err})"]
    anchors, dp_versions, problems = [], [], []
    for version in versions:
        label = f"mlflow {settings.registered_model_name} version {version.version}"
        if DP_VERSION_TAG in version.tags:
            dp_versions.append(str(version.version))
        if ANCHOR_TAG in version.tags:
            try:
                anchors.append(anchor_from_payload(label, json.loads(version.tags[ANCHOR_TAG])))
            except (ValueError, KeyError, TypeError) as err:
                problems.append(f"{label}: unreadable ledger anchor ({err})")
    return anchors, dp_versions, problems


def find_anchors(settings: Settings, *, use_registry: bool = True) -> FoundAnchors:
    """Every anchor of the ledger of ``settings``: anchor files, compliance reports, MLflow versions."""
    anchors, problems = _file_anchors(settings)
    dp_versions: list[str] = []
    if use_registry:
        more, dp_versions, registry_problems = _mlflow_anchors(settings)
        anchors += more
        problems += registry_problems
    return FoundAnchors(tuple(anchors), tuple(dp_versions), tuple(problems))


def check_anchor(anchor: Anchor, rows_by_table: Mapping[str, Mapping[int, str]]) -> list[str]:
    """What the ledger's rows (``{table: {id: row_hash}}``) contradict in ``anchor``."""
    problems = []
    for name, head in anchor.tables.items():
        rows = rows_by_table.get(name, {})
        if head.rows == 0 and head.head == GENESIS_HASH:
            continue
        kept = sum(1 for row_id in rows if row_id <= head.last_id)
        if kept != head.rows:
            what = "rows removed" if kept < head.rows else "rows inserted"
            problems.append(
                f"{name}: {kept} rows up to id {head.last_id} where {anchor.source} anchored {head.rows} ({what})"
            )
        found = rows.get(head.last_id)
        if found is None:
            problems.append(
                f"{name}: row {head.last_id} anchored by {anchor.source} is missing (rows removed)"
            )
        elif found != head.head:
            problems.append(
                f"{name}: row {head.last_id} no longer has the hash anchored by {anchor.source} "
                "(rows altered or the chain re-hashed)"
            )
    return problems
