"""The budget policy a run works under: the ledger's, never the configuration's.

The configuration (``SHOPREC_PRIVACY_EPSILON_CAP``, ``SHOPREC_PRIVACY_DELTA``,
``SHOPREC_PRIVACY_PERIOD_DAYS``) only seeds the first policy of an empty ledger; a further scope is
opened by command only (``SHOPREC_PRIVACY_SCOPE`` set to a new name would otherwise buy a fresh budget
over the same users).  Afterwards the policy
changes only through ``shoprec privacy budget set`` (recorded with who and why); a value set
explicitly in the configuration that disagrees with the ledger's policy makes the run refuse
(:class:`PolicyMismatch`) instead of raising the cap.  When ``privacy_delta`` is not set, the delta
derived from the number of users seeds the first policy and the ledger's delta is used afterwards.
"""

from __future__ import annotations

import datetime as dt
import getpass
import math
from typing import Any, Final

from tasks.config import Settings
from tasks.privacy.accounting import DpSgdMechanism, Mechanism
from tasks.privacy.ledger import Budget, Charge, Ledger, calibrate_noise_multiplier

BUDGET_SET_COMMAND: Final = (
    "shoprec privacy budget set --cap CAP --delta DELTA --period-days DAYS --reason '...'"
)


class PolicyMismatch(RuntimeError):
    """The configuration asks for another budget policy than the ledger's: the run is refused."""


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def policy_conflicts(settings: Settings, budget: Budget) -> list[str]:
    """Explicitly configured policy values that differ from the ledger's policy ``budget``."""
    explicit = settings.model_fields_set
    conflicts = []
    if "privacy_epsilon_cap" in explicit and not math.isclose(
        settings.privacy_epsilon_cap, budget.epsilon_cap, rel_tol=1e-12
    ):
        conflicts.append(
            f"SHOPREC_PRIVACY_EPSILON_CAP={settings.privacy_epsilon_cap:g} but the ledger's cap is "
            f"{budget.epsilon_cap:g}"
        )
    if (
        "privacy_delta" in explicit
        and settings.privacy_delta is not None
        and not math.isclose(settings.privacy_delta, budget.delta, rel_tol=1e-12)
    ):
        conflicts.append(
            f"SHOPREC_PRIVACY_DELTA={settings.privacy_delta:.3g} but the ledger's delta is {budget.delta:.3g}"
        )
    if "privacy_period_days" in explicit and settings.privacy_period_days != budget.period_days:
        conflicts.append(
            f"SHOPREC_PRIVACY_PERIOD_DAYS={settings.privacy_period_days} but the ledger's period is "
            f"{budget.period_days} days"
        )
    return conflicts


def budget_for_run(ledger: Ledger, settings: Settings, *, n_users: int) -> Budget:
    """The policy in force of ``settings.privacy_scope`` (created from the configuration when the scope
    has none); raises :class:`PolicyMismatch` when the configuration explicitly disagrees with it."""
    others = sorted(b.scope for b in ledger.budgets() if b.scope != settings.privacy_scope)
    if others and settings.privacy_scope not in {b.scope for b in ledger.budgets()}:
        raise PolicyMismatch(
            f"privacy scope {settings.privacy_scope!r} has no policy, but this ledger already budgets "
            f"{', '.join(map(repr, others))}: the configuration never opens a new scope (over the same "
            f"users it would be a fresh budget). Check SHOPREC_PRIVACY_SCOPE, or open the scope with "
            f"`{BUDGET_SET_COMMAND} --scope {settings.privacy_scope}`"
        )
    delta = settings.privacy_delta or 1.0 / (10 * max(n_users, 1))
    budget = ledger.ensure_budget(
        settings.privacy_scope,
        settings.privacy_epsilon_cap,
        delta,
        settings.privacy_period_days,
        set_by=f"configuration ({current_user()})",
    )
    conflicts = policy_conflicts(settings, budget)
    if conflicts:
        raise PolicyMismatch(
            f"privacy budget {settings.privacy_scope!r}: the configuration disagrees with the ledger's policy "
            f"(cap {budget.epsilon_cap:g}, delta {budget.delta:.3g}, period {budget.period_days} days, policy "
            f"{budget.id}): {'; '.join(conflicts)}. The configuration never changes the policy: change it with "
            f"`{BUDGET_SET_COMMAND}` or unset the variable"
        )
    return budget


def require_delta_within_users(delta: float, n_users: int, *, purpose: str) -> None:
    """Refuse a run whose delta exceeds ``1 / n_users``: the scope's delta was set on another population
    (``1 / (10 n)`` of the run that created the policy), and over more users than ``1 / delta`` it no
    longer bounds the chance of exposing some user whole."""
    if n_users > 0 and delta > 1.0 / n_users:
        raise ValueError(
            f"{purpose}: the privacy policy's delta {delta:.3g} exceeds 1/n_users = {1.0 / n_users:.3g} "
            f"for {n_users} users; set a smaller delta with `{BUDGET_SET_COMMAND}` (a new policy)"
        )


