"""Privacy budget ledger, accounting, verification, reports and empirical audits (issue 6).

Privacy unit: one user.  Every epsilon here is stated with its delta and the accountant that produced
it (``opacus-rdp`` on the ledger, ``dp_accounting-rdp`` for independent verification).

API others code against::

    from tasks.privacy import (DpSgdMechanism, DiscreteGaussianCountMechanism,
                               Ledger, BudgetExceeded, calibrate_noise_multiplier, PrivacyStatement,
                               release_dp_popularity, loss_threshold_audit, verify_ledger)

    ledger = open_ledger(settings)        # tasks.privacy.ledger_key: the ledger with its HMAC key
    budget = budget_for_run(ledger, settings, n_users=n)  # tasks.privacy.policy: the ledger's policy;
        # raises PolicyMismatch when SHOPREC_PRIVACY_* explicitly disagrees (never raises the cap)
    ledger.set_budget(scope, cap, delta, days, set_by=who, reason=why)  # `shoprec privacy budget set`
    noise = calibrate_noise_multiplier(ledger, scope=..., sample_rate=q, steps=T, delta=delta,
                                       epsilon_target=None, at=data_interval_end)
    charge = ledger.reserve(scope=..., run_id=run_id, mechanism=DpSgdMechanism(noise, q, T, clip, k),
                            data_window=(start, end), n_users=n, code_version=git_sha,
                            data_hash=snapshot_hash, purpose="train_recommender")
        # raises BudgetExceeded(spent, requested, remaining, message); idempotent on (run_id, purpose):
        # a retried task gets its active charge back (use charge.mechanism, not a recalibration)
    ... train with charge.mechanism ...
    ledger.release(charge.id)                                  # failed before any artifact was written
    ledger.commit(charge.id, model_version="3", artifact_uri=uri)  # wrote a model, promoted or not
    statement = PrivacyStatement.from_charge(charge, secure_rng=False, noise_generator=...,
                                             count_charges=[popularity_charge])
    attach_to_model_version(statement, tracking_uri=..., registry_uri=..., model_name=..., version="3",
                            ledger_anchor=ledger.anchor())       # the chain head, anchored in MLflow
    write_membership_losses(settings, "3", member_losses, heldout_losses, delta=delta)  # for the audit

    ledger.spent(scope, at) -> EpsilonReport (epsilon, delta, unit, accountant, cap, remaining)
    release_dp_popularity(events, sigma=, cap_per_user=, by_country=) -> DataFrame
        # OpenDP discrete Gaussian, CSPRNG noise (no seed); reserve popularity_mechanism(sigma,
        # cap_per_user) (DiscreteGaussianCountMechanism, rho-zCDP) on the ledger first
    CooccurrenceRelease(noise_multiplier=, cap_per_user=, days=, event_types=).release(events, end,
                        item_ids=public_domain) -> CooccurrenceCounts
        # item-item pair counts, at most cap_per_user items per user (L2 sensitivity sqrt(k(k+1)/2)),
        # the same OpenDP count helper; reserve .mechanism() first; behaviour_vectors(release, dim)
        # -> [n_items, dim] item vectors (post-processing)
    loss_threshold_audit(member_losses, nonmember_losses, delta) -> AuditResult (auc, eps_lower_bound)
    verify_settings(settings) -> VerifyResult (ok, problems): keyed chains, every anchor, references,
        transitions, every policy; verify_ledger(url, key=, anchors=, dp_versions=) underneath

CLI: ``shoprec privacy verify|report|status|budget set|budget show|prepare-postgres``
(:data:`tasks.privacy.cli.app`).

Modules: ``accounting`` (mechanisms, both accountants), ``ledger`` (tables, reserve/commit/release,
calibration), ``ledger_key``, ``anchors``, ``policy``, ``pg_guard`` (PostgreSQL append-only triggers
and roles), ``verify``, ``statement``, ``audit``, ``popularity`` (and the one DP count helper
``noisy_counts``), ``cooccurrence``, ``report``, ``cli``.  Importing
this package imports SQLAlchemy, numpy, pandas and scipy, never torch, opacus, mlflow, opendp or
dp_accounting (those load inside the functions that need them).
"""

from __future__ import annotations

from tasks.privacy.accounting import (
    DiscreteGaussianCountMechanism,
    DpSgdMechanism,
    GaussianCountMechanism,
    LaplaceCountMechanism,
    Mechanism,
    compose_epsilon,
    independent_epsilon,
)
from tasks.privacy.audit import AuditResult, loss_threshold_audit, write_membership_losses
from tasks.privacy.cooccurrence import CooccurrenceCounts, CooccurrenceRelease, behaviour_vectors
from tasks.privacy.ledger import (
    Budget,
    BudgetExceeded,
    Charge,
    EpsilonReport,
    Ledger,
    calibrate_noise_multiplier,
)
from tasks.privacy.popularity import PopularityRelease, popularity_mechanism, release_dp_popularity
from tasks.privacy.statement import PrivacyStatement, attach_to_model_version
from tasks.privacy.tables import ChargeStatus
from tasks.privacy.verify import VerifyResult, verify_ledger

__all__ = [
    "AuditResult",
    "Budget",
    "BudgetExceeded",
    "Charge",
    "ChargeStatus",
    "CooccurrenceCounts",
    "CooccurrenceRelease",
    "DiscreteGaussianCountMechanism",
    "DpSgdMechanism",
    "EpsilonReport",
    "GaussianCountMechanism",
    "LaplaceCountMechanism",
    "Ledger",
    "Mechanism",
    "PopularityRelease",
    "PrivacyStatement",
    "VerifyResult",
    "attach_to_model_version",
    "behaviour_vectors",
    "calibrate_noise_multiplier",
    "compose_epsilon",
    "independent_epsilon",
    "loss_threshold_audit",
    "popularity_mechanism",
    "release_dp_popularity",
    "verify_ledger",
    "write_membership_losses",
]
