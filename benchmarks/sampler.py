"""Sampler cost vs dataset size, and ambient vs plain denoising train-step time. Prints JSON.

Goals (issue 2): per-batch sampler cost flat within 1.5x from N = 1e3 to 1e7 corrupt items;
ambient train step <= 1.05x a plain denoising step on the same model and batch size.
``--datasets D`` (issue 15) also times weighted draws over D corrupt datasets (an Open-X-like
mixture, one sigma_min and weight each) next to the unweighted draw, interleaved, as a ratio.
Usage: .venv/bin/python benchmarks/sampler.py [--max-n 10000000] [--steps 60] [--datasets 48]
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
from ambient_core.sampler import Buffer, MixingRule, NoiseFirstSampler, PoolDatasets
from ambient_core.schedule import ddpm_sigmas
from ambient_core.train import TrainConfig, make_state, train_step


def _median_batch_us(samplers: list[NoiseFirstSampler], batch: int, reps: int) -> list[float]:
    """Median per-batch time of each sampler, interleaved so load changes hit them alike."""
    for s in samplers:
        for _ in range(20):
            s.sample(batch)
    times: list[list[float]] = [[] for _ in samplers]
    for _ in range(reps):
        for i, s in enumerate(samplers):
            t = time.perf_counter()
            s.sample(batch)
            times[i].append(time.perf_counter() - t)
    return [round(statistics.median(t) * 1e6, 1) for t in times]


def sampler_cost(max_n: int, batch: int, reps: int, datasets: int = 0) -> list[dict[str, float]]:
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
        row = {"n_corrupt": n, "build_s": round(build, 4)}
        if datasets:
            sizes = np.diff(np.linspace(0, n, datasets + 1).astype(int))
            mix = PoolDatasets(tuple(sizes), tuple(rng.uniform(0.1, 1.0, datasets)))
            sm_d = np.repeat(rng.uniform(0, 0.8, datasets), sizes)  # one sigma_min per dataset
            t0 = time.perf_counter()
            w = NoiseFirstSampler(
                100, sm_d, sigmas=sig, rule=MixingRule(Buffer(1.1), corrupt_datasets=mix)
            )
            row["weighted_build_s"] = round(time.perf_counter() - t0, 4)
            plain, weighted = _median_batch_us([s, w], batch, reps)
            row |= {
                "weighted_batch_us_median": weighted,
                "weighted_over_plain": round(weighted / plain, 3),
            }
        else:
            (plain,) = _median_batch_us([s], batch, reps)
        row["batch_us_median"] = plain
        out.append(row)
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
    ap.add_argument("--datasets", type=int, default=0, help="also time D weighted datasets")
    ap.add_argument("--no-train", action="store_true", help="skip the train-step timing")
    a = ap.parse_args()
    cost = sampler_cost(a.max_n, a.batch, a.reps, a.datasets)
    med = [c["batch_us_median"] for c in cost]
    step = None if a.no_train else step_times(a.steps, a.batch, a.threads)
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
