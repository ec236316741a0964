"""Noise-conditioned clean-vs-corrupt classifier, score curves and the sigma_min rule.

c(x_s, k[, obs]) is trained with BCE on balanced clean/corrupt batches of normalised action chunks
noised to random DDPM levels (label 1 = clean). Annotation scores every corrupt chunk on a grid of
levels (``score_curves``: mean P(clean) over a few fixed noise draws); sigma_min is then derived
from the curves alone (``derive_sigma_min``), so a sweep over tau, smoothing, granularity and
classifier epoch re-uses one annotation. Tracking and Ray live in jobs/, never here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ambient_core._io import atomic_directory
from ambient_core.data import ChunkDataset
from ambient_core.networks import ConditionalResidualBlock1D, SinusoidalPosEmb
from ambient_core.noise import add_noise, fixed_noise
from ambient_core.policy import Normalizer
from ambient_core.sampler import DEFAULT_BUCKET_EDGES
from ambient_core.schedule import DEFAULT_NUM_STEPS, ddpm_sigmas
from ambient_core.train import cosine_warmup_lambda

CLASSIFIER_FILE = "classifier.pt"
CLASSIFIER_META = "classifier.json"
DEFAULT_TAU = 0.45  # 0.5 - eps with eps = 0.05 (ADP Eq. 5, ambient-omni cls_epsilon)

Granularity = Literal["chunk", "episode", "bucket", "dataset"]
GRANULARITIES: tuple[str, ...] = ("chunk", "episode", "bucket", "dataset")
BucketMode = Literal["random", "score"]


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@dataclass
class ClassifierSpec:
    """Everything needed to rebuild a classifier (plain JSON).

    ``obs_dim`` = 0 classifies action chunks only (as ADP does); otherwise a flattened,
    normalised observation vector of that size joins the level embedding as FiLM condition.
    ``obs_keys``/``n_obs_steps`` record how that vector was built so annotation can rebuild it.
    """

    action_dim: int
    horizon: int
    obs_dim: int = 0
    channels: tuple[int, ...] = (32, 64, 128)
    embed_dim: int = 32
    kernel_size: int = 3
    n_groups: int = 8
    num_train_steps: int = DEFAULT_NUM_STEPS
    obs_keys: tuple[str, ...] = ()
    n_obs_steps: int = 0

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.obs_keys = tuple(self.obs_keys)
        if self.action_dim < 1 or self.horizon < 1 or self.obs_dim < 0:
            raise ValueError(
                f"need action_dim >= 1, horizon >= 1, obs_dim >= 0; got {self.action_dim}, "
                f"{self.horizon}, {self.obs_dim}"
            )
        if not self.channels or any(c % self.n_groups for c in self.channels):
            raise ValueError(
                f"channels must be non-empty and divisible by n_groups={self.n_groups}: "
                f"{self.channels}"
            )
        if self.embed_dim < 2 or self.embed_dim % 2:
            raise ValueError(f"embed_dim must be even and >= 2, got {self.embed_dim}")
        if self.num_train_steps < 2:
            raise ValueError(f"num_train_steps must be >= 2, got {self.num_train_steps}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"], d["obs_keys"] = list(self.channels), list(self.obs_keys)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierSpec:
        return cls(**d)


class NoiseClassifier(nn.Module):
    """logit that x_s (B, H, Da) at level k (B,) came from clean data.

    FiLM residual conv blocks (diffusion_policy's) with stride-2 downsampling between levels,
    global average pooling over time and a linear head: local temporal structure (jitter, zig-zag,
    detours) is what separates clean from corrupt chunks, and pooling keeps any horizon valid.
    """

    def __init__(self, spec: ClassifierSpec) -> None:
        super().__init__()
        self.spec = spec
        e = spec.embed_dim
        self.level_encoder = nn.Sequential(
            SinusoidalPosEmb(e), nn.Linear(e, 4 * e), nn.Mish(), nn.Linear(4 * e, e)
        )
        cond_dim = e + spec.obs_dim
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        prev = spec.action_dim
        for i, c in enumerate(spec.channels):
            self.blocks.append(
                ConditionalResidualBlock1D(prev, c, cond_dim, spec.kernel_size, spec.n_groups)
            )
            last = i == len(spec.channels) - 1
            self.downs.append(nn.Identity() if last else nn.Conv1d(c, c, 3, 2, 1))
            prev = c
        self.head = nn.Sequential(nn.Mish(), nn.Linear(prev, 1))

    def forward(
        self, x: torch.Tensor, k: torch.Tensor, obs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, H, Da), k (B,) level indices, obs (B, obs_dim) or None -> logits (B,)."""
        spec = self.spec
        if x.ndim != 3 or x.shape[2] != spec.action_dim:
            raise ValueError(f"expected chunks (B, H, {spec.action_dim}), got {tuple(x.shape)}")
        cond = self.level_encoder(k)
        if spec.obs_dim:
            if obs is None or obs.shape != (x.shape[0], spec.obs_dim):
                got = None if obs is None else tuple(obs.shape)
                raise ValueError(f"classifier needs obs of shape (B, {spec.obs_dim}), got {got}")
            cond = torch.cat([cond, obs.to(cond.dtype)], dim=-1)
        h = x.transpose(1, 2)
        for block, down in zip(self.blocks, self.downs, strict=True):
            h = down(block(h, cond))
        return self.head(h.mean(dim=-1)).squeeze(-1)


def build_classifier(spec: ClassifierSpec, seed: int = 0) -> NoiseClassifier:
    """Initialise deterministically from ``seed`` without touching the global torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return NoiseClassifier(spec)


# --------------------------------------------------------------------------------------------
# Data pools
# --------------------------------------------------------------------------------------------


class ChunkPool(Protocol):
    """Rows of normalised action chunks (and optional flat obs) that training draws from."""

    action_dim: int
    horizon: int
    obs_dim: int

    def __len__(self) -> int: ...

    def get(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class ArrayPool:
    """In-memory pool of already normalised chunks (N, H, Da) and optional obs (N, C)."""

    def __init__(self, actions: np.ndarray, obs: np.ndarray | None = None) -> None:
        a = np.asarray(actions, dtype=np.float32)
        if a.ndim != 3 or len(a) == 0:
            raise ValueError(f"actions must be a non-empty (N, H, Da) array, got {a.shape}")
        if obs is not None:
            obs = np.asarray(obs, dtype=np.float32)
            if obs.ndim != 2 or len(obs) != len(a):
                raise ValueError(f"obs must be (N={len(a)}, C), got {obs.shape}")
        self.actions, self.obs = (
            torch.from_numpy(a),
            None if obs is None else torch.from_numpy(obs),
        )
        self.horizon, self.action_dim = int(a.shape[1]), int(a.shape[2])
        self.obs_dim = 0 if obs is None else int(obs.shape[1])

    def __len__(self) -> int:
        return len(self.actions)

    def get(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        return self.actions[idx], None if self.obs is None else self.obs[idx]


def normalized_chunks(
    data: ChunkDataset,
    ids: np.ndarray,
    normalizer: Normalizer,
    obs_keys: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray | None]:
    """(normalised actions (N, H, Da), flat normalised obs history (N, T_o * sum D) or None).

    The same function builds classifier inputs for training and for annotation, so both see the
    same features in the same order.
    """
    ids = np.asarray(ids, dtype=np.int64)
    obs, act = data.batch(ids)
    t_act = normalizer.normalize(data.action_key, torch.from_numpy(act)).numpy()
    if not obs_keys:
        return t_act.astype(np.float32, copy=False), None
    parts = [
        normalizer.normalize(k, torch.from_numpy(obs[k])).reshape(len(ids), -1).numpy()
        for k in obs_keys
    ]
    return t_act.astype(np.float32, copy=False), np.concatenate(parts, axis=1).astype(np.float32)


class DatasetPool:
    """Chunks ``ids`` of a ChunkDataset, normalised on the fly (no copy of the chunks)."""

    def __init__(
        self,
        data: ChunkDataset,
        ids: np.ndarray,
        normalizer: Normalizer,
        obs_keys: Sequence[str] = (),
    ) -> None:
        self.data, self.normalizer = data, normalizer
        self.ids = np.asarray(ids, dtype=np.int64)
        if self.ids.size == 0:
            raise ValueError("DatasetPool needs at least one chunk id")
        self.obs_keys = list(obs_keys)
        unknown = [k for k in self.obs_keys if k not in data.obs_keys]
        if unknown:
            raise KeyError(f"obs keys {unknown} not in the dataset's {data.obs_keys}")
        dims = data.feature_dims()
        self.horizon, self.action_dim = data.spec.horizon, dims[data.action_key]
        self.obs_dim = data.spec.n_obs_steps * sum(dims[k] for k in self.obs_keys)

    @classmethod
    def from_range(
        cls,
        data: ChunkDataset,
        chunk_range: tuple[int, int] | Sequence[tuple[int, int]],
        normalizer: Normalizer,
        obs_keys: Sequence[str] = (),
    ) -> DatasetPool:
        """Pool over one or more [lo, hi) ranges of ``data.dataset_chunk_ranges``."""
        r = np.asarray(chunk_range, dtype=np.int64).reshape(-1, 2)
        ids = np.concatenate([np.arange(lo, hi) for lo, hi in r])
        return cls(data, ids, normalizer, obs_keys)

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        act, obs = normalized_chunks(self.data, self.ids[rows], self.normalizer, self.obs_keys)
        return torch.from_numpy(act), None if obs is None else torch.from_numpy(obs)


def _as_pool(x: ChunkPool | np.ndarray) -> ChunkPool:
    return ArrayPool(x) if isinstance(x, np.ndarray) else x


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def bucket_labels(edges: Sequence[float] = DEFAULT_BUCKET_EDGES) -> list[str]:
    """Metric suffixes ``s0.0-0.1`` ..., the same names the policy's training loop logs."""
    e = np.asarray(edges, dtype=np.float64)
    return [f"s{e[i]:.1f}-{e[i + 1]:.1f}" for i in range(len(e) - 1)]


def _level_buckets(sigmas: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    e = np.asarray(edges, dtype=np.float64)
    return np.clip(np.searchsorted(e, sigmas, side="right") - 1, 0, len(e) - 2)


@dataclass
class ClassifierState:
    """A classifier under training; ``on_epoch`` receives it to checkpoint or inspect."""

    model: NoiseClassifier
    optimizer: torch.optim.Optimizer
    sigmas: np.ndarray
    config: dict[str, Any]
    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def spec(self) -> ClassifierSpec:
        return self.model.spec


@dataclass
class _EvalSet:
    """Fixed held-out rows, levels and noise: every epoch is scored on identical inputs."""

    x: torch.Tensor
    obs: torch.Tensor | None
    k: torch.Tensor
    label: torch.Tensor
    bucket: np.ndarray


def _split(n: int, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows); a pool too small to split is used for both (fresh noise only)."""
    perm = rng.permutation(n)
    n_val = round(n * val_fraction)
    if n_val < 1 or n - n_val < 1:
        return perm, perm
    return perm[n_val:], perm[:n_val]


def _noised_batch(
    pool: ChunkPool,
    rows: np.ndarray,
    k: np.ndarray,
    sigmas_t: torch.Tensor,
    gen: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    x0, obs = pool.get(rows)
    eps = torch.randn(x0.shape, generator=gen)
    kt = torch.from_numpy(k)
    x = add_noise(x0, sigmas_t[kt], eps).to(device)
    return x, None if obs is None else obs.to(device)


def _build_eval(
    pools: tuple[ChunkPool, ChunkPool],
    val_rows: tuple[np.ndarray, np.ndarray],
    per_level: int,
    sigmas: np.ndarray,
    edges: Sequence[float],
    seed: int,
    device: torch.device,
) -> _EvalSet:
    rng = np.random.default_rng([seed, 1])
    gen = torch.Generator().manual_seed(seed + 1)
    sig_t = torch.from_numpy(sigmas).float()
    T = len(sigmas)
    k = np.repeat(np.arange(T, dtype=np.int64), per_level)
    xs, obs, ks, labels = [], [], [], []
    for label, pool, rows in ((1.0, pools[0], val_rows[0]), (0.0, pools[1], val_rows[1])):
        pick = rows[rng.integers(0, len(rows), size=len(k))]
        x, o = _noised_batch(pool, pick, k, sig_t, gen, device)
        xs.append(x)
        obs.append(o)
        ks.append(torch.from_numpy(k))
        labels.append(torch.full((len(k),), label))
    kk = torch.cat(ks).to(device)
    return _EvalSet(
        x=torch.cat(xs),
        obs=None if obs[0] is None else torch.cat(obs),  # type: ignore[arg-type]
        k=kk,
        label=torch.cat(labels).to(device),
        bucket=_level_buckets(sigmas, edges)[kk.cpu().numpy()],
    )


@torch.inference_mode()
def _evaluate(
    model: NoiseClassifier, ev: _EvalSet, labels: Sequence[str], chunk: int = 4096
) -> dict[str, float]:
    """Accuracy, BCE and mean P(clean) of corrupt items, per sigma bucket and overall."""
    was_training = model.training
    model.eval()
    logits = torch.cat(
        [
            model(
                ev.x[i : i + chunk],
                ev.k[i : i + chunk],
                None if ev.obs is None else ev.obs[i : i + chunk],
            )
            for i in range(0, len(ev.x), chunk)
        ]
    )
    model.train(was_training)
    bce = F.binary_cross_entropy_with_logits(logits, ev.label, reduction="none").cpu().numpy()
    lab = ev.label.cpu().numpy()
    correct = ((logits.cpu().numpy() > 0) == (lab > 0.5)).astype(np.float64)
    p = torch.sigmoid(logits).cpu().numpy().astype(np.float64)
    nb = len(labels)
    n = np.bincount(ev.bucket, minlength=nb)
    corrupt = lab < 0.5
    n_q = np.bincount(ev.bucket[corrupt], minlength=nb)
    acc_b = np.bincount(ev.bucket, weights=correct, minlength=nb)
    bce_b = np.bincount(ev.bucket, weights=bce, minlength=nb)
    pq_b = np.bincount(ev.bucket[corrupt], weights=p[corrupt], minlength=nb)
    out = {"acc": float(correct.mean()), "bce": float(bce.mean())}
    for i, name in enumerate(labels):
        if n[i]:
            out[f"acc/{name}"] = float(acc_b[i] / n[i])
            out[f"bce/{name}"] = float(bce_b[i] / n[i])
        if n_q[i]:
            out[f"pclean_corrupt/{name}"] = float(pq_b[i] / n_q[i])
    return out


def train_classifier(
    clean: ChunkPool | np.ndarray,
    corrupt: ChunkPool | np.ndarray,
    spec: ClassifierSpec | None = None,
    *,
    epochs: int = 10,
    steps_per_epoch: int = 500,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-6,
    lr_schedule: Literal["cosine", "constant"] = "cosine",
    warmup_steps: int = 0,
    seed: int = 0,
    sigmas: np.ndarray | None = None,
    val_fraction: float = 0.1,
    eval_per_level: int = 32,
    bucket_edges: Sequence[float] = DEFAULT_BUCKET_EDGES,
    device: str = "cpu",
    on_epoch: Callable[[int, ClassifierState, dict[str, float]], None] | None = None,
) -> ClassifierState:
    """Train c(x_s, k) with BCE on balanced batches at uniform grid levels; label 1 = clean.

    ``clean``/``corrupt`` are pools (``ArrayPool``, ``DatasetPool``) or arrays of normalised
    chunks. Each step draws batch_size // 2 clean and the rest corrupt rows, k ~ U{0..T-1} and
    fresh noise. The default cosine decay of the learning rate (to 0 at the last step) matters:
    at sigma ~ 1 nothing separates the pools and only a small final step size calibrates the
    output to 0.5 there; a constant rate left it anywhere in [0.4, 0.56] on a toy task, which
    decides whether curves ever pass tau = 0.45.

    A ``val_fraction`` of each pool is held out; after every epoch the model is scored on a fixed
    held-out set (``eval_per_level`` rows per pool at every level, fixed noise) and
    ``on_epoch(epoch, state, metrics)`` runs (checkpoint there: classifier epoch is a sweep
    knob). Metrics: ``acc``, ``bce``, ``acc/<bucket>``, ``bce/<bucket>``,
    ``pclean_corrupt/<bucket>`` (mean P(clean) of corrupt rows, the dataset-level E_q[c]),
    ``train_bce``, ``steps_per_s``.
    """
    pools = (_as_pool(clean), _as_pool(corrupt))
    if any(len(p) == 0 for p in pools):
        raise ValueError("both the clean and the corrupt pool need at least one chunk")
    p0, p1 = pools
    shapes = [(p.horizon, p.action_dim, p.obs_dim) for p in pools]
    if shapes[0] != shapes[1]:
        raise ValueError(f"clean and corrupt pools disagree on (H, Da, obs_dim): {shapes}")
    if spec is None:
        spec = ClassifierSpec(action_dim=p0.action_dim, horizon=p0.horizon, obs_dim=p0.obs_dim)
    if (spec.action_dim, spec.obs_dim) != (p0.action_dim, p0.obs_dim):
        raise ValueError(
            f"spec expects action_dim={spec.action_dim}, obs_dim={spec.obs_dim}; the pools give "
            f"{p0.action_dim}, {p0.obs_dim}"
        )
    sig = ddpm_sigmas(spec.num_train_steps) if sigmas is None else np.asarray(sigmas, np.float64)
    if len(sig) != spec.num_train_steps:
        raise ValueError(
            f"{len(sig)} sigmas given but spec.num_train_steps is {spec.num_train_steps}"
        )
    if epochs < 1 or steps_per_epoch < 1 or batch_size < 2 or eval_per_level < 1:
        raise ValueError("need epochs >= 1, steps_per_epoch >= 1, batch_size >= 2, eval >= 1")
    if lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    config = {
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "lr_schedule": lr_schedule,
        "warmup_steps": warmup_steps,
        "seed": seed,
        "val_fraction": val_fraction,
        "eval_per_level": eval_per_level,
    }
    dev = torch.device(device)
    model = build_classifier(spec, seed).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    sched = None
    if lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_warmup_lambda(warmup_steps, total))
    state = ClassifierState(model, opt, sig, config)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    splits = [_split(len(p), val_fraction, rng) for p in pools]
    labels = bucket_labels(bucket_edges)
    ev = _build_eval(
        pools, (splits[0][1], splits[1][1]), eval_per_level, sig, bucket_edges, seed, dev
    )
    sig_t = torch.from_numpy(sig).float()
    n_clean = batch_size // 2
    target = torch.cat([torch.ones(n_clean), torch.zeros(batch_size - n_clean)]).to(dev)
    T = len(sig)
    for epoch in range(1, epochs + 1):
        model.train()
        t0, loss_sum = time.perf_counter(), 0.0
        for _ in range(steps_per_epoch):
            k = rng.integers(0, T, size=batch_size)
            xs, obs = [], []
            for pool, (train_rows, _), sl in zip(
                pools, splits, (slice(0, n_clean), slice(n_clean, None)), strict=True
            ):
                rows = train_rows[rng.integers(0, len(train_rows), size=len(k[sl]))]
                x, o = _noised_batch(pool, rows, k[sl], sig_t, gen, dev)
                xs.append(x)
                obs.append(o)
            o_all = None if obs[0] is None else torch.cat(obs)  # type: ignore[arg-type]
            logits = model(torch.cat(xs), torch.from_numpy(k).to(dev), o_all)
            loss = F.binary_cross_entropy_with_logits(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            state.step += 1
            loss_sum += float(loss.detach())
        if not np.isfinite(loss_sum):
            raise FloatingPointError(f"classifier loss became {loss_sum} in epoch {epoch}")
        elapsed = time.perf_counter() - t0
        metrics = {
            "epoch": float(epoch),
            "step": float(state.step),
            "train_bce": loss_sum / steps_per_epoch,
            "steps_per_s": steps_per_epoch / max(elapsed, 1e-9),
            **_evaluate(model, ev, labels),
        }
        state.epoch = epoch
        state.history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, state, metrics)
    model.eval()
    return state


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _normalizer_dims(normalizer: Normalizer) -> dict[str, int]:
    return {
        k: int(getattr(normalizer, f"{k.replace('.', '__')}_scale").shape[0])
        for k in normalizer.keys
    }


def save_classifier(
    path: str | os.PathLike[str],
    model: NoiseClassifier,
    spec: ClassifierSpec | None = None,
    normalizer: Normalizer | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``classifier.json`` + ``classifier.pt`` atomically (temp dir, then rename).

    The normaliser travels with the weights: annotation must normalise chunks exactly as
    training did. ``extra`` is JSON metadata (epoch, metrics, training config, data digests).
    """
    spec = spec or model.spec
    with atomic_directory(path) as tmp:
        payload = {
            "model": model.state_dict(),
            "normalizer": None if normalizer is None else normalizer.state_dict(),
        }
        torch.save(payload, tmp / CLASSIFIER_FILE)
        meta = {
            "spec": spec.to_dict(),
            "normalizer_dims": None if normalizer is None else _normalizer_dims(normalizer),
            "extra": extra or {},
        }
        (tmp / CLASSIFIER_META).write_text(json.dumps(meta, indent=2, default=str))
    return Path(path)


def read_classifier_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(path) / CLASSIFIER_META).read_text())


