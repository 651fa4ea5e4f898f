"""The compliance report: per budget the cap, spent and remaining epsilon; per model its statement and audit.

Written as Markdown, JSON and HTML (with a chart of cumulative epsilon over time) into
``reports/privacy/<at>/`` (replaced as a whole, so re-running for the same time changes nothing else).
Statements come from the MLflow registry's ``privacy.*`` tags when the model version has them, else
from the ledger's charge (then whether a secure RNG was used is "not recorded").  Every report of a
verified ledger records the ledger's chain heads (``ledger_anchor``): an anchor outside the database
that later verifications check the ledger against (:mod:`tasks.privacy.anchors`).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tasks.config import Settings
from tasks.ingest import rejected_days
from tasks.io import replace_dir
from tasks.privacy.accounting import DpSgdMechanism, mechanism_kind
from tasks.privacy.anchors import REPORT_ANCHOR_FIELD
from tasks.privacy.audit import LOWER_BOUND_NOTE, load_audits
from tasks.privacy.ledger import Ledger, LedgerMissing
from tasks.privacy.ledger_key import find_ledger_key
from tasks.privacy.statement import TAG_PREFIX, PrivacyStatement
from tasks.privacy.tables import ChargeStatus
from tasks.privacy.verify import verify_settings


@dataclass(frozen=True)
class ReportManifest:
    directory: str
    markdown: str
    json: str
    html: str
    verified: bool
    n_budgets: int
    n_charges: int
    n_models: int


def _registry_statements(settings: Settings) -> dict[str, dict[str, str]]:
    """``privacy.*`` tags of every version of the registered model, by version."""
    uri = settings.resolved_mlflow_registry_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return {}
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=settings.resolved_mlflow_tracking_uri, registry_uri=uri)
    try:
        versions = client.search_model_versions(f"name='{settings.registered_model_name}'")
    except MlflowException:
        return {}
    return {
        str(v.version): {
            k.removeprefix(TAG_PREFIX): val for k, val in v.tags.items() if k.startswith(TAG_PREFIX)
        }
        for v in versions
    }


def collect(settings: Settings, *, at: dt.datetime, use_registry: bool = True) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-able data (never creates a ledger)."""
    url = settings.resolved_ledger_url
    verification = verify_settings(settings, at=at, use_registry=use_registry)
    budgets = []
    series: dict[str, list[tuple[str, float]]] = {}
    charges = []
    anchor = None
    key = find_ledger_key(settings)
    try:
        ledger = Ledger(url, key=key) if verification.ok and verification.rows_checked else Ledger(url)
    except LedgerMissing:
        ledger = None
    if ledger is not None and verification.rows_checked:
        try:
            charges = ledger.charges()
            for budget in ledger.budgets():
                report = ledger.spent(budget.scope, at)
                budgets.append(
                    {
                        "scope": budget.scope,
                        "unit": budget.unit,
                        "period_days": budget.period_days,
                        "epsilon_cap": budget.epsilon_cap,
                        "delta": budget.delta,
                        "spent_epsilon": report.epsilon,
                        "remaining_epsilon": report.remaining,
                        "accountant": report.accountant,
                        "charges_counted": list(report.charge_ids),
                        "policy_id": budget.id,
                        "policy_set_by": budget.set_by,
                        "policy_reason": budget.reason,
                    }
                )
                moments = sorted(
                    {c.data_window[1] for c in charges if c.scope == budget.scope and c.data_window[1] < at}
                    | {at}
                )
                series[budget.scope] = [
                    (t.isoformat(), ledger.spent(budget.scope, t).epsilon) for t in moments
                ]
            # this report anchors the verified ledger's head outside the database (tasks.privacy.anchors)
            anchor = ledger.anchor() if verification.ok else None
        finally:
            ledger.close()
    elif ledger is not None:
        ledger.close()

    registry = _registry_statements(settings) if use_registry else {}
    audits = load_audits(settings)
    models = []
    for charge in charges:
        if charge.status is not ChargeStatus.COMMITTED or not isinstance(charge.mechanism, DpSgdMechanism):
            continue
        version = charge.model_version or f"charge-{charge.id}"
        statement = PrivacyStatement.from_charge(charge, secure_rng=False).to_dict()
        statement["epsilon_with_counts"] = None  # the count releases shipped are in the registry's tags
        tags = registry.get(version, {})
        if tags:
            statement["secure_rng"] = tags.get("secure_rng") == "true"
            statement["source"] = "mlflow registry tags and privacy ledger"
            statement["registry_epsilon"] = float(tags["epsilon"]) if "epsilon" in tags else None
            statement["noise_generator"] = tags.get("noise_generator", statement["noise_generator"])
            statement["count_mechanisms"] = tags.get("count_mechanisms", "not recorded")
            shipped = tags.get("epsilon_with_counts", "unrecorded")
            statement["epsilon_with_counts"] = None if shipped == "unrecorded" else float(shipped)
        else:
            statement["secure_rng"] = "not recorded"
            statement["count_mechanisms"] = "not recorded"
            statement["source"] = "privacy ledger (no registry statement found)"
        audit = audits.get(version)
        models.append(
            {
                "model_version": version,
                "artifact_uri": charge.artifact_uri,
                "statement": statement,
                "audit": asdict(audit) if audit else None,
                # days of the training window that ingest rejected: quarantined, not trained on
                "rejected_days": [
                    d.isoformat()
                    for d in rejected_days(
                        settings, charge.data_window[0].date(), charge.data_window[1].date()
                    )
                ],
            }
        )

    return {
        "generated_for": at.isoformat(),
        "ledger": sa.engine.make_url(url).render_as_string(hide_password=True),
        "verification": asdict(verification),
        REPORT_ANCHOR_FIELD: anchor,
        "budgets": budgets,
        "cumulative_epsilon": series,
        "charges": [
            {
                "id": c.id,
                "scope": c.scope,
                "run_id": c.run_id,
                "purpose": c.purpose,
                "mechanism": mechanism_kind(c.mechanism),
                "parameters": asdict(c.mechanism),
                "data_window": [c.data_window[0].isoformat(), c.data_window[1].isoformat()],
                "n_users": c.n_users,
                "epsilon": c.epsilon,
                "composed_epsilon": c.composed_epsilon,
                "delta": c.delta,
                "status": c.status.value,
                "model_version": c.model_version,
                "code_version": c.code_version,
                "data_hash": c.data_hash,
            }
            for c in charges
        ],
        "models": models,
        "notes": [
            "Every epsilon is (epsilon, delta)-DP with the user as privacy unit, composed with Renyi DP "
            "(ledger accountant opacus-rdp; independently recomputed with dp_accounting-rdp).",
            LOWER_BOUND_NOTE,
        ],
    }


