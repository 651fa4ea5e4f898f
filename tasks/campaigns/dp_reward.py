"""A user-level differentially private reward model for offers, trained with Opacus DP-SGD.

Privacy unit: one user (all of a user's logged decisions in the log's window).  The training set has
**one example per user**: the user's features and up to ``cap_k`` of the user's decisions (a uniformly
random subset drawn from OS entropy, chosen from that user's decisions only), so one user is one row
of every batch and one per-sample gradient, which Opacus clips to ``clip_norm``.  Batches are Poisson
samples of users at ``sample_rate``; the noise and the sampling draw from torch generators seeded with
64 bits of ``os.urandom`` every run (:func:`entropy_generators`), never from configuration.  The cost
is the sampled Gaussian mechanism :class:`~tasks.privacy.accounting.DpSgdMechanism`, whose epsilon at
the ledger's delta the ledger accountant (Opacus RDP) computes; :func:`train_charged` reserves it on the
privacy ledger before training and commits it with the model file it wrote.

The model maps a user's features to one expected reward (profit / ``reward_scale``) per action: a small
MLP with one output per action, i.e. the user features crossed with the action's one-hot.  Features
are used raw (no scaling fitted on the users' data, which would itself leak).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tasks.campaigns.contracts import run_folder
from tasks.config import Settings
from tasks.permissions import private_dir
from tasks.privacy.ledger_key import open_ledger
from tasks.privacy.policy import budget_for_run, dp_sgd_charge, require_delta_within_users

log = logging.getLogger(__name__)

PURPOSE: Final = "offer_reward_dp_sgd"
NOISE_SOURCE: Final = "torch.Generator (CPU, Mersenne Twister) seeded with 64 bits of os.urandom every run"


@dataclass(frozen=True)
class DpRewardConfig:
    """DP-SGD hyper-parameters (public; the noise multiplier comes from the ledger's calibration)."""

    hidden: int = 32
    epochs: int = 15  # chosen among 15/30/60 (and 8) on validation logs: benchmarks/campaigns_dp_tuning.py
    expected_batch_users: int = 128
    lr: float = 0.02
    clip_norm: float = 1.0
    cap_k: int = 16
    reward_scale: float = 10.0

    def sample_rate(self, n_users: int) -> float:
        return min(1.0, self.expected_batch_users / max(n_users, 1))

    def steps(self, n_users: int) -> int:
        return max(1, round(self.epochs / self.sample_rate(n_users)))


@dataclass(frozen=True)
class UserExamples:
    """One row per user: features ``(U, F)``; up to ``cap_k`` decisions as actions, rewards and a mask
    (``(U, cap_k)``, padding has mask 0)."""

    user_ids: np.ndarray
    features: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    mask: np.ndarray


def group_by_user(
    user_ids: np.ndarray, features: np.ndarray, actions: np.ndarray, rewards: np.ndarray, cap_k: int
) -> UserExamples:
    """Decisions (one row each, with the deciding user's features) grouped into one example per user.

    A user keeps ``cap_k`` decisions at most, the ones with the lowest priorities drawn independently
    per decision from OS entropy: a user's subset depends on that user's decisions only.
    """
    if cap_k < 1:
        raise ValueError(f"cap_k must be >= 1, not {cap_k}")
    users = np.asarray(user_ids).astype(str)
    priority = np.random.default_rng().random(len(users))
    order = np.lexsort((priority, users))
    users_sorted = users[order]
    starts = np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1]])
    rank = np.arange(len(users)) - np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    keep = rank < cap_k
    rows, ranks = order[keep], rank[keep]
    unique, row_of_user = np.unique(users[rows], return_inverse=True)
    n_users = len(unique)
    first = np.zeros(n_users, dtype=np.int64)
    first[row_of_user[::-1]] = rows[::-1]
    acts = np.zeros((n_users, cap_k), dtype=np.int64)
    rews = np.zeros((n_users, cap_k), dtype=np.float32)
    mask = np.zeros((n_users, cap_k), dtype=np.float32)
    acts[row_of_user, ranks] = actions[rows]
    rews[row_of_user, ranks] = rewards[rows]
    mask[row_of_user, ranks] = 1.0
    return UserExamples(unique, features[first].astype(np.float32), acts, rews, mask)


class RewardNet(nn.Module):
    """User features -> expected reward of every action (in units of ``reward_scale``)."""

    def __init__(self, n_features: int, n_actions: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, n_actions))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(features)
        return out