def load_classifier(
    path: str | os.PathLike[str], device: str = "cpu"
) -> tuple[NoiseClassifier, ClassifierSpec, Normalizer | None]:
    """(model in eval mode, spec, normaliser or None) from a checkpoint dir, weights only."""
    meta = read_classifier_meta(path)
    spec = ClassifierSpec.from_dict(meta["spec"])
    payload = torch.load(Path(path) / CLASSIFIER_FILE, map_location=device, weights_only=True)
    model = NoiseClassifier(spec).to(device)
    model.load_state_dict(payload["model"])
    normalizer = None
    if meta.get("normalizer_dims") is not None and payload["normalizer"] is not None:
        normalizer = Normalizer(meta["normalizer_dims"])
        normalizer.load_state_dict(payload["normalizer"])
    return model.eval(), spec, normalizer


# --------------------------------------------------------------------------------------------
# Score curves
# --------------------------------------------------------------------------------------------


def _draw_seed(seed: int, draw: int) -> int:
    """Seed of noise draw ``draw``: draw d is the same whatever num_draws is, and the stream is
    salted so it never coincides with the training loop's fixed contraction noise."""
    return (seed * 0x9E3779B97F4A7C15 + (draw + 1) * 0xBF58476D1CE4E5B9 + 0xC1A55) % (1 << 64)