def _markdown(data: dict[str, Any]) -> str:
    verification = data["verification"]
    lines = [
        f"# ShopRec privacy compliance report ({data['generated_for']})",
        "",
        f"Ledger: `{data['ledger']}`. Verification with {verification['accountant']}: "
        + ("**passed**" if verification["ok"] else "**FAILED**")
        + f" ({verification['rows_checked']} rows, {verification['charges_checked']} charges recomputed).",
        *[f"- problem: {p}" for p in verification["problems"]],
        "",
        "Ledger anchor (chain heads recorded in this report; `shoprec privacy verify` checks the ledger "
        "against it): "
        + (
            ", ".join(
                f"{name} {h['rows']} rows, last id {h['last_id']}, head `{h['head'][:16]}`"
                for name, h in data[REPORT_ANCHOR_FIELD]["tables"].items()
            )
            if data[REPORT_ANCHOR_FIELD]
            else "none (verification failed or the ledger is empty)"
        )
        + ".",
        "",
        "## Budgets",
        "",
        "| scope | unit | period (days) | delta | cap epsilon | spent epsilon | remaining epsilon | accountant |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in data["budgets"]:
        lines.append(
            f"| {b['scope']} | {b['unit']} | {b['period_days']} | {b['delta']:.3g} | {b['epsilon_cap']:.4g} | "
            f"{b['spent_epsilon']:.4g} | {b['remaining_epsilon']:.4g} | {b['accountant']} |"
        )
    lines += ["", "## Models", ""]
    if not data["models"]:
        lines.append("No model has been committed on the ledger yet.")
    for m in data["models"]:
        s = m["statement"]
        lines += [
            f"### Model version {m['model_version']}",
            "",
            f"- Privacy statement: {s['summary']}",
            f"- Secure RNG used: {s['secure_rng']} (source: {s['source']})",
            f"- DP-SGD noise generator: {s['noise_generator']}",
            f"- Count releases: {s['count_mechanisms']}",
            f"- Ledger charge: {s['ledger_charge_id']}; artifact: {m['artifact_uri']}",
            f"- Days of its data window rejected at ingest: {', '.join(m.get('rejected_days', [])) or 'none'}",
        ]
        audit = m["audit"]
        if audit:
            lines.append(
                f"- Empirical audit ({audit['attack']}): AUC {audit['auc']:.3f}, epsilon lower bound "
                f"{audit['eps_lower_bound']:.3g} at delta={audit['delta']:.3g} ({audit['confidence']:.0%} "
                f"confidence; {audit['n_members']} members, {audit['n_nonmembers']} non-members)"
            )
        else:
            lines.append("- Empirical audit: none recorded for this version")
        lines.append("")
    lines += [
        "## Charges",
        "",
        "| id | scope | run | purpose | mechanism | data window | users | epsilon | composed | status | model |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in data["charges"]:
        lines.append(
            f"| {c['id']} | {c['scope']} | {c['run_id']} | {c['purpose']} | {c['mechanism']} | "
            f"{c['data_window'][0][:10]}..{c['data_window'][1][:10]} | {c['n_users']} | {c['epsilon']:.4g} | "
            f"{c['composed_epsilon']:.4g} | {c['status']} | {c['model_version'] or ''} |"
        )
    lines += ["", "## Notes", "", *[f"- {n}" for n in data["notes"]], ""]
    return "\n".join(lines)


def _chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib
    import matplotlib.dates

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.5))
    for b in data["budgets"]:
        points = data["cumulative_epsilon"][b["scope"]]
        times = matplotlib.dates.date2num([dt.datetime.fromisoformat(t) for t, _ in points])
        axes.step(times, [e for _, e in points], where="post", marker="o", label=f"{b['scope']} spent")
        axes.axhline(b["epsilon_cap"], linestyle="--", color="grey", label=f"{b['scope']} cap")
    axes.set_ylabel("epsilon (user, RDP)")
    axes.set_title("Composed epsilon of the rolling budget period")
    axes.legend(loc="upper left")
    axes.xaxis_date()
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _html(markdown: str, chart: Path) -> str:

    image = base64.b64encode(chart.read_bytes()).decode()
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>ShopRec privacy report</title></head><body>"
        f"<img alt='cumulative epsilon over time' src='data:image/png;base64,{image}'/>"
        f"<pre>{html.escape(markdown)}</pre></body></html>"
    )


def write_report(settings: Settings, *, at: dt.datetime, use_registry: bool = True) -> ReportManifest:
    """Write the compliance report for time ``at``; returns where it is."""
    data = collect(settings, at=at, use_registry=use_registry)
    root = settings.reports_dir / "privacy"
    final = root / at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    markdown = _markdown(data)

    def write(staging: Path) -> None:
        (staging / "privacy_report.md").write_text(markdown)
        (staging / "privacy_report.json").write_text(json.dumps(data, indent=2, sort_keys=True))
        _chart(data, staging / "cumulative_epsilon.png")
        (staging / "privacy_report.html").write_text(_html(markdown, staging / "cumulative_epsilon.png"))

    replace_dir(final, write)
    return ReportManifest(
        directory=str(final),
        markdown=str(final / "privacy_report.md"),
        json=str(final / "privacy_report.json"),
        html=str(final / "privacy_report.html"),
        verified=bool(data["verification"]["ok"]),
        n_budgets=len(data["budgets"]),
        n_charges=len(data["charges"]),
        n_models=len(data["models"]),
    )
