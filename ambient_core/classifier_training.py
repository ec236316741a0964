"""Training the noise-conditioned clean-vs-corrupt classifier c(x_s, k[, obs]).

BCE on balanced batches (half clean, label 1; half corrupt, label 0) of normalised chunks noised
to uniformly drawn DDPM levels, so one model scores every level of an annotation grid. After
every epoch the model is scored on a fixed held-out set (same rows, levels and noise each epoch)
per sigma bucket, and ``on_epoch`` may checkpoint it: the classifier epoch is a sweep knob
because an early, less confident classifier puts sigma_min lower than a late one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ambient_core.classifier import (
    ClassifierSpec,
    NoiseClassifier,
    build_classifier,
    normalized_chunks,
)
from ambient_core.data import ChunkDataset
from ambient_core.noise import add_noise
from ambient_core.policy import Normalizer
from ambient_core.sampler import DEFAULT_BUCKET_EDGES, bucket_index, bucket_labels
from ambient_core.schedule import ddpm_sigmas
from ambient_core.train import cosine_warmup_lambda

# --------------------------------------------------------------------------------------------
# Pools


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


# --------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class ClassifierTraining:
    """How to train: optimisation, held-out evaluation and device.

    The default cosine decay of the learning rate (to 0 at the last step) matters: at sigma ~ 1
    nothing separates the pools and only a small final step size calibrates the output to 0.5
    there; a constant rate left it anywhere in [0.4, 0.56] on a toy task, which decides whether
    curves ever pass tau = 0.45.
    """

    epochs: int = 10
    steps_per_epoch: int = 500
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    seed: int = 0
    val_fraction: float = 0.1
    eval_per_level: int = 32
    bucket_edges: tuple[float, ...] = DEFAULT_BUCKET_EDGES
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 2:
            raise ValueError("need epochs >= 1, steps_per_epoch >= 1, batch_size >= 2")
        if self.eval_per_level < 1:
            raise ValueError(f"eval_per_level must be >= 1, got {self.eval_per_level}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(
                f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bucket_edges"] = list(self.bucket_edges)
        return d


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


EpochCallback = Callable[[int, ClassifierState, dict[str, float]], None]


@dataclass
class _EvalSet:
    """Fixed held-out rows, levels and noise: every epoch is scored on identical inputs."""

    x: torch.Tensor
    obs: torch.Tensor | None
    k: torch.Tensor
    label: torch.Tensor
    bucket: np.ndarray


def _as_pool(x: ChunkPool | np.ndarray) -> ChunkPool:
    return ArrayPool(x) if isinstance(x, np.ndarray) else x


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


def _cat(parts: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """Concatenate optional tensors (all None when the classifier sees no observations)."""
    present = [p for p in parts if p is not None]
    return torch.cat(present) if present else None


def _build_eval(
    pools: tuple[ChunkPool, ChunkPool],
    val_rows: tuple[np.ndarray, np.ndarray],
    sigmas: np.ndarray,
    t: ClassifierTraining,
    device: torch.device,
) -> _EvalSet:
    rng = np.random.default_rng([t.seed, 1])
    gen = torch.Generator().manual_seed(t.seed + 1)
    sig_t = torch.from_numpy(sigmas).float()
    k = np.repeat(np.arange(len(sigmas), dtype=np.int64), t.eval_per_level)
    xs, obs, labels = [], [], []
    for label, pool, rows in ((1.0, pools[0], val_rows[0]), (0.0, pools[1], val_rows[1])):
        pick = rows[rng.integers(0, len(rows), size=len(k))]
        x, o = _noised_batch(pool, pick, k, sig_t, gen, device)
        xs.append(x)
        obs.append(o)
        labels.append(torch.full((len(k),), label))
    kk = torch.from_numpy(np.concatenate([k, k])).to(device)
    return _EvalSet(
        x=torch.cat(xs),
        obs=_cat(obs),
        k=kk,
        label=torch.cat(labels).to(device),
        bucket=bucket_index(sigmas, t.bucket_edges)[kk.cpu().numpy()],
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


def _checked_spec(
    pools: tuple[ChunkPool, ChunkPool], spec: ClassifierSpec | None
) -> ClassifierSpec:
    """The spec, or one fitted to the pools; the pools must agree with it and each other."""
    if any(len(p) == 0 for p in pools):
        raise ValueError("both the clean and the corrupt pool need at least one chunk")
    p0, p1 = pools
    shapes = [(p.horizon, p.action_dim, p.obs_dim) for p in pools]
    if shapes[0] != shapes[1]:
        raise ValueError(f"clean and corrupt pools disagree on (H, Da, obs_dim): {shapes}")
    if spec is None:
        return ClassifierSpec(action_dim=p0.action_dim, horizon=p0.horizon, obs_dim=p0.obs_dim)
    if (spec.action_dim, spec.obs_dim) != (p0.action_dim, p0.obs_dim):
        raise ValueError(
            f"spec expects action_dim={spec.action_dim}, obs_dim={spec.obs_dim}; the pools give "
            f"{p0.action_dim}, {p0.obs_dim}"
        )
    return spec


class _Trainer:
    """The loop's state between steps: pools, splits, RNGs, optimiser and schedule."""

    def __init__(
        self,
        pools: tuple[ChunkPool, ChunkPool],
        spec: ClassifierSpec,
        t: ClassifierTraining,
        sigmas: np.ndarray,
    ) -> None:
        self.pools, self.t = pools, t
        self.dev = torch.device(t.device)
        model = build_classifier(spec, t.seed).to(self.dev)
        opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.sched = None
        if t.lr_schedule == "cosine":
            total = t.epochs * t.steps_per_epoch
            lam = cosine_warmup_lambda(t.warmup_steps, total)
            self.sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
        self.state = ClassifierState(model, opt, sigmas, t.to_dict())
        self.rng = np.random.default_rng(t.seed)
        self.gen = torch.Generator().manual_seed(t.seed)
        self.splits = [_split(len(p), t.val_fraction, self.rng) for p in pools]
        val = (self.splits[0][1], self.splits[1][1])
        self.ev = _build_eval(pools, val, sigmas, t, self.dev)
        self.labels = bucket_labels(t.bucket_edges)
        self.sig_t = torch.from_numpy(sigmas).float()
        self.n_clean = t.batch_size // 2
        target = [torch.ones(self.n_clean), torch.zeros(t.batch_size - self.n_clean)]
        self.target = torch.cat(target).to(self.dev)

    def step(self) -> float:
        """One optimiser step on a fresh balanced batch; its BCE."""
        t, model, opt = self.t, self.state.model, self.state.optimizer
        k = self.rng.integers(0, len(self.sig_t), size=t.batch_size)
        halves = (slice(0, self.n_clean), slice(self.n_clean, None))
        xs, obs = [], []
        for pool, (train_rows, _), sl in zip(self.pools, self.splits, halves, strict=True):
            rows = train_rows[self.rng.integers(0, len(train_rows), size=len(k[sl]))]
            x, o = _noised_batch(pool, rows, k[sl], self.sig_t, self.gen, self.dev)
            xs.append(x)
            obs.append(o)
        logits = model(torch.cat(xs), torch.from_numpy(k).to(self.dev), _cat(obs))
        loss = F.binary_cross_entropy_with_logits(logits, self.target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if self.sched is not None:
            self.sched.step()
        self.state.step += 1
        return float(loss.detach())

    def epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch, then score the held-out set; the epoch's metrics."""
        self.state.model.train()
        t0, loss_sum = time.perf_counter(), 0.0
        for _ in range(self.t.steps_per_epoch):
            loss_sum += self.step()
        if not np.isfinite(loss_sum):
            raise FloatingPointError(f"classifier loss became {loss_sum} in epoch {epoch}")
        elapsed = time.perf_counter() - t0
        return {
            "epoch": float(epoch),
            "step": float(self.state.step),
            "train_bce": loss_sum / self.t.steps_per_epoch,
            "steps_per_s": self.t.steps_per_epoch / max(elapsed, 1e-9),
            **_evaluate(self.state.model, self.ev, self.labels),
        }


def train_classifier(
    clean: ChunkPool | np.ndarray,
    corrupt: ChunkPool | np.ndarray,
    spec: ClassifierSpec | None = None,
    training: ClassifierTraining | None = None,
    *,
    sigmas: np.ndarray | None = None,
    on_epoch: EpochCallback | None = None,
) -> ClassifierState:
    """Train c(x_s, k) with BCE on balanced batches at uniform grid levels; label 1 = clean.

    ``clean``/``corrupt`` are pools (``ArrayPool``, ``DatasetPool``) or arrays of normalised
    chunks. Each step draws batch_size // 2 clean and the rest corrupt rows, k ~ U{0..T-1} and
    fresh noise. A ``val_fraction`` of each pool is held out; after every epoch the model is
    scored on a fixed held-out set (``eval_per_level`` rows per pool at every level, fixed noise)
    and ``on_epoch(epoch, state, metrics)`` runs (checkpoint there). Metrics: ``acc``, ``bce``,
    ``acc/<bucket>``, ``bce/<bucket>``, ``pclean_corrupt/<bucket>`` (mean P(clean) of corrupt
    rows, the dataset-level E_q[c]), ``train_bce``, ``steps_per_s``.
    """
    t = training or ClassifierTraining()
    pools = (_as_pool(clean), _as_pool(corrupt))
    spec = _checked_spec(pools, spec)
    sig = ddpm_sigmas(spec.num_train_steps) if sigmas is None else np.asarray(sigmas, np.float64)
    if len(sig) != spec.num_train_steps:
        raise ValueError(
            f"{len(sig)} sigmas given but spec.num_train_steps is {spec.num_train_steps}"
        )
    trainer = _Trainer(pools, spec, t, sig)
    state = trainer.state
    for epoch in range(1, t.epochs + 1):
        metrics = trainer.epoch(epoch)
        state.epoch = epoch
        state.history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, state, metrics)
    state.model.eval()
    return state


# --------------------------------------------------------------------------------------------
# Plot


def _bucket_series(metrics: dict[str, float], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(bucket centres, values) of keys ``prefix/sA-B`` in a metrics dict, sorted by sigma."""
    pts = []
    for key, v in metrics.items():
        if key.startswith(f"{prefix}/s"):
            lo, hi = key[len(prefix) + 2 :].split("-")
            pts.append((0.5 * (float(lo) + float(hi)), float(v)))
    pts.sort()
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def plot_accuracy_vs_sigma(epoch_metrics: Sequence[dict[str, float]], path: str | Path) -> Path:
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