def _writable(a: np.ndarray) -> np.ndarray:
    """float32 array torch can wrap without a warning (Arrow/Ray batches are often read-only)."""
    out = np.asarray(a, dtype=np.float32)
    return out if out.flags.writeable and out.flags.c_contiguous else np.array(out, order="C")


@torch.inference_mode()
def score_curves(
    model: NoiseClassifier,
    actions_norm: np.ndarray,
    obs: np.ndarray | None,
    grid_levels: np.ndarray | Sequence[int],
    num_draws: int = 4,
    seed: int = 0,
    batch_size: int = 64,
    ids: np.ndarray | None = None,
    sigmas: np.ndarray | None = None,
) -> np.ndarray:
    """Mean P(clean) over ``num_draws`` noise draws at each annotation level: (N, L) float32.

    Draw d of chunk i is ``fixed_noise`` keyed by (seed, d, ids[i]) and shared by all levels
    (common random numbers: a curve is smooth in sigma, and its value never depends on the block
    size or on which shard/actor scores the chunk). Pass global chunk ids as ``ids`` when scoring
    shards; the default is the row index. ``batch_size`` chunks per block, i.e. a forward pass of
    batch_size * num_draws * L rows. Pure numpy in / numpy out, no global state.
    """
    spec = model.spec
    x = _writable(actions_norm)
    if x.ndim != 3 or x.shape[2] != spec.action_dim:
        raise ValueError(f"actions_norm must be (N, H, {spec.action_dim}), got {x.shape}")
    n, h, da = x.shape
    levels = np.asarray(grid_levels, dtype=np.int64).reshape(-1)
    T = spec.num_train_steps
    if levels.size == 0 or levels.min() < 0 or levels.max() >= T:
        raise ValueError(f"grid_levels must be non-empty indices in [0, {T - 1}], got {levels}")
    if num_draws < 1 or batch_size < 1:
        raise ValueError(f"need num_draws >= 1 and batch_size >= 1, got {num_draws}, {batch_size}")
    if (obs is None) != (spec.obs_dim == 0):
        raise ValueError(f"classifier has obs_dim={spec.obs_dim} but obs is {type(obs).__name__}")
    o = None if obs is None else _writable(obs)
    if o is not None and o.shape != (n, spec.obs_dim):
        raise ValueError(f"obs must be ({n}, {spec.obs_dim}), got {o.shape}")
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    if ids.shape != (n,):
        raise ValueError(f"ids must have shape ({n},), got {ids.shape}")
    sig = ddpm_sigmas(T) if sigmas is None else np.asarray(sigmas, dtype=np.float64)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n_lv, n_dr = len(levels), num_draws
    lv_sig = torch.from_numpy(sig[levels]).float()
    lv_k = torch.from_numpy(levels).to(device)
    out = np.empty((n, n_lv), dtype=np.float32)
    try:
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            b = hi - lo
            x0 = torch.from_numpy(x[lo:hi])
            eps = torch.stack(
                [fixed_noise(ids[lo:hi], (h, da), _draw_seed(seed, d)) for d in range(n_dr)], 1
            )  # (b, D, H, Da)
            rows = b * n_dr * n_lv
            x0r = x0[:, None, None].expand(b, n_dr, n_lv, h, da).reshape(rows, h, da)
            epsr = eps[:, :, None].expand(b, n_dr, n_lv, h, da).reshape(rows, h, da)
            xs = add_noise(x0r, lv_sig.repeat(b * n_dr), epsr).to(device)
            cond = None
            if o is not None:
                cond = torch.from_numpy(o[lo:hi]).to(device).repeat_interleave(n_dr * n_lv, 0)
            logits = model(xs, lv_k.repeat(b * n_dr), cond)
            p = torch.sigmoid(logits.float()).reshape(b, n_dr, n_lv).mean(dim=1)
            out[lo:hi] = p.cpu().numpy()
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------------------------------------
# sigma_min rule
# --------------------------------------------------------------------------------------------


