"""The privacy statement of one released model: what it guarantees, to whom, by which accountant.

Every registered MLflow model version carries it as tags (``privacy.*``) and as the run artifact
``privacy/privacy_statement.json`` (:func:`attach_to_model_version`), so the registry itself answers
"what privacy loss does this model imply?".

It names the generator that drew DP-SGD's noise and Poisson sampling (``noise_generator``; torch's
generators are not CSPRNGs, and the statement says so) and the count releases the model ships
(``count_mechanisms``: OpenDP's discrete Gaussian with its rho, epsilon, delta and ledger charge).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from tasks.privacy.accounting import (
    DiscreteGaussianCountMechanism,
    DpSgdMechanism,
    GaussianCountMechanism,
    LaplaceCountMechanism,
    compose_epsilon,
)
from tasks.privacy.anchors import ANCHOR_TAG
from tasks.privacy.ledger import Charge

STATEMENT_ARTIFACT: Final = "privacy/privacy_statement.json"
ANCHOR_ARTIFACT: Final = "privacy/ledger_anchor.json"
TAG_PREFIX: Final = "privacy."
# statements written before the generator was recorded
UNRECORDED_GENERATOR: Final = "torch default PRNG (generator and seeding not recorded); not a CSPRNG"


# What a model version's (epsilon, delta) does not cover, stated on every version (docs/privacy.md,
# "Threat model and trust boundary", says who can read each of these).
NOT_COVERED: Final[tuple[str, ...]] = (
    "blend weights (popularity, text-neighbour, model and repeat weights: 5 choices from fixed grids) "
    "selected by NDCG@10 on real users' validation window without a DP selection mechanism",
    "the promotion decision (one bit per version) and the evaluation metrics, computed on real users' "
    "test window without DP (MLflow, operators only)",
    "the non-private twin model and its metrics (MLflow, operators only; never published)",
    "floating-point attacks on DP-SGD's Gaussian noise (torch's generators are not CSPRNGs)",
)


def describe_count_charge(charge: Charge) -> str:
    """One line naming a count release's mechanism, its cost and its ledger charge."""
    m = charge.mechanism
    cost = (
        f"epsilon {charge.epsilon:.4g} at delta {charge.delta:.3g} per {charge.unit} "
        f"({charge.accountant}), ledger charge {charge.id} ({charge.purpose})"
    )
    if isinstance(m, DiscreteGaussianCountMechanism):
        return (
            f"OpenDP discrete Gaussian counts (CSPRNG): {m.releases} release(s), scale {m.scale:.4g}, "
            f"L2 sensitivity {m.l2_sensitivity:.4g}, rho {m.rho:.4g}-zCDP; {cost}"
        )
    if isinstance(m, GaussianCountMechanism):
        return (
            f"Gaussian counts (numpy PCG64, seeded; legacy): {m.releases} release(s), sigma {m.sigma:.4g}, "
            f"L2 sensitivity {m.l2_sensitivity:.4g}; {cost}"
        )
    if isinstance(m, LaplaceCountMechanism):
        return f"Laplace counts: {m.releases} release(s), scale {m.scale:.4g}; {cost}"
    raise TypeError(f"charge {charge.id} is not a count release ({type(m).__name__})")


