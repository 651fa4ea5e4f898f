"""The Great Expectations 1.x gate: versioned suites in ``expectations/*.json`` run against one frame.

Each expectation in a suite carries ``meta.name``, the name quarantined rows and error messages use.
Column-value expectations (``expect_column_values_*``) are row-level: their failing rows are returned by
frame index so the caller can quarantine them.  Every other expectation is table-level: a failure fails
the batch.  An expectation that raised inside GX (``exception_info``) is reported as an error, never
passed silently.  Run-dependent bounds (the day, the catalog, the volume band) are suite parameters
(``{"$PARAMETER": ...}``) bound at run time; timestamps must be tz-aware to compare with the data.

``great_expectations`` is imported inside :func:`run_gate` only: it takes seconds to import.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.config import Settings

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.checkpoint.actions import ValidationAction
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
    data_docs_index: Path | None = None

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


def run_gate(
    frame: pd.DataFrame,
    suite_name: str,
    parameters: Mapping[str, object],
    *,
    settings: Settings,
    docs_dir: Path | None = None,
) -> GateResult:
    """Validate ``frame`` with the named suite; optionally build static Data Docs into ``docs_dir``.

    ``docs_dir`` is replaced as a whole, so a re-run for the same partition leaves one site.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    suite_json = load_suite(settings, suite_name)
    names = [e["meta"]["name"] for e in suite_json["expectations"]]
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if docs_dir is not None:
        if docs_dir.exists():
            shutil.rmtree(docs_dir)
        context.add_data_docs_site(site_name="shoprec", site_config=_data_docs_site(docs_dir))

    suite = context.suites.add(gx.ExpectationSuite(**suite_json))
    asset = context.data_sources.add_pandas("shoprec").add_dataframe_asset(suite_name)
    batch = asset.add_batch_definition_whole_dataframe("batch")
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite_name}_gate", data=batch, suite=suite)
    )
    actions: list[ValidationAction] = []
    if docs_dir is not None:
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["shoprec"]))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{suite_name}_checkpoint",
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "COMPLETE"},
        )
    )
    checkpoint_result = checkpoint.run(
        batch_parameters={"dataframe": frame}, expectation_parameters=dict(parameters)
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

    order = {name: i for i, name in enumerate(names)}
    row_failures = {
        index: tuple(sorted(set(failed), key=lambda n: order.get(n, len(order))))
        for index, failed in by_row.items()
    }
    index_html = docs_dir / "index.html" if docs_dir is not None else None
    if index_html is not None and not index_html.exists():
        errors.append(f"data docs were not written to {docs_dir}")
    return GateResult(
        suite=suite_name,
        row_failures=row_failures,
        table_failures=tuple(table_failures),
        errors=tuple(errors),
        data_docs_index=index_html,
    )
