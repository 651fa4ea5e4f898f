"""User-level DP-SGD training of :class:`tasks.model.TwoTower` with Opacus 1.6 (and a non-private twin).

Privacy unit: the user. One dataset sample is one user: that user's features and history at a cut time,
the items they interacted with (``INTERACTIONS``) in the label window after it (capped at ``cap_k``) and
sampled negatives. Users are
Poisson-sampled (Opacus ``DPDataLoader``), each user's gradient is clipped to ``max_grad_norm`` as one
vector (Book-Keeping clipping, :mod:`tasks.dp_clipping`: norms and clipped sum from ONE backward
pass, equal to Opacus' ghost clipping within 1e-5, ``tests/unit/test_dp_clipping.py``), Gaussian
noise ``noise_multiplier * max_grad_norm`` is added to the sum by Opacus' optimizer, and the ledger's
RDP accountant (:func:`tasks.privacy.accounting.rdp_epsilon`, the orders the ledger composes at) turns
the steps Opacus recorded (noise multiplier, sample rate, steps) into (epsilon, delta).

Noise nobody can reproduce: the DP-SGD noise generator and the Poisson sampler's generator are seeded
from OS entropy (:func:`entropy_seed`, 64 bits of ``os.urandom``) for every run and every resumed
attempt; no seed is stored in a checkpoint, logged or taken from configuration.  They are torch
generators (:func:`noise_generator_name`), which are not CSPRNGs (Opacus' ``secure_mode`` needs
torchcsprng, which is not installed).  Only ``TrainConfig.noise_seed``, set by ``run_training`` behind
``Settings.deterministic_noise_for_tests`` (refused by the production profile), makes them
reproducible.

The noise multiplier is an input: it is calibrated against the budget the privacy ledger grants
(:func:`tasks.privacy.policy.dp_sgd_charge`, which reserves it), or by
:func:`tasks.privacy.accounting.calibrate_noise` (the same calibration) when the composition is known up front (benchmarks), never by ``make_private_with_epsilon``, which
ignores budget already spent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tasks.artifacts import ArtifactRefused, ArtifactStore, artifact_store, run_key_path
from tasks.baselines import counts_to_catalog
from tasks.catalog import (
    PAD,
    BlendWeights,
    ItemCatalog,
    history_matrix,
    history_positions,
    own_purchase_matrix,
    user_feature_matrix,
)
from tasks.code_version import code_version as current_code_version
from tasks.config import Settings
from tasks.dataset import (
    INTERACTIONS,
    Cuts,
    feature_state,
    training_candidates,
)
from tasks.dp_clipping import BookKeepingLoss, BookKeepingModule
from tasks.evaluation import temporal_split_from_state, tune_blend
from tasks.io import atomic_write, atomic_write_json, replace_dir
from tasks.model import (
    Recommender,
    TwoTower,
    build_model,
    content_affinity,
    save_recommender,
    text_neighbours,
)
from tasks.privacy import (
    CooccurrenceCounts,
    CooccurrenceRelease,
    PopularityRelease,
    behaviour_vectors,
)
from tasks.privacy.accounting import LEDGER_ACCOUNTANT, rdp_epsilon
from tasks.privacy.ledger_key import open_ledger
from tasks.privacy.policy import budget_for_run, count_charge, dp_sgd_charge
from tasks.training_data import fetch_training_data

log = logging.getLogger(__name__)

# Opacus' accountant records the steps (its history, saved in checkpoints); epsilon is computed from
# that history by the ledger's accountant (tasks.privacy.accounting.rdp_epsilon).
ACCOUNTANT: Final = "rdp"


# --- the per-user dataset ---------------------------------------------------------------------------
class UserExamples(Dataset[tuple[torch.Tensor, ...]]):
    """One sample per user: (features ``[F]``, history ``[H]``, candidates ``[k+n]``, target ``[k+n]``).

    Candidates are up to ``cap_k`` of the user's positives, drawn at random without replacement every
    time the user is sampled (so every epoch draws afresh, and no positive is favoured by its order in
    the labels), padded with 0, followed by ``n_negatives`` items drawn uniformly from the catalog.
    Target is 1 for a drawn positive, 0 for a negative and -1 for padding and for a drawn negative that
    is one of the user's positives (drawn or not): the loss never pushes a positive down as a negative.
    The draws come from the training generator (``seed``), never from the DP noise's.
    """

    def __init__(
        self,
        features: np.ndarray,
        history: np.ndarray,
        positives: Sequence[np.ndarray],
        *,
        n_items: int,
        cap_k: int,
        n_negatives: int,
        seed: int,
    ) -> None:
        if cap_k < 1:
            raise ValueError(f"cap_k must be at least 1, got {cap_k}")
        self.features = torch.from_numpy(features)
        self.history = torch.from_numpy(history)
        unique = (np.unique(np.asarray(p, dtype=np.int64)) for p in positives)
        self.positives = [torch.from_numpy(p[p != PAD]) for p in unique]
        self.cap_k = cap_k
        self.n_items = n_items
        self.n_negatives = n_negatives
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __getitem__(self, row: int) -> tuple[torch.Tensor, ...]:
        every = self.positives[row]
        drawn = every[torch.randperm(len(every), generator=self.generator)[: self.cap_k]]
        pos = torch.cat([drawn, torch.full((self.cap_k - len(drawn),), PAD, dtype=torch.int64)])
        neg = torch.randint(1, self.n_items + 1, (self.n_negatives,), generator=self.generator)
        neg_target = torch.where(torch.isin(neg, every), -1.0, 0.0)
        target = torch.cat([torch.where(pos != PAD, 1.0, -1.0), neg_target])
        return self.features[row], self.history[row], torch.cat([pos, neg]), target


def build_examples(
    state: pd.DataFrame,
    labels: dict[str, list[str]],
    catalog: ItemCatalog,
    *,
    history_length: int,
    cap_k: int,
    n_negatives: int,
    seed: int,
) -> tuple[UserExamples, list[str]]:
    """Examples for the users of ``state`` (features as of the cut) who bought a catalog item after it."""
    keep = [u for u in state["user_id"] if any(catalog.index_of(labels.get(str(u), [])))]
    frame = state.set_index("user_id").loc[keep].reset_index()
    positives = []
    for u in frame["user_id"]:
        idx = catalog.index_of(labels[str(u)])
        positives.append(idx[idx != PAD])
    examples = UserExamples(
        user_feature_matrix(frame),
        history_matrix(frame["recent_items"].tolist(), catalog, history_length),
        positives,
        n_items=catalog.n_items,
        cap_k=cap_k,
        n_negatives=n_negatives,
        seed=seed,
    )
    return examples, [str(u) for u in frame["user_id"]]


# --- loss -------------------------------------------------------------------------------------------
class UserSoftmaxLoss(nn.Module):
    """Sampled softmax per user: each positive against the user's negatives, averaged over positives.

    ``reduction="none"`` returns one loss per user (what Opacus ghost clipping needs).
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        positive = target > 0
        negative_scores = scores.masked_fill(target != 0, float("-inf"))
        neg_lse = torch.logsumexp(negative_scores, dim=1, keepdim=True)
        per_pos = torch.logaddexp(scores, neg_lse) - scores
        n_pos = positive.sum(dim=1).clamp(min=1)
        per_user = (per_pos * positive).sum(dim=1) / n_pos
        if self.reduction == "none":
            return per_user
        if self.reduction == "sum":
            return per_user.sum()
        return per_user.mean()


