"""The Great Expectations 1.x gate: versioned suites in ``expectations/*.json`` run against one frame.

Each expectation in a suite carries ``meta.name``, the name quarantined rows and error messages use.
Column-value expectations (``expect_column_values_*``) are row-level: their failing rows are returned by
frame index so the caller can quarantine them.  Every other expectation is table-level: a failure fails
the batch.  An expectation that raised inside GX (``exception_info``) is reported as an error, never
passed silently.  Run-dependent bounds (the day, the catalog, the volume band) are suite parameters
(``{"$PARAMETER": ...}``) bound at run time; timestamps must be tz-aware to compare with the data.

Speed: one ephemeral GX context per process holds each suite's checkpoint (built on first use); each validation's result is stored as JSON and :func:`build_data_docs` renders the results of a
whole run into one static site at its end, instead of one site per validated frame.

``great_expectations`` is imported inside the functions only: it takes seconds to import.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.config import Settings

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations import Checkpoint
    from great_expectations.data_context import AbstractDataContext
    from great_expectations.data_context.store.store import DataDocsSiteConfigTypedDict

log = logging.getLogger(__name__)

ROW_LEVEL_PREFIX = "expect_column_values_"


@dataclass(frozen=True)
class GateResult:
    """What a suite said about one frame."""

    suite: str
    row_failures: dict[int, tuple[str, ...]] = field(default_factory=dict)
    table_failures: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    result_path: Path | None = None  # the stored GX validation result (see run_gate)

    @property
    def table_ok(self) -> bool:
        return not self.table_failures and not self.errors


def suite_path(settings: Settings, suite_name: str) -> Path:
    return settings.expectations_dir / f"{suite_name}.json"


def load_suite(settings: Settings, suite_name: str) -> dict[str, Any]:
    """The suite's JSON as a dict; every expectation must carry ``meta.name``."""
    path = suite_path(settings, suite_name)
    suite: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    unnamed = [e["type"] for e in suite["expectations"] if not e.get("meta", {}).get("name")]
    if unnamed:
        raise ValueError(f"{path}: expectations without meta.name: {', '.join(unnamed)}")
    return suite


def _data_docs_site(base_directory: Path) -> DataDocsSiteConfigTypedDict:
    return {
        "class_name": "SiteBuilder",
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(base_directory),
        },
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }


@dataclass(frozen=True)
class _Gate:
    """One suite's GX objects, built once per process and suite version (see :func:`_gate_for`)."""

    checkpoint: Checkpoint
    names: tuple[str, ...]


_GATES: dict[tuple[str, str], _Gate] = {}


def suite_fingerprint(settings: Settings, suite_name: str) -> str:
    """SHA-256 of the suite file: a validation recorded under another fingerprint is not reused."""
    return hashlib.sha256(suite_path(settings, suite_name).read_bytes()).hexdigest()


def _quiet_context() -> AbstractDataContext:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _gate_for(settings: Settings, suite_name: str) -> _Gate:
    """The suite's checkpoint (no actions) in one ephemeral context per process.

    Creating a context, the suite, its validation definition and checkpoint costs about as much as
    validating a day, so a process that validates many days (a backfill run, the demo) builds them once.  The cache is keyed on
    the suite file's content: an edited suite is picked up at the next call.
    """
    import great_expectations as gx

    suite_json = load_suite(settings, suite_name)
    key = (suite_name, json.dumps(suite_json, sort_keys=True))
    if key not in _GATES:
        context = _quiet_context()
        suite = context.suites.add(gx.ExpectationSuite(**suite_json))
        asset = context.data_sources.add_pandas("shoprec").add_dataframe_asset(suite_name)
        batch = asset.add_batch_definition_whole_dataframe("batch")
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{suite_name}_gate", data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{suite_name}_checkpoint",
                validation_definitions=[definition],
                actions=[],  # Data Docs are built once per run (build_data_docs), not per validation
                result_format={"result_format": "COMPLETE"},
            )
        )
        names = tuple(e["meta"]["name"] for e in suite_json["expectations"])
        _GATES[key] = _Gate(checkpoint, names)
    return _GATES[key]


