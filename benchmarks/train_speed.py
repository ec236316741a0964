"""Training-step speed on CPU: where one step's time goes, and steps/s before/after.

For the maze and bin-sorting base configs (ConditionalUnet1D [32, 64, 128], batch 128) it times
the phases of ``ambient_core.train.train_step`` (sampler + gather, noising, forward, backward,
optimiser, EMA) and the whole step on two code paths, interleaved so machine load hits both:

- ``after``: the library as it is (fused AdamW, EMA tensor lists built once, no host sync);
- ``before``: the previous path, rebuilt here: foreach AdamW, an EMA that walks the module tree
  every step, and the per-step host reads of the loss (``float(loss)``, per-element losses to
  numpy) the old loop did.

Times are CPU seconds of this process (``time.process_time``; robust to other load on a shared
machine as long as torch runs one thread) and wall seconds. ``--compile`` also times
``torch.compile`` on the network (compile time and step time), which did not pay on CPU.

    .venv/bin/python benchmarks/train_speed.py [--steps 40] [--batch 128] [--task both]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import torch

from ambient_core.data import ChunkDataset, ChunkSpec, Frames
from ambient_core.envs.registry import get_task
from ambient_core.policy import EMA, DiffusionPolicy, Normalizer, PolicySpec
from ambient_core.sampler import NoiseFirstSampler
from ambient_core.schedule import ddpm_sigmas
from ambient_core.train import TrainConfig, TrainState, _noised_pair, make_state, train_step

SPEC = ChunkSpec(16, 2, 8)


def _frames(task_obs: tuple[str, ...], episodes: list[dict[str, np.ndarray]], name: str) -> Frames:
    keys = [*task_obs, "action"]
    feats = {k: np.concatenate([e[k] for e in episodes]).astype(np.float32) for k in keys}
    lens = np.array([len(e["action"]) for e in episodes])
    ends = np.cumsum(lens)
    return Frames(name, feats, np.arange(len(episodes)), np.stack([ends - lens, ends], 1))


def _dataset(task_name: str) -> tuple[ChunkDataset, int, tuple[str, ...]]:
    task = get_task(task_name)
    clean, corrupt = task.generate(20, 60, 0)
    data = ChunkDataset(
        [_frames(task.obs_keys, clean, "clean"), _frames(task.obs_keys, corrupt, "corrupt")],
        SPEC,
        task.obs_keys,
    )
    return data, data.dataset_chunk_ranges[0][1], task.obs_keys


def _state(task_name: str, batch: int, before: bool) -> tuple[TrainState, ChunkDataset]:
    data, n_clean, obs_keys = _dataset(task_name)
    n_q = len(data) - n_clean
    if task_name == "maze":  # the paper's ambient row: RRT data above sigma_min = 0.074
        sm, sx, loss = np.full(n_q, 0.074), None, "ambient"
    else:  # bin sorting: wrong-logic demos only below sigma_max = 0.46
        sm, sx, loss = np.full(n_q, 1.0), np.full(n_q, 0.46), "denoising"
    sampler = NoiseFirstSampler(n_clean, sm, sx, sigmas=ddpm_sigmas(), seed=0)
    dims = data.feature_dims()
    spec = PolicySpec(
        obs_dims={k: dims[k] for k in obs_keys},
        action_dim=dims["action"],
        network_kwargs={"down_dims": [32, 64, 128], "diffusion_step_embed_dim": 32},
    )
    torch.manual_seed(0)
    policy = DiffusionPolicy(spec, Normalizer.fit(data.features))
    cfg = TrainConfig(steps=10**9, batch_size=batch, lr=1e-3, corrupt_loss=loss)  # type: ignore[arg-type]
    state = make_state(policy, sampler, cfg)
    if before:
        _use_previous_path(state)
    return state, data


def _legacy_ema_update(ema: EMA, model: torch.nn.Module) -> None:
    """The EMA update before caching: zip the module trees on every call."""
    with torch.no_grad():
        d = ema.decay(ema.optimization_step)
        pairs = list(zip(ema.averaged.parameters(), model.parameters(), strict=True))
        ema_t: list[torch.Tensor] = [e for e, p in pairs if p.requires_grad]
        torch._foreach_mul_(ema_t, d)
        src: list[torch.Tensor] = [p.detach() for _, p in pairs if p.requires_grad]
        torch._foreach_add_(ema_t, src, alpha=1 - d)
        for e, p in pairs:
            if not p.requires_grad:
                e.copy_(p.detach())
        for ema_b, b in zip(ema.averaged.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
        ema.optimization_step += 1


def _use_previous_path(state: TrainState) -> None:
    c = state.config
    state.optimizer = torch.optim.AdamW(
        state.policy.model.parameters(),
        lr=c.lr,
        betas=c.betas,
        weight_decay=c.weight_decay,
        foreach=True,
    )
    state.scheduler = torch.optim.lr_scheduler.LambdaLR(state.optimizer, lambda _: 1.0)
    ema = state.ema
    assert ema is not None
    ema.update = lambda model: _legacy_ema_update(ema, model)  # type: ignore[method-assign]


def _step(state: TrainState, data: ChunkDataset, sig: torch.Tensor, before: bool) -> None:
    loss, per_elem, _ = train_step(state, data, sig)
    if before:  # the old loop read both back every step
        float(loss)
        per_elem.cpu().numpy()


def _steps(state: TrainState, data: ChunkDataset, sig: torch.Tensor, before: bool, n: int) -> None:
    for _ in range(n):
        _step(state, data, sig, before)


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


class _Clock:
    """CPU milliseconds per named phase, summed within a step, one list entry per step."""

    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = {}
        self.current: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        c = time.process_time()
        yield
        self.current[name] = self.current.get(name, 0.0) + (time.process_time() - c) * 1e3

    def end_step(self) -> None:
        for k, v in self.current.items():
            self.ms.setdefault(k, []).append(v)
        self.current = {}


def phases(state: TrainState, data: ChunkDataset, steps: int) -> dict[str, float]:
    """Median CPU milliseconds of each phase of a step (the CPU runs them synchronously)."""
    cfg, policy = state.config, state.policy
    sig = torch.from_numpy(state.sampler.sigmas).float()
    clock = _Clock()
    for _ in range(steps):
        with clock.phase("sample_and_gather"):
            b = state.sampler.sample(cfg.batch_size)
            obs, x0 = data.torch_batch(b.items, policy.normalizer)
            k = torch.from_numpy(b.levels)
        with clock.phase("noising"):
            x_t, target = _noised_pair(cfg, policy.spec.prediction, b, x0, sig[k])
        with clock.phase("forward"):
            loss = ((policy(x_t, k, policy.global_cond(obs)) - target) ** 2).mean()
        with clock.phase("backward"):
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with clock.phase("optimiser"):
            state.optimizer.step()
            state.scheduler.step()
        with clock.phase("ema"):
            if state.ema is not None:
                state.ema.update(policy)
        clock.end_step()
    res = {k: statistics.median(v) for k, v in clock.ms.items()}
    res["total"] = sum(res.values())
    return {k: round(v, 2) for k, v in res.items()}


def before_after(task_name: str, batch: int, steps: int) -> dict[str, Any]:
    """Steps/s of both paths, alternating blocks of 10 steps so load drifts hit both alike."""
    states = {m: _state(task_name, batch, m == "before") for m in ("before", "after")}
    sig = torch.from_numpy(states["after"][0].sampler.sigmas).float()
    cpu: dict[str, list[float]] = {"before": [], "after": []}
    wall: dict[str, list[float]] = {"before": [], "after": []}
    for m, (st, d) in states.items():  # warm-up (allocator, first-call dispatch)
        for _ in range(3):
            _step(st, d, sig, m == "before")
    for block in range(max(1, steps // 10)):
        for m in ("before", "after") if block % 2 else ("after", "before"):
            st, d = states[m]
            c, w = _timed(partial(_steps, st, d, sig, m == "before", 10))
            cpu[m].append(c / 10)
            wall[m].append(w / 10)
    res: dict[str, Any] = {}
    for m in ("before", "after"):
        res[m] = {
            "steps_per_s_cpu": round(1.0 / statistics.median(cpu[m]), 2),
            "steps_per_s_wall": round(1.0 / statistics.median(wall[m]), 2),
        }
    res["speedup_cpu"] = round(
        res["after"]["steps_per_s_cpu"] / res["before"]["steps_per_s_cpu"], 3
    )
    return res


def compiled(task_name: str, batch: int, steps: int) -> dict[str, Any]:
    """torch.compile (inductor) on the denoiser: compile time and step time vs eager."""
    st, data = _state(task_name, batch, False)
    sig = torch.from_numpy(st.sampler.sigmas).float()
    st.policy.model = torch.compile(st.policy.model, dynamic=False)  # type: ignore[assignment]
    first_cpu, first_wall = _timed(partial(_steps, st, data, sig, False, 3))
    cpu, _ = _timed(partial(_steps, st, data, sig, False, steps))
    return {
        "compile_cpu_s": round(first_cpu, 1),
        "compile_wall_s": round(first_wall, 1),
        "steps_per_s_cpu": round(steps / cpu, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--task", choices=["maze", "bin_sorting", "both"], default="both")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tasks = ["maze", "bin_sorting"] if a.task == "both" else [a.task]
    out: dict[str, Any] = {
        "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}",
        "threads": a.threads,
        "batch": a.batch,
        "network": "ConditionalUnet1D [32, 64, 128]",
    }
    for t in tasks:
        st, data = _state(t, a.batch, False)
        out[t] = {
            "phase_ms": phases(st, data, max(10, a.steps // 2)),
            **before_after(t, a.batch, a.steps),
        }
        if a.compile:
            out[t]["compile"] = compiled(t, a.batch, a.steps)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