def active_charge(ledger: Any, scope: str, run_key: str, purpose: str) -> Any:
    """The run's reserved charge for ``purpose`` (a retried attempt resumes under it), or None.

    A committed charge means the run already produced its artifact: running it again would release
    and train again under a spent charge, so it is refused (a new run gets a new run key).
    """
    for charge in ledger.charges(scope):
        if charge.run_id != run_key or charge.purpose != purpose or str(charge.status) == "released":
            continue
        if str(charge.status) == "committed":
            raise RuntimeError(
                f"run {run_key!r}: its {purpose} charge {charge.id} is already committed (model version "
                f"{charge.model_version}); running it again would release again under a spent charge. "
                "Start a new run instead of clearing this one"
            )
        return charge
    return None


def count_charge(
    ledger: Ledger,
    settings: Settings,
    *,
    run_key: str,
    purpose: str,
    mechanism: Mechanism,
    data_window: tuple[dt.datetime, dt.datetime],
    n_users: int,
    code_version: str,
    data_hash: str,
) -> Charge:
    """The ledger charge a count release (``mechanism``: what this attempt will run) of ``run_key`` is
    made under: the run's reserved one (:func:`active_charge`) or a new reservation.

    A retry releases with the settings it reads, so a reserved charge whose mechanism differs from
    ``mechanism`` (the noise multiplier or the cap changed since the first attempt) is refused: drawing
    under it would release with other noise than the ledger holds.
    """
    charge = active_charge(ledger, settings.privacy_scope, run_key, purpose)
    if charge is None:
        return ledger.reserve(
            mechanism=mechanism,
            data_window=data_window,
            purpose=purpose,
            scope=settings.privacy_scope,
            run_id=run_key,
            n_users=n_users,
            code_version=code_version,
            data_hash=data_hash,
        )
    if charge.mechanism != mechanism:
        raise RuntimeError(
            f"run {run_key!r}: its {purpose} charge {charge.id} was reserved for {charge.mechanism}, "
            f"but this attempt's settings would release {mechanism}; refusing to release under it "
            "(restore the run's settings, or start a new run)"
        )
    return charge


def dp_sgd_charge(
    ledger: Ledger,
    settings: Settings,
    *,
    run_key: str,
    purpose: str,
    sample_rate: float,
    steps: int,
    delta: float,
    epsilon_target: float | None,
    clip_norm: float,
    cap_k: int,
    data_window: tuple[dt.datetime, dt.datetime],
    at: dt.datetime,
    n_users: int,
    code_version: str,
    data_hash: str,
) -> tuple[Charge, DpSgdMechanism]:
    """The ledger charge a DP-SGD run of ``run_key`` trains under and its mechanism (privacy unit: one
    user).

    A retried attempt gets the charge its first attempt reserved back (:func:`active_charge`: train
    with ``charge.mechanism``, never a recalibration; a committed one is refused). Otherwise the noise
    multiplier is calibrated with the ledger accountant so that the scope's active charges of the
    period ending at ``at`` and this run of ``steps`` Poisson-sampled steps at ``sample_rate`` compose
    to at most min(cap, spent + ``epsilon_target``) at ``delta`` (``None``: up to the cap), and that
    :class:`~tasks.privacy.accounting.DpSgdMechanism` is reserved. Raises
    :class:`~tasks.privacy.ledger.BudgetExceeded`, reserving nothing, when the budget has nothing left
    or so little that the noise multiplier would exceed ``settings.dp_max_noise_multiplier``.
    """
    scope = settings.privacy_scope
    charge = active_charge(ledger, scope, run_key, purpose)
    if charge is None:
        noise = calibrate_noise_multiplier(
            ledger,
            scope=scope,
            sample_rate=sample_rate,
            steps=steps,
            delta=delta,
            epsilon_target=epsilon_target,
            at=at,
            max_noise_multiplier=settings.dp_max_noise_multiplier,
        )
        charge = ledger.reserve(
            scope=scope,
            run_id=run_key,
            mechanism=DpSgdMechanism(noise, sample_rate, steps, clip_norm=clip_norm, cap_k=cap_k),
            data_window=data_window,
            n_users=n_users,
            code_version=code_version,
            data_hash=data_hash,
            purpose=purpose,
        )
    if not isinstance(charge.mechanism, DpSgdMechanism):
        raise TypeError(
            f"charge {charge.id} of {purpose} holds {type(charge.mechanism).__name__}, not DP-SGD"
        )
    return charge, charge.mechanism
