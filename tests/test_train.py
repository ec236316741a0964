"""The training loop: a tiny model overfits, callbacks fire, checkpoints round-trip and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ambient_core.data import ChunkDataset, ChunkSpec, episodes_to_table, frames_from_table
from ambient_core.policy import DiffusionPolicy, Normalizer, PolicySpec
from ambient_core.sampler import Buffer, MixingRule, NoiseFirstSampler
from ambient_core.schedule import ddpm_sigmas
from ambient_core.train import (
    Callback,
    TrainConfig,
    TrainState,
    load_policy,
    make_state,
    restore_state,
    save_checkpoint,
    train,
)

SPEC = ChunkSpec(horizon=8, n_obs_steps=2, n_action_steps=4)
KEYS = ["observation.state", "observation.goal"]


def _episodes(n: int, jitter: float, seed: int) -> list[dict[str, np.ndarray]]:
    """Straight lines from the origin toward one of two goals; ``jitter`` corrupts the motion."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        goal = np.array([1.0, 1.0] if i % 2 else [1.0, -1.0], np.float32)
        t = np.linspace(0, 1, 12, dtype=np.float32)[:, None]
        pos = t * goal + jitter * rng.standard_normal((12, 2)).astype(np.float32)
        act = np.vstack([pos[1:], pos[-1:]])
        out.append(
            {"observation.state": pos, "observation.goal": np.tile(goal, (12, 1)), "action": act}
        )
    return out


def _setup(
    n_clean: int = 8, n_corrupt: int = 0, sigma_min: float = 0.0, **cfg: object
) -> tuple[TrainState, ChunkDataset]:
    frames = [
        frames_from_table(
            episodes_to_table(_episodes(n_clean, 0.0, 0), "clean"), [*KEYS, "action"]
        )
    ]
    if n_corrupt:
        frames.append(
            frames_from_table(
                episodes_to_table(_episodes(n_corrupt, 0.05, 1), "corrupt"), [*KEYS, "action"]
            )
        )
    data = ChunkDataset(frames, SPEC, KEYS)
    lo, hi = data.dataset_chunk_ranges[0]
    n_corr_chunks = len(data) - hi
    sampler = NoiseFirstSampler(
        hi - lo,
        np.full(n_corr_chunks, sigma_min),
        sigmas=ddpm_sigmas(),
        rule=MixingRule(Buffer(mult=1.2)),
        seed=0,
    )
    spec = PolicySpec(
        obs_dims={k: 2 for k in KEYS},
        action_dim=2,
        horizon=8,
        n_obs_steps=2,
        n_action_steps=4,
        prediction=str(cfg.pop("prediction", "eps")),  # type: ignore[arg-type]
        network="unet",
        network_kwargs={"down_dims": [32, 64], "diffusion_step_embed_dim": 32},
    )
    policy = DiffusionPolicy(spec, Normalizer.fit(data.features))
    config = TrainConfig(batch_size=64, lr=1e-3, warmup_steps=20, log_every=20, **cfg)  # type: ignore[arg-type]
    return make_state(policy, sampler, config), data


class Recorder(Callback):
    def __init__(self, stop_at_round: int | None = None) -> None:
        self.logs: list[tuple[int, dict[str, float]]] = []
        self.rounds: list[int] = []
        self.stop_at_round = stop_at_round

    def on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.logs.append((step, metrics))

    def on_round_end(self, state: TrainState) -> bool:
        self.rounds.append(state.step)
        return self.stop_at_round is not None and state.round >= self.stop_at_round


def test_tiny_model_overfits_and_ddim_samples_land_on_the_data() -> None:
    torch.manual_seed(0)
    state, data = _setup(steps=600)
    rec = Recorder()
    train(state, data, [rec])
    first, last = rec.logs[0][1]["loss"], rec.logs[-1][1]["loss"]
    assert last < 0.35 * first
    policy = state.eval_policy
    ids = np.arange(0, len(data), 3)
    obs, act = data.batch(ids)
    t_obs = {k: torch.from_numpy(v) for k, v in obs.items()}
    g = torch.Generator().manual_seed(0)
    pred = policy.predict_action(t_obs, "ddim", 10, g).numpy()
    want = act[:, 1:5]  # actions[T_o - 1 : T_o - 1 + T_a]
    err = np.abs(pred - want).mean()
    assert err < 0.08, err  # data span 1.0 per axis; random output would be ~0.5
    # The goal condition is used: mirrored goal gives mirrored motion.
    far = np.abs(want[:, -1, 1]) > 0.2
    assert far.sum() > 10
    agree = np.sign(pred[far, -1, 1]) == np.sign(want[far, -1, 1])
    assert agree.mean() >= 0.9  # an unconditioned model would agree half the time