@dataclass(kw_only=True)
class PrivacyStatement:
    """(epsilon, delta)-DP at user level for one DP-SGD training, as composed by ``accountant``."""

    epsilon: float
    delta: float
    unit: str = "user"
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    cap_k: int
    data_window: tuple[dt.datetime, dt.datetime]
    n_users: int
    ledger_charge_id: int
    secure_rng: bool
    noise_generator: str = UNRECORDED_GENERATOR
    count_mechanisms: tuple[str, ...] = ()
    not_covered: tuple[str, ...] = NOT_COVERED
    # epsilon at ``delta`` of the training and every count release the version ships, composed by the
    # ledger accountant (None: no count release given, or a statement written before it was recorded)
    epsilon_with_counts: float | None = None
    # what the DP-SGD charge covers when it is more than one training ("": the released model's alone)
    trainings: str = ""

    @classmethod
    def from_charge(
        cls,
        charge: Charge,
        *,
        secure_rng: bool,
        noise_generator: str = UNRECORDED_GENERATOR,
        count_charges: Sequence[Charge] = (),
        trainings: str = "",
    ) -> PrivacyStatement:
        """The statement of a DP-SGD charge (epsilon of this training alone, at the budget's delta),
        naming the noise generator and the count releases (``count_charges``) shipped with the model,
        and the epsilon of the training and those releases composed (``epsilon_with_counts``);
        ``trainings`` says which trainings the charge covers when it covers more than one."""
        mechanism = charge.mechanism
        if not isinstance(mechanism, DpSgdMechanism):
            raise TypeError(f"charge {charge.id} is not a DP-SGD training ({type(mechanism).__name__})")
        shipped = (
            compose_epsilon([mechanism, *(c.mechanism for c in count_charges)], charge.delta)
            if count_charges
            else None
        )
        return cls(
            epsilon_with_counts=shipped,
            epsilon=charge.epsilon,
            delta=charge.delta,
            unit=charge.unit,
            accountant=charge.accountant,
            noise_multiplier=mechanism.noise_multiplier,
            sample_rate=mechanism.sample_rate,
            steps=mechanism.steps,
            clip_norm=mechanism.clip_norm,
            cap_k=mechanism.cap_k,
            data_window=charge.data_window,
            n_users=charge.n_users,
            ledger_charge_id=charge.id,
            secure_rng=secure_rng,
            noise_generator=noise_generator,
            count_mechanisms=tuple(describe_count_charge(c) for c in count_charges),
            trainings=trainings,
        )

    def summary(self) -> str:
        rng = "secure RNG (torchcsprng)" if self.secure_rng else f"NOT a secure RNG: {self.noise_generator}"
        counts = "".join(f"; {line}" for line in self.count_mechanisms)
        shipped = (
            ""
            if self.epsilon_with_counts is None
            else f"the model with its count releases: ({self.epsilon_with_counts:.4g}, {self.delta:.3g})-DP "
            f"per {self.unit} ({self.accountant} accountant); its DP-SGD training alone: "
        )
        trainings = f"; {self.trainings}" if self.trainings else ""
        return (
            f"{shipped}"
            f"({self.epsilon:.4g}, {self.delta:.3g})-DP per {self.unit} ({self.accountant} accountant){trainings}; "
            f"DP-SGD noise multiplier {self.noise_multiplier:.4g}, sample rate {self.sample_rate:.4g}, "
            f"{self.steps} steps, clip norm {self.clip_norm:.4g}, at most {self.cap_k} examples per user; "
            f"{self.n_users} users, data {self.data_window[0].date()}..{self.data_window[1].date()}; "
            f"DP-SGD noise and Poisson sampling drawn with {rng}{counts}; not covered: "
            + "; ".join(self.not_covered)
        )

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["data_window"] = [moment.isoformat() for moment in self.data_window]
        values["summary"] = self.summary()
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> PrivacyStatement:
        values = json.loads(text)
        values.pop("summary", None)
        start, end = values.pop("data_window")
        values["count_mechanisms"] = tuple(values.get("count_mechanisms", ()))
        values["not_covered"] = tuple(values.get("not_covered", NOT_COVERED))
        return cls(**values, data_window=(dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)))

    def to_tags(self) -> dict[str, str]:
        """MLflow tags (strings) under ``privacy.``."""
        tags = {
            "epsilon": repr(self.epsilon),
            "delta": repr(self.delta),
            "unit": self.unit,
            "accountant": self.accountant,
            "noise_multiplier": repr(self.noise_multiplier),
            "sample_rate": repr(self.sample_rate),
            "steps": str(self.steps),
            "clip_norm": repr(self.clip_norm),
            "cap_k": str(self.cap_k),
            "data_window_start": self.data_window[0].isoformat(),
            "data_window_end": self.data_window[1].isoformat(),
            "n_users": str(self.n_users),
            "ledger_charge_id": str(self.ledger_charge_id),
            "secure_rng": str(self.secure_rng).lower(),
            "noise_generator": self.noise_generator,
            "count_mechanisms": " | ".join(self.count_mechanisms) or "none",
            "epsilon_with_counts": "unrecorded"
            if self.epsilon_with_counts is None
            else repr(self.epsilon_with_counts),
            "not_covered": " | ".join(self.not_covered) or "none",
            "trainings": self.trainings or "the released model's training alone",
            "statement": self.summary(),
        }
        return {TAG_PREFIX + key: value for key, value in tags.items()}


def attach_to_model_version(
    statement: PrivacyStatement,
    *,
    tracking_uri: str,
    registry_uri: str,
    model_name: str,
    version: str,
    ledger_anchor: Mapping[str, Any] | None = None,
) -> str | None:
    """Tag a registered model version with its statement (and the ledger's anchor, tag ``privacy.ledger_anchor``,
    recorded after the version's charges were committed) and log both as artifacts of its run.

    Returns the statement's artifact path, or None when the version has no run to log it to.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    anchor = (
        None if ledger_anchor is None else json.dumps(ledger_anchor, sort_keys=True, separators=(",", ":"))
    )
    for key, value in statement.to_tags().items():
        client.set_model_version_tag(model_name, version, key, value)
    if anchor is not None:
        client.set_model_version_tag(model_name, version, ANCHOR_TAG, anchor)
    run_id = client.get_model_version(model_name, version).run_id
    if not run_id:
        return None
    client.log_text(run_id, statement.to_json(), STATEMENT_ARTIFACT)
    if anchor is not None:
        client.log_text(run_id, anchor, ANCHOR_ARTIFACT)
    return STATEMENT_ARTIFACT