def ewm_weights(n_levels: int, span: float) -> np.ndarray:
    """(L, L) lower-triangular matrix M with smoothed = curves @ M.T (pandas adjust=True EWM)."""
    if span < 1:
        raise ValueError(f"EWM span must be >= 1 (or 0/None to disable), got {span}")
    w = 1.0 - 2.0 / (span + 1.0)
    i = np.arange(n_levels)
    lag = i[:, None] - i[None, :]
    m = np.where(lag >= 0, w ** np.maximum(lag, 0), 0.0)
    return m / m.sum(axis=1, keepdims=True)


def ewm_smooth(curves: np.ndarray, span: float | None) -> np.ndarray:
    """pandas ``ewm(span=span, adjust=True).mean()`` along the last axis (increasing sigma).

    y_t = sum_i w^i x_{t-i} / sum_i w^i with w = 1 - 2 / (span + 1). Applied as one matmul with
    an (L, L) weight matrix: one pass over the (N, L) curves, about 10x faster than an O(N L)
    recursion over columns for annotation grids of L <= 100 levels. ``span`` None, 0 or 1
    returns the curves unchanged.
    """
    c = np.asarray(curves, dtype=np.float64)
    if span is None or span == 0 or span == 1:
        return c
    return c @ ewm_weights(c.shape[-1], span).T