def test_callbacks_rounds_and_early_stop() -> None:
    state, data = _setup(steps=60, rounds=3)
    rec = Recorder(stop_at_round=2)
    train(state, data, [rec])
    assert rec.rounds == [20, 40]
    assert state.step == 40
    m = rec.logs[-1][1]
    assert {"loss", "lr", "corrupt_share", "steps_per_s"} <= set(m)
    assert any(k.startswith("loss/s") for k in m)


@pytest.mark.parametrize("corrupt_loss", ["denoising", "ambient"])
@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_mixed_training_logs_corrupt_share_per_bucket(corrupt_loss: str, prediction: str) -> None:
    state, data = _setup(
        n_corrupt=8, sigma_min=0.3, steps=40, corrupt_loss=corrupt_loss, prediction=prediction
    )
    rec = Recorder()
    train(state, data, [rec])
    m = rec.logs[-1][1]
    assert m["corrupt_share/s0.0-0.1"] == 0.0  # corrupt never below 0.3 * 1.2
    assert m.get("corrupt_share/s0.9-1.0", 0.0) > 0.2
    assert np.isfinite(m["loss"])


def test_checkpoint_round_trip_and_resume_is_exact(tmp_path) -> None:
    a, data = _setup(steps=40, n_corrupt=4, sigma_min=0.2, corrupt_loss="ambient")
    train(a, data)
    a.config.steps = 40  # resume target below
    path = save_checkpoint(tmp_path / "ckpt", a, {"note": "x"})
    loaded = load_policy(path)
    for (k, v), (k2, v2) in zip(
        a.eval_policy.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)
    # Resume: 20 + 20 steps from a checkpoint equals 40 straight steps.
    torch.manual_seed(0)
    ref, data = _setup(steps=40, n_corrupt=4, sigma_min=0.2, corrupt_loss="ambient")
    train(ref, data)
    half, _ = _setup(steps=20, n_corrupt=4, sigma_min=0.2, corrupt_loss="ambient")
    train(half, data)
    save_checkpoint(tmp_path / "half", half, {})
    res, _ = _setup(steps=40, n_corrupt=4, sigma_min=0.2, corrupt_loss="ambient")
    restore_state(tmp_path / "half", res)
    assert res.step == 20
    res.scheduler.lr_lambdas[0] = ref.scheduler.lr_lambdas[0]
    train(res, data)
    assert res.step == 40
    # Same data stream after resume (sampler RNG restored).
    assert res.sampler.rng.random() == ref.sampler.rng.random()


def test_overwriting_a_checkpoint_is_atomic(tmp_path) -> None:
    state, data = _setup(steps=5)
    train(state, data)
    save_checkpoint(tmp_path / "c", state, {"v": 1})
    save_checkpoint(tmp_path / "c", state, {"v": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert load_policy(tmp_path / "c", use_ema=False) is not None


def test_device_auto_resolves_and_missing_cuda_is_a_config_error() -> None:
    from ambient_core.device import resolve_device
    from ambient_core.errors import ConfigError

    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert TrainConfig(device="auto").device == want
    assert str(resolve_device("AUTO")) == want
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device: 'cuda' asks for CUDA"):
            TrainConfig(device="cuda")
    with pytest.raises(ConfigError, match="train.device: 'gpu0' is not a torch device"):
        resolve_device("gpu0")


def test_nan_loss_names_its_step_before_any_evaluation() -> None:
    state, data = _setup(steps=40, rounds=2)
    model = state.policy.model
    calls = {"n": 0}

    def poisoned(*args: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        out = type(model).forward(model, *args)
        return out * float("nan") if calls["n"] == 7 else out

    model.forward = poisoned  # type: ignore[method-assign]
    rec = Recorder()
    with pytest.raises(FloatingPointError, match="at step 7"):
        train(state, data, [rec])
    assert rec.rounds == []  # the round at step 20 never saw the NaN weights


def test_per_step_losses_stay_on_the_device_until_a_log_window_closes() -> None:
    state, data = _setup(steps=10)
    state.config.log_every = 5
    rec = Recorder()
    train(state, data, [rec])
    assert [s for s, _ in rec.logs] == [5, 10]
    assert all(m["steps_per_s"] > 0 and np.isfinite(m["loss"]) for _, m in rec.logs)
