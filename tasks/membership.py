"""Per-user losses of a trained model for the empirical membership-inference audit (issue 6).

Members are the users whose data trained the model; non-members are held-out users of the same
period. Which users are held out is decided BEFORE training and without looking at their data: a
keyed hash of the (pseudonymous) user id and the seed puts a fixed share of users aside
(:func:`holdout_mask`), so held-out users never enter the DP-SGD dataset, the split is the same on
every worker and every retry, and it needs no state to be stored.

The loss of a user is the loss the model was trained on: :class:`tasks.training.UserSoftmaxLoss` of
that user's one sample (features and history at the user's own cut, purchases after it, sampled
negatives), averaged over a few fixed draws of negatives (:func:`per_user_losses`).

:func:`record_membership_losses` does this for a registered model version after ``register_and_gate``
and hands the losses to :func:`tasks.privacy.write_membership_losses`; the ``privacy_audit`` DAG then
reports the attack's AUC and the empirical epsilon lower bound. The empirical epsilon is a LOWER
bound (what this attack demonstrates, at the stated delta, privacy unit: user); the ledger's epsilon
(Opacus RDP accountant) is the GUARANTEE.

It sits above the trainer and the registry (it imports torch): DAG files import it inside task bodies.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from tasks.artifacts import fetch
from tasks.config import Settings
from tasks.dataset import holdout_mask, training_candidates
from tasks.model import TwoTower
from tasks.privacy import write_membership_losses
from tasks.registry import load_version
from tasks.training import UserExamples, UserSoftmaxLoss, build_examples
from tasks.training_data import fetch_training_data

log = logging.getLogger(__name__)

AUDIT_NEGATIVES: Final = 64  # negatives per user when the training manifest does not say (``n_negatives``)
AUDIT_DRAWS: Final = 4  # draws of negatives averaged per user (a steadier estimate of the sample loss)


@dataclass(frozen=True)
class MembershipSplit:
    """Members (trained on) and non-members (held out, never trained on) among candidate users."""

    members: tuple[str, ...]
    nonmembers: tuple[str, ...]


def split_members(
    candidates: Iterable[str], trained: Iterable[str], share: float, *, seed: int
) -> MembershipSplit:
    """Members: candidates that trained. Non-members: candidates held out by :func:`holdout_mask`
    that did not train (a held-out user who trained anyway is a member, never a non-member)."""
    users = [str(u) for u in candidates]
    trained_set = {str(u) for u in trained}
    held = holdout_mask(users, share, seed=seed)
    return MembershipSplit(
        members=tuple(u for u in users if u in trained_set),
        nonmembers=tuple(u for u, h in zip(users, held, strict=True) if h and u not in trained_set),
    )


# --- per-user losses ----------------------------------------------------------------------------------
def per_user_losses(
    model: TwoTower,
    examples: UserExamples,
    *,
    draws: int = AUDIT_DRAWS,
    seed: int = 0,
    batch_size: int = 256,
) -> np.ndarray:
    """``[len(examples)]`` per-user training loss (``UserSoftmaxLoss``, reduction none) of ``model``,
    averaged over ``draws`` fixed draws of each user's negatives. Works on a clean copy of the model
    (no Opacus hooks), in eval mode, without gradients; ``examples`` is not changed."""
    if draws < 1:
        raise ValueError("draws must be at least 1")
    clean = TwoTower(model.config)
    clean.load_state_dict(model.state_dict())
    clean.eval()
    criterion = UserSoftmaxLoss(reduction="none")
    samples = copy.copy(examples)
    total = np.zeros(len(examples), dtype=np.float64)
    with torch.no_grad():
        for draw in range(draws):
            samples.generator = torch.Generator().manual_seed(seed * 1_000 + draw)
            parts = []
            for features, history, candidates, target in DataLoader(samples, batch_size=batch_size):
                parts.append(criterion(clean(features, history, candidates), target).double().numpy())
            total += np.concatenate(parts) if parts else np.zeros(0)
    return total / draws


# --- the train_recommender step -----------------------------------------------------------------------
@dataclass(frozen=True)
class MembershipManifest:
    """What ``record_membership_losses`` stored (XCom-sized). ``losses_uri`` is None when nothing
    could be audited, and ``reason`` says why."""

    model_version: str
    n_members: int
    n_nonmembers: int
    delta: float
    losses_uri: str | None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_membership_losses(
    settings: Settings, manifest: dict[str, Any], registration: dict[str, Any]
) -> MembershipManifest:
    """Per-user losses of the registered DP model for its members and held-out users, stored with
    :func:`tasks.privacy.write_membership_losses` (delta: the run's, privacy unit: user).

    Candidates are ``run_training``'s own (:func:`tasks.dataset.training_candidates`, here with the
    held-out users: each user's own cut before the validation cut, Feast features at the cut,
    interactions after it) from the run's pinned data; members are the run's training users. Both are
    fetched by URI from the artifact store (``training_data_uri``, ``training_users_uri``), on whichever
    machine this runs.
    """
    version = str(registration["version"])
    delta = float(manifest["delta"])
    validation = pd.Timestamp(manifest["cuts"]["validation"])
    share = settings.membership_holdout_share
    data = fetch_training_data(settings, manifest["training_data_uri"])  # the data the run trained on
    events = data.events()
    catalog = data.catalog()
    candidates = training_candidates(settings, events, validation, with_held_out=True, source=data.state_rows)
    examples, users = build_examples(
        candidates.state,
        candidates.labels,
        catalog,
        history_length=settings.history_length,
        cap_k=int(manifest["cap_k"]),
        n_negatives=int(manifest.get("n_negatives", AUDIT_NEGATIVES)),
        seed=settings.seed,
    )
    trained = [str(u) for u in json.loads(fetch(settings, manifest["training_users_uri"]).read_text())]
    split = split_members(users, trained, share, seed=settings.seed)
    if not split.members or not split.nonmembers:
        reason = (
            f"{len(split.members)} members and {len(split.nonmembers)} held-out non-members among "
            f"{len(users)} candidate users (held-out share {share}); the audit needs both: does "
            "run_training drop held-out users (tasks.dataset.drop_held_out)?"
        )
        log.warning("model version %s: no membership losses recorded: %s", version, reason)
        return MembershipManifest(version, len(split.members), len(split.nonmembers), delta, None, reason)
    model = load_version(settings, version).model
    losses = per_user_losses(model, examples, seed=settings.seed)
    by_user = dict(zip(users, losses, strict=True))
    path = write_membership_losses(
        settings,
        version,
        [by_user[u] for u in split.members],
        [by_user[u] for u in split.nonmembers],
        delta=delta,
    )
    log.info(
        "model version %s: losses of %d members and %d held-out users at delta=%.2e (unit: user) -> %s",
        version,
        len(split.members),
        len(split.nonmembers),
        delta,
        path,
    )
    return MembershipManifest(version, len(split.members), len(split.nonmembers), delta, str(path))
