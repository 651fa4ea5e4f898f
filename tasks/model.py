"""The two-tower recommender: an item tower over public catalog data, a user tower over a user's own data.

Item tower (``ModelConfig.item_tower``), over the catalog's one item-input matrix
(:attr:`tasks.catalog.ItemCatalog.item_features`: the frozen title embedding today, any public or
DP-released per-item vectors concatenated to it later):

* ``"text"``: the item input itself, L2-normalised; no trainable item parameters, so a new item is
  served exactly like a trained one;
* ``"residual"``: the normalised input plus a small MLP of it (a skip), normalised again;
* ``"mlp"``: the original tower (input, category and price-bucket embeddings, optionally a learned
  item-id embedding whose vocabulary is the public catalog, through two layers).

User tower: the user's recent DISTINCT items (most recent first, from the Feast state) pooled into one
vector, either by a masked mean (``user_tower="mean"``) or by attention pooling over the ordered items
(``"attention"``: a learned score per item from its vector and its recency position, softmax over the
user's items; initialised uniform, so it starts as the mean), then a small MLP with a skip (so the
model starts from "items like the ones you bought" and DP-SGD only has to refine it). The user's Feast
features (fixed ``log1p`` transforms, no statistics computed from other users) enter the MLP only with
``user_features=True``.

There are no per-user parameters: a user's vector is computed at serving time from that user's own
features and history, so the released weights are all the DP guarantee has to cover, and a new user is
served from their first events. A new item is served through its text.

Index 0 of every item table is padding; catalog item ``i`` (0-based) has model index ``i + 1``. The numpy
inputs (catalog, feature transform, history indices, blend) are in :mod:`tasks.catalog`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from tasks.catalog import (
    CONTENT_NEIGHBOURS,
    N_USER_FEATURES,
    PAD,
    BlendWeights,
    ItemCatalog,
    blend_scores,
    history_matrix,
    history_positions,
    own_purchase_matrix,
    user_feature_matrix,
)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`TwoTower`; stored beside the weights so a checkpoint can be rebuilt."""

    text_dim: int
    n_items: int
    n_categories: int
    n_price_buckets: int
    dim: int = 64
    hidden: int = 128
    cat_dim: int = 16
    price_dim: int = 8
    item_id_dim: int = 0  # 0: no learned item-id embedding
    n_user_features: int = N_USER_FEATURES
    # score = cosine(user, item) / temperature; None: a raw dot product (models saved before the towers
    # were normalised, which still load and score as they were trained)
    temperature: float | None = None
    # The defaults below are the architecture of models saved before these fields existed (so they
    # load as they were trained); the pipeline's choice is in Settings (train_item_tower, ...).
    item_tower: str = "mlp"  # ITEM_TOWERS
    user_tower: str = "mean"  # USER_TOWERS
    user_features: bool = True  # the Feast user features enter the user MLP
    max_history: int = 20  # recency positions of the attention pooling
    attention_dim: int = 64


ItemTower = Literal["text", "residual", "mlp"]
UserTower = Literal["mean", "attention"]
ITEM_TOWERS: Final[tuple[str, ...]] = ("text", "residual", "mlp")
USER_TOWERS: Final[tuple[str, ...]] = ("mean", "attention")