# --- training ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters. ``private=False`` is the non-private twin (same model and loop)."""

    private: bool = True
    epochs: int = 5
    batch_size: int = 256  # expected users per step (Poisson sampling when private)
    lr: float = 3e-3
    max_grad_norm: float = 1.0
    noise_multiplier: float = 1.0
    cap_k: int = 20
    n_negatives: int = 128
    seed: int = 7  # model init, negatives, the non-private twin's shuffling: never DP noise
    device: str | None = None  # None: CUDA when present, else CPU
    # Tests only: seed of the DP noise and Poisson sampling generators; None (always in production):
    # fresh OS entropy for every run. Set by run_training only under Settings.deterministic_noise_for_tests.
    noise_seed: int | None = None

    def sample_rate(self, n_users: int) -> float:
        """Poisson sampling rate as Opacus sets it: ``1 / len(loader)``."""
        return 1.0 / max(1, -(-n_users // self.batch_size))

    def steps(self, n_users: int) -> int:
        return self.epochs * max(1, -(-n_users // self.batch_size))


@dataclass(frozen=True)
class TrainResult:
    """What a training run did: steps, timing, losses and (if private) the accountant's epsilon."""

    private: bool
    n_users: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    cap_k: int
    epsilon: float | None
    delta: float | None
    accountant: str | None
    seconds_per_step: float
    epoch_losses: tuple[float, ...]
    device: str
    resumed_from_epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def entropy_seed() -> int:
    """64 bits from the operating system's CSPRNG (``secrets`` reads ``os.urandom``); never stored."""
    return secrets.randbits(64)


def noise_generator_name(device: str | torch.device, *, noise_seed: int | None = None) -> str:
    """What draws DP-SGD's noise and Poisson sampling on ``device``, stated in the privacy statement
    (``noise_seed``: the test switch's seed, which the statement must not hide)."""
    kind = torch.device(device).type
    algorithm = "Philox4x32-10" if kind == "cuda" else "Mersenne Twister mt19937"
    if noise_seed is not None:
        return (
            f"torch.Generator on {kind} ({algorithm}), SEEDED FROM THE CONFIGURATION "
            "(SHOPREC_DETERMINISTIC_NOISE_FOR_TESTS): no privacy against anyone who knows the seed"
        )
    return (
        f"torch.Generator on {kind} ({algorithm}), seeded with 64 bits of os.urandom for every run and "
        "resumed attempt; not a CSPRNG"
    )


def dp_generators(config: TrainConfig, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(noise generator on ``device``, CPU Poisson sampling generator), each from its own OS entropy.

    Deterministic only when ``config.noise_seed`` is set (tests, behind the Settings switch).
    """
    if config.noise_seed is None:
        noise_seed, sampling_seed = entropy_seed(), entropy_seed()
    else:
        noise_seed, sampling_seed = config.noise_seed + 1, config.noise_seed + 2
    noise = torch.Generator(device=device)
    noise.manual_seed(noise_seed)
    sampling = torch.Generator()
    sampling.manual_seed(sampling_seed)
    return noise, sampling


CLIPPINGS: Final[tuple[str, ...]] = ("book_keeping", "ghost")


def make_private_trainer(
    model: TwoTower, examples: UserExamples, config: TrainConfig, *, clipping: str = "book_keeping"
) -> tuple[nn.Module, Any, Any, DataLoader[Any], Any]:
    """Wrap model, optimizer, loss and loader for user-level DP-SGD (per-user clipping, Poisson sampling).

    ``clipping``: ``"book_keeping"`` (the trainer's; :mod:`tasks.dp_clipping`, one backward pass) or
    ``"ghost"`` (Opacus' ghost clipping, two backward passes; the reference the equivalence tests and
    ``benchmarks/dp_speed.py`` compare with). Both hand the clipped per-user sum to the same Opacus
    ``DPOptimizerFastGradientClipping`` (noise ``config.noise_multiplier * max_grad_norm`` on the sum,
    divided by the expected batch size) with the same RDP accountant step hook and the same Poisson
    ``DPDataLoader`` as ``PrivacyEngine.make_private(grad_sample_mode="ghost")``.

    The noise and the Poisson sampling draw from their own generators (:func:`dp_generators`), never
    from torch's global generator, whose state a checkpoint saves and restores.
    Returns (module, optimizer, criterion, loader, privacy_engine).
    """
    from opacus import PrivacyEngine

    if clipping not in CLIPPINGS:
        raise ValueError(f"unknown clipping {clipping!r}: one of {CLIPPINGS}")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    noise_gen, sampling_gen = dp_generators(config, next(model.parameters()).device)
    # DPDataLoader.from_data_loader samples with this loader's generator (Opacus 1.6, no secure_mode)
    loader = DataLoader(examples, batch_size=config.batch_size, shuffle=False, generator=sampling_gen)
    engine = PrivacyEngine(accountant=ACCOUNTANT)
    if clipping == "ghost":
        module, dp_optimizer, criterion, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=UserSoftmaxLoss(reduction="mean"),
            data_loader=loader,
            noise_multiplier=config.noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            grad_sample_mode="ghost",
            poisson_sampling=True,
            noise_generator=noise_gen,
        )
        return module, dp_optimizer, criterion, dp_loader, engine
    from opacus.data_loader import DPDataLoader
    from opacus.optimizers import DPOptimizerFastGradientClipping

    # what PrivacyEngine.make_private does for grad_sample_mode="ghost", minus the model wrapping
    engine.validate(module=model, optimizer=optimizer, data_loader=loader)
    dp_loader = DPDataLoader.from_data_loader(loader)
    sample_rate = 1 / len(dp_loader)
    dp_optimizer = DPOptimizerFastGradientClipping(
        optimizer,
        noise_multiplier=config.noise_multiplier,
        max_grad_norm=config.max_grad_norm,
        expected_batch_size=int(len(examples) * sample_rate),
        loss_reduction="mean",
        generator=noise_gen,
    )
    dp_optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    module = BookKeepingModule(model)
    criterion = BookKeepingLoss(module, UserSoftmaxLoss(reduction="mean"), config.max_grad_norm)
    return module, dp_optimizer, criterion, dp_loader, engine


def train_step(module: nn.Module, optimizer: Any, criterion: Any, batch: Sequence[torch.Tensor]) -> float:
    """One optimizer step of :func:`train` on ``batch`` (features, history, candidates, target); the loss."""
    features, history, candidates, target = batch
    optimizer.zero_grad()
    loss = criterion(module(features, history, candidates), target)
    loss.backward()
    optimizer.step()
    return float(loss.item())


def empty_batch_step(model: nn.Module, optimizer: Any) -> None:
    """The DP-SGD step of an empty Poisson sample: the clipped sum of no users is zero, so the update
    is the noise alone (and the accountant counts the step). Zero gradients are set explicitly: at a
    run's first step there are none yet, and Opacus' optimizer needs one per parameter."""
    optimizer.zero_grad()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()


def train(
    model: TwoTower,
    examples: UserExamples,
    config: TrainConfig,
    *,
    delta: float | None = None,
    checkpoint_path: Path | None = None,
    checkpoint_saved: Callable[[Path], Any] | None = None,
) -> TrainResult:
    """Train in place; private runs report epsilon at ``delta`` (user level, RDP accountant).

    With ``checkpoint_path`` the state (weights, optimizer, accountant history, epoch) is saved after
    every epoch and a later call resumes from it, so a retried task neither restarts nor under-counts
    the privacy accounting; ``checkpoint_saved(checkpoint_path)`` is called after each save (the
    pipeline step puts the checkpoint in the artifact store there, for a retry on another machine).
    """
    if config.private and delta is None:
        raise ValueError("a private run needs delta to state its epsilon")
    seed_everything(config.seed)
    device = pick_device(config.device)
    model.to(device)
    model.train()
    n_users = len(examples)
    if config.private:
        module, optimizer, criterion, loader, engine = make_private_trainer(model, examples, config)
    else:
        module, engine = model, None
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        criterion = UserSoftmaxLoss(reduction="mean")
        gen = torch.Generator().manual_seed(config.seed)
        loader = DataLoader(examples, batch_size=config.batch_size, shuffle=True, generator=gen)
    start_epoch, losses = 0, list[float]()
    if checkpoint_path is not None and checkpoint_path.exists():
        start_epoch, losses = _load_checkpoint(checkpoint_path, model, optimizer, engine)
        log.info("resuming training from %s at epoch %d", checkpoint_path, start_epoch)
    steps, busy = 0, 0.0
    for epoch in range(start_epoch, config.epochs):
        total, batches = 0.0, 0
        for batch in loader:
            features, history, candidates, target = (t.to(device) for t in batch)
            if features.shape[0] == 0:
                if config.private:  # an empty Poisson batch is still a step: noise only
                    empty_batch_step(model, optimizer)
                    steps += 1
                continue
            tic = time.perf_counter()
            loss = train_step(module, optimizer, criterion, (features, history, candidates, target))
            busy += time.perf_counter() - tic
            total += loss
            batches += 1
            steps += 1
        losses.append(total / max(1, batches))
        log.info("epoch %d loss %.4f", epoch, losses[-1])
        if checkpoint_path is not None:
            _save_checkpoint(checkpoint_path, epoch + 1, losses, model, optimizer, engine)
            if checkpoint_saved is not None:
                checkpoint_saved(checkpoint_path)
    epsilon = None
    if engine is not None and delta is not None:
        # the ledger's accountant (its RDP orders) over the steps Opacus recorded: one epsilon formula
        epsilon = rdp_epsilon(engine.accountant.history, delta)
        log.info("user-level epsilon %.3f at delta %.2e (%s accountant)", epsilon, delta, LEDGER_ACCOUNTANT)
    model.eval()
    return TrainResult(
        private=config.private,
        n_users=n_users,
        steps=config.steps(n_users),
        sample_rate=config.sample_rate(n_users),
        noise_multiplier=config.noise_multiplier if config.private else 0.0,
        max_grad_norm=config.max_grad_norm,
        cap_k=config.cap_k,
        epsilon=epsilon,
        delta=delta if config.private else None,
        accountant=LEDGER_ACCOUNTANT if config.private else None,
        seconds_per_step=busy / max(1, steps),
        epoch_losses=tuple(losses),
        device=str(device),
        resumed_from_epoch=start_epoch,
    )


def _save_checkpoint(
    path: Path, epoch: int, losses: list[float], model: TwoTower, optimizer: Any, engine: Any
) -> None:
    """Tensors and plain Python values only, so :func:`_load_checkpoint` can refuse anything else."""
    accountant = None
    if engine is not None:
        accountant_state = engine.accountant.state_dict()
        accountant = {
            "history": [
                (float(sigma), float(rate), int(steps)) for sigma, rate, steps in accountant_state["history"]
            ],
            "mechanism": str(accountant_state["mechanism"]),
        }
    # "rng" is torch's global generator (model-side randomness). The DP noise and Poisson sampling
    # generators are never saved: a resumed attempt draws fresh OS entropy (make_private_trainer).
    state = {
        "epoch": int(epoch),
        "losses": [float(loss) for loss in losses],
        "model": model.state_dict(),
        "optimizer": getattr(optimizer, "original_optimizer", optimizer).state_dict(),
        "accountant": accountant,
        "rng": torch.get_rng_state(),
    }
    atomic_write(path, lambda handle: torch.save(state, handle))


def _load_checkpoint(path: Path, model: TwoTower, optimizer: Any, engine: Any) -> tuple[int, list[float]]:
    """Resume from ``path``; ``weights_only=True``: a checkpoint carrying pickled objects is refused."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    getattr(optimizer, "original_optimizer", optimizer).load_state_dict(state["optimizer"])
    if engine is not None:
        if state["accountant"] is None:
            raise ValueError(f"{path} holds a non-private run; refusing to resume a private one from it")
        engine.accountant.load_state_dict(state["accountant"])
    torch.set_rng_state(state["rng"])
    return int(state["epoch"]), list(state["losses"])


# --- the train_recommender pipeline step --------------------------------------------------------------
TRAIN_PURPOSE: Final = "train_recommender"
POPULARITY_PURPOSE: Final = "dp_popularity"
COOCCURRENCE_PURPOSE: Final = "dp_cooccurrence"


def dp_popularity(settings: Settings) -> PopularityRelease:
    """The global DP popularity release of a training run (``SHOPREC_POPULARITY_*``): three of them
    (validation, test and serving cuts) under one charge."""
    return PopularityRelease(
        noise_multiplier=settings.popularity_noise_multiplier,
        cap_per_user=settings.popularity_cap_per_user,
        days=settings.popularity_days,
        event_types=INTERACTIONS,
    )


def dp_cooccurrence(settings: Settings) -> CooccurrenceRelease | None:
    """The DP co-occurrence release of a training run (``SHOPREC_COOC_*``; one release at the
    validation cut under its own charge), or None when ``SHOPREC_COOC_ENABLED`` is off."""
    if not settings.cooc_enabled:
        return None
    return CooccurrenceRelease(
        noise_multiplier=settings.cooc_noise_multiplier,
        cap_per_user=settings.cooc_cap_per_user,
        days=settings.cooc_days,
        event_types=INTERACTIONS,
    )


def cooccurrence_domain(popularity: np.ndarray, max_items: int) -> np.ndarray:
    """Catalog positions a co-occurrence release covers: all of them, or the ``max_items`` of highest
    DP popularity (``popularity``: a ledger-charged release, so the domain is public), in catalog order."""
    if len(popularity) <= max_items:
        return np.arange(len(popularity), dtype=np.int64)
    order = np.lexsort((np.arange(len(popularity)), -np.asarray(popularity, dtype=np.float64)))
    return np.sort(order[:max_items]).astype(np.int64)


def cooccurrence_release(
    events: pd.DataFrame,
    catalog: ItemCatalog,
    end: pd.Timestamp,
    policy: CooccurrenceRelease,
    domain: np.ndarray,
) -> list[np.ndarray]:
    """``[domain positions, noisy counts]`` of one DP co-occurrence release before ``end`` over the
    catalog items at ``domain``; fresh CSPRNG noise every call (ledger-charged by the caller)."""
    items = [catalog.item_ids[int(p)] for p in domain]
    return [np.asarray(domain, dtype=np.int64), policy.release(events, end, item_ids=items).counts]


def behaviour_for_catalog(catalog: ItemCatalog, released: Sequence[np.ndarray], dim: int) -> np.ndarray:
    """``[N, dim]`` behaviour vectors over the catalog from a :func:`cooccurrence_release` (zero rows
    for items outside its domain); post-processing of the release."""
    domain, counts = released
    ids = tuple(catalog.item_ids[int(p)] for p in domain)
    out = np.zeros((catalog.n_items, dim), dtype=np.float32)
    out[np.asarray(domain, dtype=np.int64)] = behaviour_vectors(CooccurrenceCounts(ids, counts), dim)
    return out


def dp_schedule(n_users: int, sample_rate: float, steps: int) -> tuple[int, int]:
    """(batch size, epochs) of :class:`TrainConfig` that Poisson-sample ``n_users`` at ``sample_rate``
    for about ``steps`` steps: Opacus samples at ``1 / ceil(n / batch)`` and an epoch is ``ceil(n /
    batch)`` steps, so the steps are rounded to whole epochs (the ledger is charged the exact ones,
    :meth:`TrainConfig.sample_rate` and :meth:`TrainConfig.steps`)."""
    if not 0 < sample_rate <= 1 or steps < 1 or n_users < 1:
        raise ValueError(f"no DP-SGD schedule for {n_users} users at rate {sample_rate} for {steps} steps")
    batch = max(1, math.ceil(n_users * sample_rate))
    per_epoch = -(-n_users // batch)
    return batch, max(1, round(steps / per_epoch))


def charged_schedule(runs: Sequence[tuple[TrainConfig, int]]) -> tuple[float, int]:
    """(sample rate, steps) of the ONE DP-SGD mechanism a training run is charged for all its DP-SGD
    trainings at one noise multiplier (``(config, n_users)`` each): the largest sample rate and the sum
    of the steps. A Poisson-subsampled Gaussian's RDP grows with the sample rate and adds up over
    steps, so this mechanism's epsilon bounds the trainings' composition (unit-tested)."""
    if not runs:
        raise ValueError("no training to charge")
    return max(c.sample_rate(n) for c, n in runs), sum(c.steps(n) for c, n in runs)


def train_config(settings: Settings, *, n_users: int) -> TrainConfig:
    """The pipeline's DP-SGD hyper-parameters (``SHOPREC_TRAIN_*``) for ``n_users`` training users; the
    noise multiplier is calibrated to the ledger's grant later, the noise seed set only under the
    tests-only switch. The non-private twin's is :func:`twin_config`."""
    batch, epochs = dp_schedule(n_users, settings.train_sample_rate, settings.train_steps)
    return TrainConfig(
        epochs=epochs,
        batch_size=batch,
        lr=settings.train_lr,
        max_grad_norm=settings.train_clip_norm,
        cap_k=settings.train_cap_k,
        seed=settings.seed,
        n_negatives=settings.train_negatives,
        noise_seed=settings.test_noise_seed(),
    )


def twin_config(settings: Settings, config: TrainConfig) -> TrainConfig:
    """The non-private twin of ``config``: the same schedule, no noise or clipping, its own lr."""
    return dataclasses.replace(config, private=False, lr=settings.train_lr_nonprivate)


def model_for(settings: Settings, catalog: ItemCatalog) -> TwoTower:
    """A fresh two-tower model with the pipeline's architecture (``SHOPREC_TRAIN_*`` towers)."""
    return build_model(
        catalog,
        hidden=settings.train_hidden,
        temperature=settings.train_temperature,
        item_tower=settings.train_item_tower,
        user_tower=settings.train_user_tower,
        user_features=settings.train_user_features,
        max_history=settings.history_length,
    )


def training_examples(
    settings: Settings, state: pd.DataFrame, labels: dict[str, list[str]], catalog: ItemCatalog
) -> tuple[UserExamples, list[str]]:
    """The pipeline's examples (:func:`build_examples` with ``SHOPREC_TRAIN_*`` and the history length)."""
    return build_examples(
        state,
        labels,
        catalog,
        history_length=settings.history_length,
        cap_k=settings.train_cap_k,
        n_negatives=settings.train_negatives,
        seed=settings.seed,
    )


def fit_model(
    settings: Settings,
    catalog: ItemCatalog,
    examples: UserExamples,
    config: TrainConfig,
    *,
    delta: float | None = None,
    checkpoint_path: Path | None = None,
    checkpoint_saved: Callable[[Path], Any] | None = None,
) -> tuple[TwoTower, TrainResult]:
    """THE model fit of ``train_recommender`` (and of the quality benchmark): a fresh
    :func:`model_for` (initialised from ``config.seed``) trained by :func:`train`."""
    torch.manual_seed(config.seed)
    model = model_for(settings, catalog)
    result = train(
        model,
        examples,
        config,
        delta=delta,
        checkpoint_path=checkpoint_path,
        checkpoint_saved=checkpoint_saved,
    )
    return model, result


@dataclass(frozen=True)
class TrainingManifest:
    """What ``train_model`` hands to registration (XCom-sized: ids, artifact-store URIs, numbers)."""

    run_key: str
    model_uri: str  # the DP model's folder in the artifact store (tasks.artifacts)
    nonprivate_uri: str  # its non-private twin's
    as_of: str
    cuts: dict[str, str]
    n_users: int
    n_train_users: int
    delta: float
    epsilon: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    cap_k: int
    charge_id: int
    popularity_charge_id: int
    seconds_per_step: float
    seconds_per_step_nonprivate: float
    device: str
    blend: dict[str, float]
    training_users_uri: str  # JSON list of the users DP-SGD trained on (the membership audit's members)
    n_negatives: int
    noise_generator: str
    rejected_days: str = ""  # comma-separated days of the window that ingest rejected (quarantined)
    training_data_uri: str = ""  # the run's pinned data (tasks.training_data), read by registration and audit
    cooccurrence_charge_id: int | None = None  # the DP co-occurrence release the item tower reads, if any
    # the model registered and served: the refit up to the data's end (SHOPREC_TRAIN_REFIT), else the
    # validation-window model (model_uri), which the gate evaluates in either case
    served_model_uri: str = ""
    n_refit_users: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def popularity_release(
    events: pd.DataFrame, catalog: ItemCatalog, end: pd.Timestamp, policy: PopularityRelease
) -> np.ndarray:
    """``[N]`` DP distinct-user interaction counts over the catalog before ``end`` (``policy``: the
    pipeline's is :func:`dp_popularity`), fresh CSPRNG noise every call (ledger-charged by the caller)."""
    released = policy.release(events, end, item_ids=list(catalog.item_ids))
    return counts_to_catalog(released.rename(columns={"noisy_count": "count"}), catalog)


def released_once(
    store: ArtifactStore, key: str, local: Path, release: Callable[[], Sequence[np.ndarray]]
) -> list[np.ndarray]:
    """The releases of one ledger charge, made at most once: fetched from the artifact store's ``key``
    when an earlier attempt of the run (on any machine) already made them, else made by ``release()``,
    written to ``local`` (owner-only) and put in the store write-once before anything else uses them.
    Should another attempt have put its releases first, those are used: the first drawn noise wins.

    A retried task keeps its reserved charge, so releasing again would put two releases under one
    charge; an attempt that died before its put never let its releases out of the process.
    """
    uri = store.uri(key)
    if not store.exists(uri):
        arrays = [np.asarray(a) for a in release()]
        named: dict[str, Any] = {f"release_{i}": a for i, a in enumerate(arrays)}
        atomic_write(local, lambda handle: np.savez(handle, **named), private=True)
        try:
            store.put(local, key, once=True)
            return arrays
        except ArtifactRefused:
            pass  # another attempt released first: read its releases below
    with np.load(store.get(uri, local), allow_pickle=False) as stored:
        return [stored[f"release_{i}"] for i in range(len(stored.files))]


def run_training(
    settings: Settings,
    *,
    run_key: str,
    training_data_uri: str,
    code_version: str | None = None,
) -> TrainingManifest:
    """Train the DP challenger (and its non-private twin) on the run's pinned data.

    ``training_data_uri``: what :func:`tasks.training_data.pin_training_data` pinned for the run (the
    lake days up to its data end, their events, the catalog and the Feast user state as of then, the
    rejected days) in the artifact store; nothing else of the lake or Feast is read, so this runs on a
    machine that has neither, and a retry reads the same data however the lake grew since.

    Everything the run hands on (the pinned data, the two models, the training users) and everything a
    retry resumes from (the checkpoint, the popularity releases, written once) is put in the shared
    artifact store (:mod:`tasks.artifacts`) under ``runs/<run>/``; the manifest carries URIs only, so
    registration and a retry need not run on this machine.

    Pre-flight on the privacy ledger: the DP popularity releases and the DP-SGD run are reserved
    (idempotently per ``run_key``) before anything runs; the noise multiplier is calibrated so the run
    fits the budget the ledger grants, and a retry reuses the reserved mechanism and the checkpoint.
    """
    store = artifact_store(settings)
    prefix = f"runs/{run_key_path(run_key)}"  # the run's artifacts in the shared store
    run_dir = settings.models_dir / run_key_path(run_key)  # this machine's working copies
    data = fetch_training_data(settings, training_data_uri)
    days, rejected = list(data.days), list(data.rejected)
    cuts = Cuts.from_end(data.as_of, settings.eval_days)
    events = data.events()
    catalog = data.catalog()
    all_users = sorted(events["user_id"].astype(str).unique())
    # Held-out users (a keyed hash split decided before training) never enter DP-SGD: they are the
    # non-members of the membership-inference audit (tasks.membership).
    candidates = training_candidates(settings, events, cuts.validation, source=data.state_rows)
    state, labels = candidates.state, candidates.labels
    popularity, cooccurrence = dp_popularity(settings), dp_cooccurrence(settings)
    examples, train_users = training_examples(settings, state, labels, catalog)
    if len(examples) < 2:
        raise ValueError(f"only {len(examples)} users with events on two days before {cuts.validation}")
    config = train_config(settings, n_users=len(examples))
    # The served model (issue 17 item 4): once the validation window has tuned the blend with the model
    # trained before it, the same settings are fitted again on every user's latest window before the
    # data's end. Both trainings are covered by the run's one DP-SGD charge (charged_schedule).
    refit: tuple[UserExamples, TrainConfig] | None = None
    if settings.train_refit:
        latest = training_candidates(settings, events, cuts.as_of, source=data.state_rows)
        refit_examples, _ = training_examples(settings, latest.state, latest.labels, catalog)
        if len(refit_examples) >= 2:
            refit = refit_examples, train_config(settings, n_users=len(refit_examples))
    trainings = [(config, len(examples))] + ([(refit[1], len(refit[0]))] if refit else [])
    q, steps = charged_schedule(trainings)

    ledger = open_ledger(settings)
    try:
        # the ledger's policy, never the configuration's: a disagreeing SHOPREC_PRIVACY_* refuses the run
        delta = budget_for_run(ledger, settings, n_users=len(all_users)).delta
        data_hash = hashlib.sha256(
            "|".join(f"{d}" for d in days).encode() + str(len(events)).encode()
        ).hexdigest()
        provenance: dict[str, Any] = dict(
            n_users=len(all_users), code_version=code_version or current_code_version(), data_hash=data_hash
        )
        # a retry whose settings would release other noise than its reserved charge is refused
        pop_charge = count_charge(
            ledger,
            settings,
            run_key=run_key,
            purpose=POPULARITY_PURPOSE,
            mechanism=popularity.mechanism(releases=3),
            data_window=(popularity.start(cuts.validation), cuts.as_of),
            **provenance,
        )
        cooc_charge = None
        if cooccurrence is not None:
            cooc_charge = count_charge(
                ledger,
                settings,
                run_key=run_key,
                purpose=COOCCURRENCE_PURPOSE,
                mechanism=cooccurrence.mechanism(releases=1),
                data_window=(cooccurrence.start(cuts.validation), cuts.validation),
                **provenance,
            )
        charge, mechanism = dp_sgd_charge(
            ledger,
            settings,
            run_key=run_key,
            purpose=TRAIN_PURPOSE,
            sample_rate=q,
            steps=steps,
            delta=delta,
            epsilon_target=settings.training_epsilon,
            clip_norm=config.max_grad_norm,
            cap_k=config.cap_k,
            data_window=(
                events["event_timestamp"].min().to_pydatetime(),
                (cuts.as_of if refit else cuts.validation).to_pydatetime(),
            ),
            at=cuts.as_of.to_pydatetime(),
            **provenance,
        )
    finally:
        ledger.close()
    config = TrainConfig(**{**asdict(config), "noise_multiplier": mechanism.noise_multiplier})

    releases = f"dp_popularity-charge{int(pop_charge.id)}.npz"
    pop_val, pop_test, pop_serve = released_once(
        store,
        f"{prefix}/{releases}",
        run_dir / releases,
        lambda: [
            popularity_release(events, catalog, end, popularity)
            for end in (cuts.validation, cuts.test, cuts.as_of)
        ],
    )
    if cooccurrence is not None and cooc_charge is not None:
        # one release per charge, read again by a retry; the item tower reads its behaviour vectors
        domain = cooccurrence_domain(pop_val, settings.cooc_max_items)
        cooc_file = f"dp_cooccurrence-charge{int(cooc_charge.id)}.npz"
        released = released_once(
            store,
            f"{prefix}/{cooc_file}",
            run_dir / cooc_file,
            lambda: cooccurrence_release(events, catalog, cuts.validation, cooccurrence, domain),
        )
        catalog = catalog.with_behaviour(behaviour_for_catalog(catalog, released, settings.cooc_dim))
    # resume from the checkpoint an earlier attempt left in the store, whichever machine it ran on
    checkpoint, checkpoint_key = run_dir / "checkpoint.pt", f"{prefix}/checkpoint.pt"
    if store.exists(store.uri(checkpoint_key)):
        store.get(store.uri(checkpoint_key), checkpoint)
    model, result = fit_model(
        settings,
        catalog,
        examples,
        config,
        delta=delta,
        checkpoint_path=checkpoint,
        checkpoint_saved=lambda path: store.put(path, checkpoint_key),
    )
    twin, twin_result = fit_model(settings, catalog, examples, twin_config(settings, config))
    served = model
    if refit is not None:
        refit_checkpoint, refit_key = run_dir / "checkpoint_refit.pt", f"{prefix}/checkpoint_refit.pt"
        if store.exists(store.uri(refit_key)):
            store.get(store.uri(refit_key), refit_checkpoint)
        served, _ = fit_model(
            settings,
            catalog,
            refit[0],
            dataclasses.replace(refit[1], noise_multiplier=mechanism.noise_multiplier),
            delta=delta,
            checkpoint_path=refit_checkpoint,
            checkpoint_saved=lambda path: store.put(path, refit_key),
        )

    val_state = feature_state(settings, all_users, cuts.validation, source=data.state_rows)
    val = temporal_split_from_state(events, catalog, val_state, cuts.validation, cuts.test)
    blends = {}
    histories = history_positions(val.state["recent_items"].tolist(), catalog, settings.history_length)
    content_val = content_affinity(histories, text_neighbours(catalog.text), catalog.n_items)
    for name, net in (("dp", model), ("nonprivate", twin)):
        bare = Recommender(
            net, catalog, weights=BlendWeights(), popularity=None, history_length=settings.history_length
        )
        blends[name], _ = tune_blend(
            bare.model_scores(val.state),
            own_purchase_matrix(val.state, catalog),
            pop_val,
            val,
            catalog,
            content=content_val,
        )
    uris = {}
    folders = [("dp", model, "recommender"), ("nonprivate", twin, "nonprivate")]
    if refit is not None:  # the refit serves with the blend the validation-window model chose
        folders.append(("served", served, "served"))
    for name, net, folder in folders:
        weights = blends["dp" if name == "served" else name]
        rec = Recommender(
            net, catalog, weights=weights, popularity=pop_serve, history_length=settings.history_length
        )

        def write_model(staging: Path, rec: Recommender = rec) -> None:
            save_recommender(rec, staging)
            np.save(staging / "popularity_eval.npy", pop_test)

        uris[name] = store.put(replace_dir(run_dir / folder, write_model), f"{prefix}/{folder}")
    users_file = atomic_write_json(run_dir / "training_users.json", train_users, indent=None, sort_keys=False)
    epsilon = float(charge.epsilon)
    log.info(
        "trained %s: (%.3f, %.2e)-DP per user (ledger accountant %s), %d steps",
        run_key,
        epsilon,
        delta,
        charge.accountant,
        steps,
    )
    return TrainingManifest(
        run_key=run_key,
        model_uri=uris["dp"],
        nonprivate_uri=uris["nonprivate"],
        as_of=cuts.as_of.isoformat(),
        cuts={k: v.isoformat() for k, v in asdict(cuts).items()},
        n_users=len(all_users),
        n_train_users=len(examples),
        delta=delta,
        epsilon=epsilon,
        accountant=str(charge.accountant),
        noise_multiplier=float(mechanism.noise_multiplier),
        sample_rate=q,
        steps=steps,
        clip_norm=config.max_grad_norm,
        cap_k=config.cap_k,
        charge_id=int(charge.id),
        popularity_charge_id=int(pop_charge.id),
        seconds_per_step=result.seconds_per_step,
        seconds_per_step_nonprivate=twin_result.seconds_per_step,
        device=result.device,
        blend=asdict(blends["dp"]),
        training_users_uri=store.put(users_file, f"{prefix}/training_users.json"),
        n_negatives=config.n_negatives,
        noise_generator=noise_generator_name(result.device, noise_seed=config.noise_seed),
        rejected_days=",".join(d.isoformat() for d in rejected),
        training_data_uri=data.uri,
        cooccurrence_charge_id=None if cooc_charge is None else int(cooc_charge.id),
        served_model_uri=uris.get("served", uris["dp"]),
        n_refit_users=len(refit[0]) if refit else 0,
    )