def run_gate(
    frame: pd.DataFrame,
    suite_name: str,
    parameters: Mapping[str, object],
    *,
    settings: Settings,
    result_path: Path | None = None,
    run_name: str = "",
    run_time: dt.datetime | None = None,
) -> GateResult:
    """Validate ``frame`` with the named suite; optionally store GX's validation result at ``result_path``.

    The stored result (suite, run name and time, GX's own result JSON) is what :func:`build_data_docs`
    renders later: Data Docs are built once per run, not once per validated frame.  ``result_path`` is
    written to a temporary file and renamed, so a re-run for the same partition replaces it.
    """
    from great_expectations.core.run_identifier import RunIdentifier

    gate = _gate_for(settings, suite_name)
    run_id = RunIdentifier(run_name=run_name or suite_name, run_time=run_time)
    checkpoint_result = gate.checkpoint.run(
        batch_parameters={"dataframe": frame}, expectation_parameters=dict(parameters), run_id=run_id
    )
    (validation,) = checkpoint_result.run_results.values()

    by_row: dict[int, list[str]] = {}
    table_failures: list[str] = []
    errors: list[str] = []
    for result in validation.results:
        config = result.expectation_config
        if config is None:
            errors.append("a result without its expectation configuration")
            continue
        name = (config.meta or {}).get("name") or config.type
        raised = (result.exception_info or {}).get("raised_exception")
        if raised:
            message = (result.exception_info or {}).get("exception_message")
            errors.append(f"{name}: raised {message}")
            continue
        if result.success:
            continue
        if config.type.startswith(ROW_LEVEL_PREFIX):
            indices = result.result.get("unexpected_index_list") or []
            if not indices:
                errors.append(f"{name}: failed without naming its rows")
            for index in indices:
                by_row.setdefault(int(index), []).append(name)
        else:
            observed = result.result.get("observed_value")
            table_failures.append(f"{name} (observed {observed!r})")

    order = {name: i for i, name in enumerate(gate.names)}
    row_failures = {
        index: tuple(sorted(set(failed), key=lambda n: order.get(n, len(order))))
        for index, failed in by_row.items()
    }
    if result_path is not None:
        stored = {
            "suite": suite_name,
            "run_name": run_id.run_name,
            "run_time": run_id.run_time.isoformat(),
            "result": validation.to_json_dict(),
        }
        result_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = result_path.with_name(f".tmp-{result_path.name}")
        tmp.write_text(json.dumps(stored, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(result_path)
    return GateResult(
        suite=suite_name,
        row_failures=row_failures,
        table_failures=tuple(table_failures),
        errors=tuple(errors),
        result_path=result_path,
    )


def build_data_docs(settings: Settings, result_paths: Sequence[Path], docs_dir: Path) -> Path:
    """One static Data Docs site in ``docs_dir`` for the stored validation results (see :func:`run_gate`).

    Built once per run from the results its days stored, so the cost is one site, not one per day;
    ``docs_dir`` is written to a temporary sibling and renamed, so a re-run of the run replaces it.
    Returns the site's ``index.html``.
    """
    import great_expectations as gx
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResultSchema,
    )
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    context = _quiet_context()
    schema = ExpectationSuiteValidationResultSchema()
    docs_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = docs_dir.parent / f".tmp-{docs_dir.name}-{uuid.uuid4().hex}"
    context.add_data_docs_site(site_name="shoprec", site_config=_data_docs_site(tmp))
    suites: set[str] = set()
    keys: list[ValidationResultIdentifier] = []
    for path in result_paths:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored["suite"] not in suites:
            suites.add(stored["suite"])
            context.suites.add(gx.ExpectationSuite(**load_suite(settings, stored["suite"])))
        result = schema.load(stored["result"])
        run_id = RunIdentifier(stored["run_name"], dt.datetime.fromisoformat(stored["run_time"]))
        key = ValidationResultIdentifier(ExpectationSuiteIdentifier(stored["suite"]), run_id, stored["suite"])
        context.validation_results_store.set(key, result)
        keys.append(key)
    try:
        context.build_data_docs(site_names=["shoprec"])
        if not (tmp / "index.html").is_file():
            raise RuntimeError(f"Great Expectations wrote no index.html for {docs_dir}")
        old = docs_dir.parent / f".old-{docs_dir.name}-{uuid.uuid4().hex}"
        if docs_dir.exists():
            docs_dir.replace(old)
        tmp.replace(docs_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("Data Docs of %d validation results: %s", len(keys), docs_dir / "index.html")
    return docs_dir / "index.html"
