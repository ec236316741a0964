"""Sampler cost vs dataset size, and ambient vs plain denoising train-step time. Prints JSON.

Goals (issue 2): per-batch sampler cost flat within 1.5x from N = 1e3 to 1e7 corrupt items;
ambient train step <= 1.05x a plain denoising step on the same model and batch size.
Usage: .venv/bin/python benchmarks/sampler.py [--max-n 10000000] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from ambient_core.data import ChunkDataset, ChunkSpec, episodes_to_table, frames_from_table
from ambient_core.policy import DiffusionPolicy, Normalizer, PolicySpec
from ambient_core.sampler import Buffer, MixingRule, NoiseFirstSampler
from ambient_core.schedule import ddpm_sigmas
from ambient_core.train import TrainConfig, make_state, train_step


def sampler_cost(max_n: int, batch: int, reps: int) -> list[dict[str, float]]:
    sig = ddpm_sigmas()
    rng = np.random.default_rng(0)
    out = []
    n = 1000
    while n <= max_n:
        sm = rng.uniform(0, 0.8, size=n)
        sx = np.where(rng.random(n) < 0.3, rng.uniform(0, 0.3, size=n), 0.0)
        t0 = time.perf_counter()
        s = NoiseFirstSampler(100, sm, sx, sigmas=sig, rule=MixingRule(Buffer(1.1)), seed=0)
        build = time.perf_counter() - t0
        for _ in range(20):
            s.sample(batch)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            s.sample(batch)
            times.append(time.perf_counter() - t)
        out.append(
            {
                "n_corrupt": n,
                "build_s": round(build, 4),
                "batch_us_median": round(statistics.median(times) * 1e6, 1),
            }
        )
        n *= 10
    return out


def _episodes(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(n):
        pos = np.cumsum(rng.normal(0, 0.05, (60, 2)), axis=0).astype(np.float32)
        goal = np.tile(pos[-1], (60, 1))
        eps.append(
            {
                "observation.state": pos,
                "observation.goal": goal,
                "action": np.vstack([pos[1:], pos[-1:]]),
            }
        )
    return eps


def step_times(steps: int, batch: int, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    keys = ["observation.state", "observation.goal"]
    frames = [
        frames_from_table(episodes_to_table(_episodes(50, 0), "clean"), [*keys, "action"]),
        frames_from_table(episodes_to_table(_episodes(500, 1), "corrupt"), [*keys, "action"]),
    ]
    data = ChunkDataset(frames, ChunkSpec(16, 2, 8), keys)
    n_clean = data.dataset_chunk_ranges[0][1]
    n_corr = len(data) - n_clean
    spec = PolicySpec(
        obs_dims={k: 2 for k in keys},
        action_dim=2,
        network="unet",
        network_kwargs={"down_dims": [64, 128, 256], "diffusion_step_embed_dim": 64},
    )
    norm = Normalizer.fit(data.features)
    sig = ddpm_sigmas()
    sigmas_t = torch.from_numpy(sig).float()

    def make(mode: str):  # noqa: ANN202
        torch.manual_seed(0)
        smin = np.zeros(n_corr) if mode == "plain" else np.full(n_corr, 0.074)
        sampler = NoiseFirstSampler(
            n_clean,
            smin,
            sigmas=sig,
            rule=MixingRule(Buffer(1.15), pool="fixed", alpha=0.5),
            seed=0,
        )
        cfg = TrainConfig(
            steps=10**9,
            batch_size=batch,
            corrupt_loss="denoising" if mode == "plain" else "ambient",
        )
        return make_state(DiffusionPolicy(spec, norm), sampler, cfg)

    states = {"plain": make("plain"), "ambient": make("ambient")}
    times: dict[str, list[float]] = {"plain": [], "ambient": []}
    for i in range(steps + 5):
        for mode in ("plain", "ambient") if i % 2 else ("ambient", "plain"):
            t = time.perf_counter()
            train_step(states[mode], data, sigmas_t)
            if i >= 5:
                times[mode].append(time.perf_counter() - t)
    p, a = statistics.median(times["plain"]), statistics.median(times["ambient"])
    return {
        "threads": threads,
        "batch": batch,
        "plain_step_ms": round(p * 1e3, 2),
        "ambient_step_ms": round(a * 1e3, 2),
        "ratio": round(a / p, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-n", type=int, default=10_000_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    cost = sampler_cost(a.max_n, a.batch, a.reps)
    med = [c["batch_us_median"] for c in cost]
    step = step_times(a.steps, a.batch, a.threads)
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()} {torch.get_num_threads()} torch threads",
                "sampler": cost,
                "sampler_flatness_max_over_min": round(max(med) / min(med), 3),
                "sampler_goal_flat_within": 1.5,
                "train_step": step,
                "train_step_goal_ratio": 1.05,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
