"""Empirical privacy audit: the loss-threshold membership-inference attack and the bound it implies.

Members are users the model was trained on, non-members held-out users of the same period.  The attack
guesses "member" when a user's loss is at most a threshold.  Its ROC AUC measures how well it separates
the two groups (0.5: no better than chance).  Any (epsilon, delta)-DP mechanism forces every such test
to satisfy ``TPR <= e^eps * FPR + delta`` and ``1 - FPR <= e^eps * (1 - TPR) + delta``, so a measured
(TPR, FPR) pair gives a lower bound on epsilon.  TPR and FPR are replaced by Clopper-Pearson bounds
(Bonferroni-corrected over the thresholds tried) so the bound holds with the stated confidence.

An empirical bound is a LOWER bound on the privacy loss (what this attack demonstrates); the ledger's
epsilon is the GUARANTEE (an upper bound that holds against every attack).

The trainer hands its per-user losses over with :func:`write_membership_losses`; the ``privacy_audit``
DAG audits every model version that has losses and no audit yet (:func:`audit_pending`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.config import Settings
from tasks.io import atomic_write_parquet, atomic_write_text

ATTACK: Final = "loss-threshold"
LOWER_BOUND_NOTE: Final = (
    "The empirical epsilon is a lower bound: the privacy loss this attack demonstrates. The ledger's "
    "epsilon is the guarantee: an upper bound that holds against every attack."
)


@dataclass(frozen=True)
class AuditResult:
    attack: str
    auc: float
    eps_lower_bound: float
    delta: float
    confidence: float
    n_members: int
    n_nonmembers: int
    threshold: float
    tpr: float
    fpr: float
    note: str = LOWER_BOUND_NOTE

    def summary(self) -> str:
        return (
            f"{self.attack} membership inference: AUC {self.auc:.3f} on {self.n_members} members / "
            f"{self.n_nonmembers} non-members; empirical epsilon lower bound {self.eps_lower_bound:.3g} "
            f"at delta={self.delta:.3g} ({self.confidence:.0%} confidence, unit: user)"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> AuditResult:
        return cls(**json.loads(text))


def membership_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """P(a member's loss < a non-member's loss), ties counted half (Mann-Whitney U / n_m n_n)."""
    from scipy import stats

    ranks = stats.rankdata(np.concatenate([nonmember_losses, member_losses]))
    n_n, n_m = len(nonmember_losses), len(member_losses)
    u_nonmember = ranks[:n_n].sum() - n_n * (n_n + 1) / 2  # pairs where the non-member's loss is larger
    return float(u_nonmember / (n_n * n_m))


def _epsilon_from_rates(tpr: float, fpr: float, delta: float) -> float:
    bounds = [0.0]
    if tpr - delta > 0 and fpr > 0:
        bounds.append(math.log((tpr - delta) / fpr))
    if 1 - fpr - delta > 0 and 1 - tpr > 0:
        bounds.append(math.log((1 - fpr - delta) / (1 - tpr)))
    return max(bounds)


def loss_threshold_audit(
    member_losses: Sequence[float] | np.ndarray,
    nonmember_losses: Sequence[float] | np.ndarray,
    delta: float,
    *,
    confidence: float = 0.95,
    n_thresholds: int = 50,
) -> AuditResult:
    """Loss-threshold attack: its AUC and the epsilon lower bound at ``delta`` it proves."""
    from scipy import stats

    members = np.asarray(member_losses, dtype=np.float64)
    nonmembers = np.asarray(nonmember_losses, dtype=np.float64)
    if len(members) == 0 or len(nonmembers) == 0:
        raise ValueError("the audit needs at least one member and one non-member loss")
    if not (np.isfinite(members).all() and np.isfinite(nonmembers).all()):
        raise ValueError("losses must be finite")
    auc = membership_auc(members, nonmembers)
    pooled = np.concatenate([members, nonmembers])
    thresholds = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, n_thresholds + 2)[1:-1]))
    alpha = (1 - confidence) / (2 * len(thresholds))  # Bonferroni over thresholds and both rates
    best = (0.0, float(thresholds[0]), 0.0, 0.0)
    n_m, n_n = len(members), len(nonmembers)
    for threshold in thresholds:
        tp = int((members <= threshold).sum())
        fp = int((nonmembers <= threshold).sum())
        tpr_low = float(stats.beta.ppf(alpha, tp, n_m - tp + 1)) if tp > 0 else 0.0
        fpr_high = float(stats.beta.ppf(1 - alpha, fp + 1, n_n - fp)) if fp < n_n else 1.0
        epsilon = _epsilon_from_rates(tpr_low, fpr_high, delta)
        if epsilon > best[0]:
            best = (epsilon, float(threshold), tp / n_m, fp / n_n)
    return AuditResult(
        attack=ATTACK,
        auc=auc,
        eps_lower_bound=best[0],
        delta=delta,
        confidence=confidence,
        n_members=n_m,
        n_nonmembers=n_n,
        threshold=best[1],
        tpr=best[2],
        fpr=best[3],
    )


# --- hand-over between trainer, DAG and report ----------------------------------------------------


def membership_dir(settings: Settings) -> Path:
    return settings.privacy_dir / "membership"


def audits_dir(settings: Settings) -> Path:
    return settings.privacy_dir / "audits"


def write_membership_losses(
    settings: Settings,
    model_version: str,
    member_losses: Sequence[float] | np.ndarray,
    nonmember_losses: Sequence[float] | np.ndarray,
    *,
    delta: float,
) -> Path:
    """Store per-user losses of a model version (members = training users) for the audit."""
    frame = pd.DataFrame(
        {
            "loss": np.concatenate([np.asarray(member_losses), np.asarray(nonmember_losses)]).astype(float),
            "member": [True] * len(member_losses) + [False] * len(nonmember_losses),
            "delta": float(delta),
        }
    )
    path = membership_dir(settings) / f"{model_version}.parquet"
    atomic_write_parquet(path, pa.Table.from_pandas(frame, preserve_index=False))
    return path


def audit_model_version(settings: Settings, model_version: str) -> AuditResult:
    """Audit one model version from its stored losses; writes ``privacy/audits/<version>.json``."""
    frame = pd.read_parquet(membership_dir(settings) / f"{model_version}.parquet")
    result = loss_threshold_audit(
        frame.loc[frame["member"], "loss"].to_numpy(),
        frame.loc[~frame["member"], "loss"].to_numpy(),
        float(frame["delta"].iloc[0]),
    )
    atomic_write_text(audits_dir(settings) / f"{model_version}.json", result.to_json())
    return result


def audit_pending(settings: Settings) -> list[str]:
    """Audit every model version that has stored losses and no audit yet; returns their versions."""
    if not membership_dir(settings).is_dir():
        return []
    done = set(load_audits(settings))
    pending = sorted(p.stem for p in membership_dir(settings).glob("*.parquet") if p.stem not in done)
    for version in pending:
        audit_model_version(settings, version)
    return pending


def load_audits(settings: Settings) -> dict[str, AuditResult]:
    """Stored audit results by model version."""
    if not audits_dir(settings).is_dir():
        return {}
    return {p.stem: AuditResult.from_json(p.read_text()) for p in sorted(audits_dir(settings).glob("*.json"))}