def first_pass_sigma(curves: np.ndarray, grid_sigmas: np.ndarray, tau: float) -> np.ndarray:
    """min{sigma_k : curve(sigma_k) > tau} per row (strict), 1.0 where no level passes."""
    passes = curves > tau
    idx = passes.argmax(axis=1)
    return np.where(passes.any(axis=1), grid_sigmas[idx], 1.0)


def _group_means(curves: np.ndarray, inv: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean curve per group: one bincount per level, O(N L)."""
    counts = np.bincount(inv, minlength=n_groups).astype(np.float64)
    sums = np.stack(
        [
            np.bincount(inv, weights=curves[:, j], minlength=n_groups)
            for j in range(curves.shape[1])
        ],
        axis=1,
    )
    return sums / np.maximum(counts, 1.0)[:, None]


def group_assignment(
    curves: np.ndarray,
    granularity: Granularity,
    groups: np.ndarray | None = None,
    n_buckets: int | None = None,
    bucket_mode: BucketMode = "random",
    seed: int = 0,
) -> np.ndarray:
    """Group index (N,) of every row for a granularity (0..G-1; chunk = its own row)."""
    n = len(curves)
    if granularity == "chunk":
        return np.arange(n)
    if granularity == "dataset":
        return np.zeros(n, dtype=np.int64)
    if granularity == "episode":
        if groups is None or len(groups) != n:
            raise ValueError(f"granularity 'episode' needs groups of length {n} (episode ids)")
        return np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    if granularity == "bucket":
        if n_buckets is None or n_buckets < 1:
            raise ValueError(f"granularity 'bucket' needs n_buckets >= 1, got {n_buckets}")
        if bucket_mode == "random":
            return np.random.default_rng(seed).permutation(n) % n_buckets
        if bucket_mode == "score":
            order = np.argsort(curves.mean(axis=1), kind="stable")
            rank = np.empty(n, dtype=np.int64)
            rank[order] = np.arange(n)
            return rank * n_buckets // max(n, 1)
        raise ValueError(f"bucket_mode must be 'random' or 'score', got {bucket_mode!r}")
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


def derive_sigma_min(
    curves: np.ndarray,
    grid_sigmas: np.ndarray,
    tau: float = DEFAULT_TAU,
    granularity: Granularity = "chunk",
    groups: np.ndarray | None = None,
    n_buckets: int | None = None,
    bucket_mode: BucketMode = "random",
    smoothing: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """sigma_min (N,) = min{sigma_k : smoothed mean curve of the row's group > tau}.

    curves (N, L) of P(clean) on the increasing ``grid_sigmas`` (L,). Granularity: ``chunk`` (each
    row), ``episode`` (rows sharing a ``groups`` id; pass source ids for per-dataset thresholds),
    ``bucket`` (``n_buckets`` groups, random with ``seed`` or quantiles of the mean score) or
    ``dataset`` (one mean curve). ``smoothing`` is the EWM span in annotation-grid levels; it
    lags upward, so it can only raise sigma_min (None: off, the default, because on a coarse grid
    one level of lag is a large step in sigma). The test is strict (> tau). A group that never
    passes gets sigma_min = 1.0: it is never used at high noise, only through sigma_max (locality).
    """
    c = np.asarray(curves, dtype=np.float64)
    s = np.asarray(grid_sigmas, dtype=np.float64).reshape(-1)
    if c.ndim != 2 or c.shape[1] != len(s):
        raise ValueError(f"curves must be (N, L={len(s)}), got {c.shape}")
    if len(s) == 0 or np.any(np.diff(s) <= 0):
        raise ValueError("grid_sigmas must be non-empty and strictly increasing")
    if not np.isfinite(c).all():
        raise ValueError("curves contain NaN or inf")
    if len(c) == 0:
        return np.zeros(0)
    if granularity == "chunk":
        return first_pass_sigma(ewm_smooth(c, smoothing), s, tau)
    g = group_assignment(c, granularity, groups, n_buckets, bucket_mode, seed)
    n_groups = int(g.max()) + 1
    means = _group_means(c, g, n_groups)
    return first_pass_sigma(ewm_smooth(means, smoothing), s, tau)[g]


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _bucket_series(metrics: dict[str, float], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(bucket centres, values) of keys ``prefix/sA-B`` in a metrics dict, sorted by sigma."""
    pts = []
    for key, v in metrics.items():
        if key.startswith(f"{prefix}/s"):
            lo, hi = key[len(prefix) + 2 :].split("-")
            pts.append((0.5 * (float(lo) + float(hi)), float(v)))
    pts.sort()
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def plot_accuracy_vs_sigma(
    epoch_metrics: Sequence[dict[str, float]], path: str | os.PathLike[str]
) -> Path:
    """Held-out accuracy and BCE per sigma bucket, one line per epoch.

    Accuracy of a balanced classifier is 0.5 + TV(p_s, q_s) / 2 at best: the curve shows where
    clean and corrupt chunks stop being distinguishable (where contraction starts).
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not epoch_metrics:
        raise ValueError("nothing to plot: no epoch metrics")
    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    ax_acc, ax_bce = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    cmap = colormaps["viridis"]
    n = len(epoch_metrics)
    for i, m in enumerate(epoch_metrics):
        colour = cmap(i / max(n - 1, 1))
        label = f"epoch {int(m.get('epoch', i + 1))}"
        for ax, prefix in ((ax_acc, "acc"), (ax_bce, "bce")):
            x, y = _bucket_series(m, prefix)
            if x.size:
                ax.plot(x, y, marker="o", ms=3, color=colour, label=label)
    ax_acc.axhline(0.5, color="0.5", ls="--", lw=0.8)
    ax_acc.set_ylim(0.4, 1.02)
    ax_acc.set_ylabel("held-out accuracy")
    ax_bce.axhline(np.log(2.0), color="0.5", ls="--", lw=0.8)
    ax_bce.set_ylabel("held-out BCE")
    for ax in (ax_acc, ax_bce):
        ax.set_xlabel("sigma")
        ax.set_xlim(0, 1)
    ax_acc.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def plot_sigma_min_hist(
    values_by_source: dict[str, np.ndarray], path: str | os.PathLike[str], bins: int = 40
) -> Path:
    """Overlaid sigma_min histograms per source; the legend counts items never passing (1.0)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not values_by_source:
        raise ValueError("nothing to plot: no sources")
    fig = Figure(figsize=(6, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for name, vals in values_by_source.items():
        v = np.asarray(vals, dtype=np.float64).reshape(-1)
        never = int((v >= 1.0).sum())
        ax.hist(v, bins=edges, alpha=0.5, label=f"{name} (n={v.size}, never passes: {never})")
    ax.set_xlabel("sigma_min")
    ax.set_ylabel("items")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