def user_losses(
    predicted: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Per-user squared error of the taken actions' predictions, summed over the user's decisions."""
    taken = predicted.gather(1, actions)
    return ((taken - rewards) ** 2 * mask).sum(dim=1)


def entropy_generators() -> tuple[torch.Generator, torch.Generator]:
    """(noise, Poisson sampling) CPU generators, each seeded with 64 fresh bits of ``os.urandom``."""
    noise, sampling = torch.Generator(), torch.Generator()
    noise.manual_seed(secrets.randbits(64))
    sampling.manual_seed(secrets.randbits(64))
    return noise, sampling


@dataclass
class DpRewardModel:
    """A trained :class:`RewardNet`; :meth:`predict` returns expected profit per action (RewardModel)."""

    net: RewardNet
    reward_scale: float

    def fit(self, features: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> DpRewardModel:
        raise NotImplementedError("train with train_dp_reward (DP-SGD), not fit")

    def predict(self, features: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self.net(torch.as_tensor(features, dtype=torch.float32))
        return out.numpy().astype(np.float64) * self.reward_scale


def train_dp_reward(
    examples: UserExamples, n_actions: int, config: DpRewardConfig, noise_multiplier: float
) -> DpRewardModel:
    """DP-SGD (Opacus, Poisson sampling of users, per-user clipping) for ``config.steps`` steps."""
    from opacus import PrivacyEngine

    n_users = len(examples.user_ids)
    net = RewardNet(examples.features.shape[1], n_actions, config.hidden)
    data = TensorDataset(
        torch.as_tensor(examples.features),
        torch.as_tensor(examples.actions),
        torch.as_tensor(examples.rewards / config.reward_scale),
        torch.as_tensor(examples.mask),
    )
    noise_gen, sampling_gen = entropy_generators()
    batch = max(1, round(config.sample_rate(n_users) * n_users))
    loader = DataLoader(data, batch_size=batch, generator=sampling_gen)
    engine = PrivacyEngine(accountant="rdp")
    module, optimizer, dp_loader = engine.make_private(
        module=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=config.lr),
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=config.clip_norm,
        poisson_sampling=True,
        noise_generator=noise_gen,
    )
    steps, target = 0, config.steps(n_users)
    while steps < target:
        for features, actions, rewards, mask in dp_loader:
            optimizer.zero_grad()
            if features.shape[0] > 0:  # an empty Poisson batch is still a step: noise only
                user_losses(module(features), actions, rewards, mask).mean().backward()
            optimizer.step()
            steps += 1
            if steps >= target:
                break
    return DpRewardModel(net, config.reward_scale)


@dataclass(frozen=True)
class ChargedModel:
    """A DP reward model trained under ledger charge ``charge_id`` ((epsilon, delta) per user)."""

    model: DpRewardModel
    charge_id: int
    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    n_users: int
    model_path: str

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "model"}


def data_hash(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return f"sha256:{digest.hexdigest()}"


def train_charged(
    settings: Settings,
    *,
    run_key: str,
    examples: UserExamples,
    n_actions: int,
    data_window: tuple[dt.datetime, dt.datetime],
    epsilon: float,
    config: DpRewardConfig | None = None,
    code_version: str = "unknown",
) -> ChargedModel:
    """Reserve the DP-SGD run on the ledger (noise calibrated to add at most ``epsilon`` in the scope,
    at the ledger's delta), train, write the model under ``models_dir/offers/<run_key>`` and commit.

    A retried attempt of the same ``run_key`` reuses its reserved charge (same mechanism); a committed
    one is refused: training again would spend again under a charge already spent.
    """

    config = config or DpRewardConfig()
    n_users = len(examples.user_ids)
    q, steps = config.sample_rate(n_users), config.steps(n_users)
    ledger = open_ledger(settings)
    try:
        delta = budget_for_run(ledger, settings, n_users=n_users).delta
        require_delta_within_users(delta, n_users, purpose=PURPOSE)
        charge, mechanism = dp_sgd_charge(
            ledger,
            settings,
            run_key=run_key,
            purpose=PURPOSE,
            sample_rate=q,
            steps=steps,
            delta=delta,
            epsilon_target=epsilon,
            clip_norm=config.clip_norm,
            cap_k=config.cap_k,
            data_window=data_window,
            at=data_window[1],
            n_users=n_users,
            code_version=code_version,
            data_hash=data_hash(examples.features, examples.actions, examples.rewards),
        )
        model = train_dp_reward(examples, n_actions, config, mechanism.noise_multiplier)
        path = run_folder(settings, run_key) / "reward_model.pt"
        save_model(model, path, {"charge_id": int(charge.id), "config": asdict(config)})
        charge = ledger.commit(int(charge.id), model_version=None, artifact_uri=str(path))
    finally:
        ledger.close()
    log.info(
        "offer reward model %s: (%.3f, %.2e)-DP per user (%s), %d steps at sample rate %.3f",
        run_key,
        charge.epsilon,
        charge.delta,
        charge.accountant,
        steps,
        q,
    )
    return ChargedModel(
        model=model,
        charge_id=int(charge.id),
        epsilon=float(charge.epsilon),
        delta=float(charge.delta),
        accountant=str(charge.accountant),
        noise_multiplier=float(mechanism.noise_multiplier),
        sample_rate=q,
        steps=steps,
        n_users=n_users,
        model_path=str(path),
    )


def save_model(model: DpRewardModel, path: Path, meta: dict[str, Any]) -> None:
    """Write-then-rename the weights and shape (``meta`` beside them as JSON)."""
    private_dir(path.parent)
    first = model.net.body[0]
    last = model.net.body[2]
    assert isinstance(first, nn.Linear)
    assert isinstance(last, nn.Linear)
    state = {
        "state_dict": model.net.state_dict(),
        "n_features": first.in_features,
        "n_actions": last.out_features,
        "hidden": first.out_features,
        "reward_scale": model.reward_scale,
    }
    staging = path.with_suffix(".tmp")
    torch.save(state, staging)
    staging.replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta, sort_keys=True))


def load_model(path: Path) -> DpRewardModel:
    state = torch.load(path, weights_only=True)
    net = RewardNet(int(state["n_features"]), int(state["n_actions"]), int(state["hidden"]))
    net.load_state_dict(state["state_dict"])
    return DpRewardModel(net, float(state["reward_scale"]))