class TwoTower(nn.Module):
    """Item and user towers; ``forward`` scores candidate items for each user in the batch.

    With ``config.temperature`` set, item vectors have unit norm and user vectors norm ``1 /
    temperature``, so every user-item product is the cosine divided by the temperature.

    Everything a batch row needs is in that row (features, history, candidates), so with Opacus one
    sample is one user and one clipped gradient is one user's whole contribution.
    """

    item_text: torch.Tensor
    item_category: torch.Tensor
    item_price: torch.Tensor

    def __init__(self, config: ModelConfig, catalog: ItemCatalog | None = None) -> None:
        super().__init__()
        if config.item_tower not in ITEM_TOWERS or config.user_tower not in USER_TOWERS:
            raise ValueError(
                f"unknown tower ({config.item_tower!r}, {config.user_tower!r}): "
                f"item tower one of {ITEM_TOWERS}, user tower one of {USER_TOWERS}"
            )
        if config.item_tower != "mlp" and config.dim != config.text_dim:
            raise ValueError(f"the {config.item_tower!r} item tower has the input's width {config.text_dim}")
        self.config = config
        n = config.n_items + 1
        self.register_buffer("item_text", torch.zeros(n, config.text_dim))
        self.register_buffer("item_category", torch.zeros(n, dtype=torch.long))
        self.register_buffer("item_price", torch.zeros(n, dtype=torch.long))
        if catalog is not None:
            self.load_catalog(catalog)
        self.act = nn.ReLU()
        # only the layers the chosen towers use exist: Opacus needs a gradient for every parameter
        self.category: nn.Embedding | None = None
        self.price: nn.Embedding | None = None
        self.item_id: nn.Embedding | None = None
        if config.item_tower == "mlp":
            self.category = nn.Embedding(config.n_categories + 1, config.cat_dim)
            self.price = nn.Embedding(config.n_price_buckets + 1, config.price_dim)
            self.item_id = nn.Embedding(n, config.item_id_dim) if config.item_id_dim > 0 else None
            item_in = config.text_dim + config.cat_dim + config.price_dim + config.item_id_dim
            self.item_fc1 = nn.Linear(item_in, config.hidden)
            self.item_fc2 = nn.Linear(config.hidden, config.dim)
        elif config.item_tower == "residual":
            self.item_fc1 = nn.Linear(config.text_dim, config.hidden)
            self.item_fc2 = nn.Linear(config.hidden, config.dim)
        if config.user_tower == "attention":
            self.attn_key = nn.Linear(config.dim, config.attention_dim)
            self.attn_position = nn.Embedding(config.max_history, config.attention_dim)
            self.attn_score = nn.Linear(config.attention_dim, 1)
            nn.init.zeros_(self.attn_score.weight)  # uniform weights at the start: the mean
            nn.init.zeros_(self.attn_score.bias)
        user_in = config.dim + (config.n_user_features if config.user_features else 0)
        self.user_fc1 = nn.Linear(user_in, config.hidden)
        self.user_fc2 = nn.Linear(config.hidden, config.dim)

    def load_catalog(self, catalog: ItemCatalog) -> None:
        """Copy the public item inputs into the (non-trainable) buffers."""
        text = torch.zeros_like(self.item_text)
        text[1:] = torch.from_numpy(catalog.item_features)
        cat = torch.zeros_like(self.item_category)
        cat[1:] = torch.from_numpy(catalog.category_index + 1)
        price = torch.zeros_like(self.item_price)
        price[1:] = torch.from_numpy(catalog.price_bucket + 1)
        self.item_text.copy_(text)
        self.item_category.copy_(cat)
        self.item_price.copy_(price)

    def item_vectors(self, index: torch.Tensor) -> torch.Tensor:
        """Item-tower vectors for model indices of any shape ``[...]`` -> ``[..., dim]``."""
        text = self.item_text[index]
        if self.config.item_tower == "text":
            return nn.functional.normalize(text, dim=-1)
        if self.config.item_tower == "residual":
            text = nn.functional.normalize(text, dim=-1)
            out = text + self.item_fc2(self.act(self.item_fc1(text)))
            return nn.functional.normalize(out, dim=-1)
        assert self.category is not None
        assert self.price is not None
        parts = [text, self.category(self.item_category[index]), self.price(self.item_price[index])]
        if self.item_id is not None:
            parts.append(self.item_id(index))
        hidden = self.act(self.item_fc1(torch.cat(parts, dim=-1)))
        out = self.item_fc2(hidden)
        return out if self.config.temperature is None else nn.functional.normalize(out, dim=-1)

    def pool_history(self, history_vectors: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """``[B, dim]``: the user's history item vectors ``[B, H, dim]`` (0 = padding) pooled by the
        masked mean, or by attention over (vector, recency position); a user without history gets 0."""
        mask = (history != PAD).unsqueeze(-1).to(history_vectors.dtype)
        if self.config.user_tower == "mean":
            return (history_vectors * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        positions = torch.arange(history.shape[1], device=history.device).clamp(
            max=self.config.max_history - 1
        )
        # contiguous: Opacus' embedding norm sampler views its input
        keys = self.attn_key(history_vectors) + self.attn_position(positions.expand_as(history).contiguous())
        logits = self.attn_score(torch.tanh(keys)).masked_fill(mask == 0, -1e9)
        weights = torch.softmax(logits, dim=1) * mask  # an all-padding row: weights 0, pooled 0
        return (weights * history_vectors).sum(dim=1)

    def user_from_history(
        self, features: torch.Tensor, history_vectors: torch.Tensor, history: torch.Tensor
    ) -> torch.Tensor:
        """User vectors from features ``[B, F]`` and history item vectors ``[B, H, dim]`` (0 = padding)."""
        pooled = self.pool_history(history_vectors, history)
        user_in = torch.cat([features, pooled], dim=-1) if self.config.user_features else pooled
        user = pooled + self.user_fc2(self.act(self.user_fc1(user_in)))  # skip: untrained ranks by similarity
        if self.config.temperature is None:
            return user
        # unit norm / temperature: any product with item_vectors (training, Recommender, publishing)
        # is the cosine / temperature, in [-1/T, 1/T]
        return nn.functional.normalize(user, dim=-1) / self.config.temperature

    def user_vectors(self, features: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """User vectors from user features ``[B, F]`` and history model indices ``[B, H]``."""
        return self.user_from_history(features, self.item_vectors(history), history)

    def forward(
        self, features: torch.Tensor, history: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:
        """Scores ``[B, C]`` of candidate items ``[B, C]`` for users given by features and history.

        The item tower runs once on history and candidates together (one call per module and batch).
        The ``"text"`` tower has no parameters: its whole table is normalised once and the candidates'
        scores are read from the user-by-catalog product (the same numbers, far less memory traffic).
        """
        if self.config.item_tower == "text":
            table = nn.functional.normalize(self.item_text, dim=-1)
            user = self.user_from_history(features, table[history], history)
            return torch.gather(user @ table.T, 1, candidates)
        n_hist = history.shape[1]
        vectors = self.item_vectors(torch.cat([history, candidates], dim=1))
        user = self.user_from_history(features, vectors[:, :n_hist], history)
        return (vectors[:, n_hist:] * user.unsqueeze(1)).sum(dim=-1)


DEFAULT_TEMPERATURE = 0.2  # Settings.train_temperature's default


def build_model(
    catalog: ItemCatalog,
    *,
    dim: int = 64,
    hidden: int = 128,
    item_id_dim: int = 0,
    temperature: float | None = DEFAULT_TEMPERATURE,
    item_tower: ItemTower = "mlp",
    user_tower: UserTower = "mean",
    user_features: bool = True,
    max_history: int = 20,
) -> TwoTower:
    """A fresh :class:`TwoTower` sized for the catalog, its buffers filled (``temperature`` None: the
    unnormalised dot product of models saved before normalisation). The ``"text"`` and ``"residual"``
    item towers have the width of the item input (``dim`` is ignored); the pipeline builds its model
    through :func:`tasks.training.model_for`, from Settings."""
    width = int(catalog.item_features.shape[1])
    config = ModelConfig(
        text_dim=width,
        n_items=catalog.n_items,
        n_categories=len(catalog.categories),
        n_price_buckets=len(catalog.price_edges) + 1,
        dim=dim if item_tower == "mlp" else width,
        hidden=hidden,
        item_id_dim=item_id_dim,
        temperature=temperature,
        item_tower=item_tower,
        user_tower=user_tower,
        user_features=user_features,
        max_history=max_history,
    )
    return TwoTower(config, catalog)


@dataclass(frozen=True)
class TextNeighbours:
    """Each catalog position's ``m`` most similar positions by title-embedding cosine (itself included)."""

    index: np.ndarray  # int64 [N, m]
    similarity: np.ndarray  # float32 [N, m]


def text_neighbours(text: np.ndarray, m: int = CONTENT_NEIGHBOURS, chunk: int = 2048) -> TextNeighbours:
    """Top-``m`` cosine neighbours of every row of ``text [N, D]`` (public titles: no privacy cost)."""
    vectors = torch.nn.functional.normalize(torch.from_numpy(np.asarray(text, dtype=np.float32)), dim=1)
    m = min(m, vectors.shape[0])
    index, similarity = [], []
    with torch.inference_mode():
        for start in range(0, vectors.shape[0], chunk):
            values, positions = torch.topk(vectors[start : start + chunk] @ vectors.T, m, dim=1)
            index.append(positions)
            similarity.append(values)
    if not index:
        return TextNeighbours(np.zeros((0, m), np.int64), np.zeros((0, m), np.float32))
    return TextNeighbours(torch.cat(index).numpy(), torch.cat(similarity).numpy())


def content_affinity(histories: Sequence[np.ndarray], neighbours: TextNeighbours, n_items: int) -> np.ndarray:
    """``[U, N]``: for each item, its highest text cosine to an item of the user's history among those
    items' neighbour lists (0 elsewhere). The user's own data and public text: no privacy cost.

    Online Retail II, items new to the user (``make bench``): with the user's repeats and exact 14-day
    popularity, and no model, NDCG@10 0.1033 against 0.0815 for that popularity alone.
    """
    out = torch.zeros((len(histories), n_items), dtype=torch.float32)
    if not len(histories) or neighbours.index.shape[1] == 0:
        return out.numpy()
    rows = [np.full(len(h) * neighbours.index.shape[1], u, np.int64) for u, h in enumerate(histories)]
    cols = [neighbours.index[h].ravel() for h in histories]
    sims = [neighbours.similarity[h].ravel() for h in histories]
    if sum(len(r) for r in rows):
        flat = torch.from_numpy(np.concatenate(rows)) * n_items + torch.from_numpy(np.concatenate(cols))
        out.view(-1).scatter_reduce_(
            0, flat, torch.from_numpy(np.concatenate(sims)).clamp(min=0.0), reduce="amax", include_self=True
        )
    return out.numpy()


class Recommender:
    """The released scorer: model + public catalog + blend weights + a DP popularity release.

    ``user_vectors`` and ``item_vectors`` give matrix-product batch scoring; ``scores`` adds the blend
    (the user's own repeat purchases, the text neighbours of the user's recent items and the DP
    popularity); ``recommend`` returns top-K item ids.
    """

    def __init__(
        self,
        model: TwoTower,
        catalog: ItemCatalog,
        *,
        weights: BlendWeights,
        popularity: np.ndarray | None,
        history_length: int,
    ) -> None:
        self.model = model.eval()
        self.catalog = catalog
        self.weights = weights
        self.popularity = popularity
        self.history_length = history_length
        self._neighbours: TextNeighbours | None = None

    @property
    def neighbours(self) -> TextNeighbours:
        """Text neighbours of the catalog (computed once per recommender)."""
        if self._neighbours is None:
            self._neighbours = text_neighbours(self.catalog.text)
        return self._neighbours

    def content_scores(self, frame: pd.DataFrame) -> np.ndarray:
        """``[U, N]`` :func:`content_affinity` of each user's ``recent_items``."""
        histories = history_positions(frame["recent_items"].tolist(), self.catalog, self.history_length)
        return content_affinity(histories, self.neighbours, self.catalog.n_items)

    @property
    def item_ids(self) -> tuple[str, ...]:
        return self.catalog.item_ids

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        """``[N, dim]`` item vectors, row ``i`` for ``item_ids[i]``."""
        device = self.model.item_text.device
        return self.model.item_vectors(torch.arange(1, self.catalog.n_items + 1, device=device))

    @torch.no_grad()
    def user_vectors(self, frame: pd.DataFrame) -> torch.Tensor:
        """``[U, dim]`` from a frame of user features with ``recent_items`` (most recent first)."""
        device = self.model.item_text.device
        features = torch.from_numpy(user_feature_matrix(frame)).to(device)
        history = history_matrix(frame["recent_items"].tolist(), self.catalog, self.history_length)
        return self.model.user_vectors(features, torch.from_numpy(history).to(device))

    def model_scores(self, frame: pd.DataFrame) -> np.ndarray:
        """``[U, N]`` bare two-tower scores (no blend)."""
        return (self.user_vectors(frame) @ self.item_vectors().T).cpu().numpy()

    def scores(self, frame: pd.DataFrame) -> np.ndarray:
        """``[U, N]`` blended scores; ``frame`` needs ``purchased_items``/``purchased_counts`` for repeats."""
        own = own_purchase_matrix(frame, self.catalog) if "purchased_items" in frame else None
        content = self.content_scores(frame) if self.weights.content else None
        return blend_scores(self.model_scores(frame), own, self.popularity, self.weights, content)

    def on_catalog(self, catalog: ItemCatalog) -> Recommender:
        """This recommender scoring ``catalog`` instead of its own (the champion evaluated on a
        challenger's pinned catalog, which may have grown since the champion was trained; issue 16).

        Items it knows keep their item-tower inputs (and item-id rows); new items enter through their
        title vector, their category when the champion knows its name, and their price bucket when the
        bucket edges agree (else padding). The popularity release is not carried over: set one for
        ``catalog``.
        """
        known = self.catalog
        config = dataclasses.replace(self.model.config, n_items=catalog.n_items)
        tower = TwoTower(config)
        per_item = {"item_text", "item_category", "item_price", "item_id.weight"}
        state = {k: v for k, v in self.model.state_dict().items() if k not in per_item}
        missing, unexpected = tower.load_state_dict(state, strict=False)
        if set(missing) - per_item or unexpected:
            raise ValueError(f"the recommender's weights do not fit its architecture: {missing} {unexpected}")
        old = known.index_of(list(catalog.item_ids))  # model index in the champion, 0 = new item
        seen = torch.from_numpy(old > 0)
        names = {c: i for i, c in enumerate(known.categories)}
        category = np.asarray([names.get(catalog.categories[c], -1) for c in catalog.category_index])
        same_edges = tuple(catalog.price_edges) == tuple(known.price_edges)
        price = catalog.price_bucket if same_edges else np.full(catalog.n_items, -1)
        with torch.no_grad():
            own = torch.from_numpy(old)
            text = torch.from_numpy(catalog.text).to(tower.item_text.dtype)
            # a champion with DP behaviour vectors (item_features = text + behaviour columns): a new
            # item has none, so zero behaviour columns, as publishing gives it
            text = torch.nn.functional.pad(text, (0, tower.item_text.shape[1] - text.shape[1]))
            tower.item_text[1:] = torch.where(seen[:, None], self.model.item_text[own].cpu(), text)
            tower.item_category[1:] = torch.where(
                seen, self.model.item_category[own].cpu(), torch.from_numpy(category + 1)
            )
            tower.item_price[1:] = torch.where(
                seen, self.model.item_price[own].cpu(), torch.from_numpy(price + 1)
            )
            if tower.item_id is not None and self.model.item_id is not None:
                tower.item_id.weight[1:] = torch.where(
                    seen[:, None], self.model.item_id.weight[own].cpu(), 0.0
                )
        return Recommender(
            tower, catalog, weights=self.weights, popularity=None, history_length=self.history_length
        )

    def recommend(self, frame: pd.DataFrame, k: int) -> list[tuple[list[str], list[float]]]:
        """Top-``k`` (item ids, scores) per user row of ``frame``."""
        scores = self.scores(frame)
        k = min(k, scores.shape[1])
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        ids = np.asarray(self.catalog.item_ids)
        return [(ids[row].tolist(), [float(x) for x in scores[u, row]]) for u, row in enumerate(top)]


# --- saving and loading a Recommender -------------------------------------------------------------
def save_recommender(recommender: Recommender, path: Path) -> Path:
    """Write weights, architecture, public catalog inputs, blend weights, DP popularity and the DP
    behaviour vectors (when the item tower reads them) to ``path``: enough to score without the lake."""
    path.mkdir(parents=True, exist_ok=True)
    torch.save(recommender.model.state_dict(), path / "weights.pt")
    catalog = recommender.catalog
    np.savez(
        path / "catalog.npz",
        text=catalog.text,
        category_index=catalog.category_index,
        price_bucket=catalog.price_bucket,
        popularity=recommender.popularity if recommender.popularity is not None else np.zeros(0),
        behaviour=catalog.behaviour if catalog.behaviour is not None else np.zeros((0, 0), np.float32),
    )
    meta = {
        "model_config": asdict(recommender.model.config),
        "item_ids": list(catalog.item_ids),
        "categories": list(catalog.categories),
        "price_edges": list(catalog.price_edges),
        "encoder_id": catalog.encoder_id,
        "weights": asdict(recommender.weights),
        "history_length": recommender.history_length,
        "has_popularity": recommender.popularity is not None,
        "has_behaviour": catalog.behaviour is not None,
    }
    (path / "recommender.json").write_text(json.dumps(meta, indent=2))
    return path


def load_recommender(path: Path, device: str = "cpu") -> Recommender:
    """Rebuild a :class:`Recommender` written by :func:`save_recommender`."""
    meta = json.loads((path / "recommender.json").read_text())
    arrays = np.load(path / "catalog.npz")
    catalog = ItemCatalog(
        item_ids=tuple(meta["item_ids"]),
        text=arrays["text"],
        category_index=arrays["category_index"],
        price_bucket=arrays["price_bucket"],
        categories=tuple(meta["categories"]),
        price_edges=tuple(meta["price_edges"]),
        encoder_id=meta["encoder_id"],
        behaviour=arrays["behaviour"] if meta.get("has_behaviour") else None,
    )
    model = TwoTower(ModelConfig(**meta["model_config"]))
    model.load_state_dict(torch.load(path / "weights.pt", map_location=device, weights_only=True))
    return Recommender(
        model.to(device),
        catalog,
        weights=BlendWeights(**meta["weights"]),
        popularity=arrays["popularity"] if meta["has_popularity"] else None,
        history_length=int(meta["history_length"]),
    )
