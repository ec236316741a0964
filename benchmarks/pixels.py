"""Pixel throughput: decoded frames/s and image-policy training steps/s from a LeRobot v3 dataset
with MP4 videos, against the same steps on frames preloaded in memory. Prints JSON.

Goal (issue 15): training from the LeRobot dataset runs at >= 0.8x the preloaded steps/s on 2
cores: a background thread decodes episodes ahead (``EpisodeFrameCache``), so the training loop
only waits for episodes the decoder has not reached. Both runs use the same model, seed and
sampler stream, and their steps alternate so both see the same load on shared cores; the LeRobot
run counts opening the dataset (metadata, Parquet) and every wait for a decode, the preloaded run
only its steps (its frames were decoded before the clock started).

One torch thread by default: on 2 cores shared with other jobs, two threads made a step about 14x
slower (the OpenMP threads spin at each barrier while the other waits for a core: 3.1 CPU-s per
step against 0.23). ``--compare-threads 2`` measures this on the preloaded run, its steps
alternating between 1 and N threads.

Usage: .venv/bin/python benchmarks/pixels.py [--episodes 30] [--steps 20] [--s3]
       [--compare-threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ambient_core.data import ChunkSpec
from ambient_core.envs import bin_sorting_pixels as px
from ambient_core.policy import Normalizer
from ambient_core.sampler import NoiseFirstSampler
from ambient_core.schedule import ddpm_sigmas
from ambient_core.train import TrainConfig, make_state, train_step
from ambient_core.vision import VisionDiffusionPolicy, VisionPolicySpec
from ambient_core.vision_data import ArrayFrameSource, ImageChunkDataset
from ambient_platform.lerobot import LeRobotDataset, write_lerobot
from ambient_platform.storage import StorageRoot

CAM = px.IMAGE_KEY
CHUNK = ChunkSpec(horizon=16, n_obs_steps=2, n_action_steps=8)


def _policy_spec(args: argparse.Namespace) -> VisionPolicySpec:
    return VisionPolicySpec(
        obs_dims={px.PROPRIO_KEY: 3},
        action_dim=3,
        horizon=CHUNK.horizon,
        n_obs_steps=CHUNK.n_obs_steps,
        n_action_steps=CHUNK.n_action_steps,
        network_kwargs={"down_dims": [64, 128, 256], "diffusion_step_embed_dim": 64},
        image_keys=[CAM],
        image_shape=[3, args.size, args.size],
        crop_shape=[args.crop, args.crop],
        backbone_width=args.width,
    )


class _Run:
    """One training run (model, optimiser, sampler) over one dataset; steps timed one by one."""

    def __init__(self, data: ImageChunkDataset, args: argparse.Namespace) -> None:
        torch.manual_seed(0)
        policy = VisionDiffusionPolicy(_policy_spec(args), Normalizer.fit(data.features))
        sampler = NoiseFirstSampler(len(data), sigmas=ddpm_sigmas(100), seed=0)
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch, warmup_steps=10, ema_power=None)
        self.data, self.state = data, make_state(policy, sampler, cfg)
        self.sig = torch.from_numpy(sampler.sigmas).float()
        self.seconds, self.loss = 0.0, float("nan")
        policy.train()

    def step(self) -> float:
        """One step; returns its wall seconds (also added to the run's total)."""
        t0 = time.perf_counter()
        self.loss = float(train_step(self.state, self.data, self.sig)[0])
        took = time.perf_counter() - t0
        self.seconds += took
        return took

    def report(self, steps: int, setup_s: float = 0.0) -> dict[str, Any]:
        total = self.seconds + setup_s
        stats = self.data.cache.stats
        return {
            "setup_s": round(setup_s, 2),
            "seconds": round(total, 2),
            "steps_per_s": round(steps / total, 4),
            "final_loss": round(self.loss, 4),
            "decoded_frames": stats.decoded_frames,
            "decode_s": round(stats.decode_s, 2),
            "waits": stats.waits,
            "wait_s": round(stats.wait_s, 2),
        }


def _compare_threads(run: _Run, threads: int, steps: int) -> dict[str, Any]:
    """Steps/s and CPU-s per step at 1 vs ``threads`` torch threads, alternating step by step
    (the order flips every pair) so both see the same load."""
    wall: dict[int, float] = {1: 0.0, threads: 0.0}
    cpu: dict[int, float] = {1: 0.0, threads: 0.0}
    for i in range(steps):
        for n in (1, threads) if i % 2 == 0 else (threads, 1):
            torch.set_num_threads(n)
            c0 = time.process_time()
            wall[n] += run.step()
            cpu[n] += time.process_time() - c0
    torch.set_num_threads(1)
    return {
        "steps_each": steps,
        **{
            f"threads_{n}": {
                "steps_per_s": round(steps / wall[n], 4),
                "cpu_s_per_step": round(cpu[n] / steps, 3),
            }
            for n in wall
        },
        "speedup_1_thread": round(wall[threads] / wall[1], 2),
    }


def _decode_all(ds: LeRobotDataset) -> tuple[dict[int, np.ndarray], float]:
    t0 = time.perf_counter()
    frames = {ep: cams[CAM] for ep, cams in ds.iter_episodes([CAM])}
    return frames, time.perf_counter() - t0


def _moto() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    with contextlib.redirect_stdout(sys.stderr):  # moto announces itself on stdout
        server.start()
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    return server, "s3://bench/pixels"


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        server, uri = _moto() if args.s3 else (None, str(Path(tmp) / "pixels"))
        try:
            return _run(args, uri)
        finally:
            if server is not None:
                server.stop()


def _run(args: argparse.Namespace, uri: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    n_corrupt = args.episodes // 3
    clean, corrupt = px.generate(args.episodes - n_corrupt, n_corrupt, seed=0, size=args.size)
    render_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    info = write_lerobot(
        StorageRoot(uri), clean + corrupt, fps=10, tasks="sort", episodes_per_file=20
    )
    write_s = time.perf_counter() - t0
    del clean, corrupt

    ds = LeRobotDataset(uri)
    frames_by_ep, decode_s = _decode_all(ds)
    n_frames = sum(len(v) for v in frames_by_ep.values())
    low = ds.read_frames([px.PROPRIO_KEY, px.ACTION_KEY])

    # preloaded: every frame already in memory, the cache filled before any clock starts
    pre = ImageChunkDataset(
        [low], CHUNK, [px.PROPRIO_KEY], [CAM], [ArrayFrameSource({CAM: frames_by_ep})]
    ).start()
    pre.cache.wait()
    warm = _Run(pre, args)
    for _ in range(2):
        warm.step()  # torch warm-up, not counted
    preloaded = _Run(pre, args)

    # from LeRobot: open in place and decode in the background; setup (metadata, Parquet) counts
    t_open = time.perf_counter()
    ds2 = LeRobotDataset(uri)
    low2 = ds2.read_frames([px.PROPRIO_KEY, px.ACTION_KEY])
    streamed = ImageChunkDataset([low2], CHUNK, [px.PROPRIO_KEY], [CAM], [ds2]).start()
    lerobot = _Run(streamed, args)
    setup_s = time.perf_counter() - t_open
    # Steps alternate between the two runs so both see the same machine load (the 2 cores are
    # shared); both samplers are seeded alike, so both runs draw the same chunks.
    for _ in range(args.steps):
        lerobot.step()
        preloaded.step()
    streamed.cache.close()
    from_lerobot = lerobot.report(args.steps, setup_s)
    pre_report = preloaded.report(args.steps)
    extra = {}
    if args.compare_threads > 1:
        extra["threads_ab"] = _compare_threads(warm, args.compare_threads, args.compare_steps)
    return {
        "benchmark": "pixels",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "torch_threads": args.threads,
        "storage": "s3 (moto)" if args.s3 else "local",
        "dataset": {
            "episodes": info["total_episodes"],
            "frames": info["total_frames"],
            "image": [args.size, args.size, 3],
            "render_s": round(render_s, 2),
            "write_s": round(write_s, 2),
        },
        "decode": {
            "frames": n_frames,
            "seconds": round(decode_s, 2),
            "frames_per_s": round(n_frames / decode_s, 1),
        },
        "model": {
            "backbone_width": args.width,
            "crop": args.crop,
            "batch": args.batch,
            "images_per_step": args.batch * CHUNK.n_obs_steps,
        },
        "preloaded": pre_report,
        "lerobot": from_lerobot,
        "ratio": round(from_lerobot["steps_per_s"] / pre_report["steps_per_s"], 3),
        "goal_ratio": 0.8,
        "load_avg_1min": round(os.getloadavg()[0], 1),
        **extra,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--crop", type=int, default=84)
    p.add_argument("--width", type=int, default=16, help="ResNet-18 first-stage channels (64)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: see above)")
    p.add_argument("--compare-threads", type=int, default=0, help="also time 1 vs N threads")
    p.add_argument("--compare-steps", type=int, default=6, help="steps per side of that")
    p.add_argument("--s3", action="store_true", help="put the dataset on a local moto S3 server")
    p.add_argument("--workdir", default=None)
    print(json.dumps(run(p.parse_args()), indent=2))


if __name__ == "__main__":
    main()
