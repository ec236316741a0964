"""Networks, normaliser, EMA schedule, DDPM/DDIM inference shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ambient_core.networks import ConditionalUnet1D, MLPDenoiser, build_network
from ambient_core.policy import EMA, DiffusionPolicy, Normalizer, PolicyRunner, PolicySpec


def test_unet_shapes_and_film_conditioning() -> None:
    torch.manual_seed(0)
    net = ConditionalUnet1D(2, 6, diffusion_step_embed_dim=16, down_dims=(16, 32, 64))
    x = torch.randn(3, 16, 2)
    k = torch.tensor([0, 50, 99])
    c = torch.randn(3, 6)
    y = net(x, k, c)
    assert y.shape == x.shape
    assert not torch.allclose(y, net(x, k, c + 1.0))  # the condition reaches the output
    assert not torch.allclose(y, net(x, k + 1, c))  # so does the level


def test_unet_rejects_bad_horizon_with_a_clear_message() -> None:
    with pytest.raises(
        ValueError, match="horizon 10 must be divisible by 2\\^\\(len\\(down_dims\\)-1\\) = 4"
    ):
        build_network("unet", 2, 10, 4, down_dims=(16, 32, 64))
    with pytest.raises(ValueError, match="network kind"):
        build_network("transformer", 2, 16, 4)


def test_mlp_denoiser() -> None:
    net = MLPDenoiser(3, 8, 5, hidden=32, depth=2)
    assert net(torch.randn(4, 8, 3), torch.zeros(4), torch.randn(4, 5)).shape == (4, 8, 3)
    with pytest.raises(ValueError, match="horizon 8"):
        net(torch.randn(4, 16, 3), torch.zeros(4), torch.randn(4, 5))


def test_normalizer_limits_and_constant_dims() -> None:
    data = {"a": np.array([[0.0, 5.0, 2.0], [10.0, 5.0, 4.0]], dtype=np.float32)}
    n = Normalizer.fit(data)
    x = torch.from_numpy(data["a"])
    y = n.normalize("a", x)
    assert torch.allclose(y[:, 0], torch.tensor([-1.0, 1.0]))
    assert torch.allclose(y[:, 1], torch.zeros(2))  # constant dim centred, not blown up
    assert torch.allclose(n.unnormalize("a", y), x, atol=1e-5)
    state = n.state_dict()
    m = Normalizer({"a": 3})
    m.load_state_dict(state)
    assert torch.allclose(m.normalize("a", x), y)


def test_ema_follows_diffusion_policy_schedule() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, power=0.75)
    assert ema.decay(0) == 0.0 and ema.decay(1) == 0.0
    assert ema.decay(2) == pytest.approx(1 - 2**-0.75)
    assert ema.decay(10**9) == 0.9999
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # first update copies
    assert float(ema.averaged.weight) == 1.0
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    ema.update(model)  # decay(2) = 1 - 2^-0.75
    d = 1 - 2**-0.75
    assert float(ema.averaged.weight) == pytest.approx(3.0 * (1 - d) + 3.0 * d, abs=1e-6)


def _policy(prediction: str = "eps") -> DiffusionPolicy:
    spec = PolicySpec(
        obs_dims={"observation.state": 2},
        action_dim=2,
        horizon=8,
        n_obs_steps=2,
        n_action_steps=4,
        prediction=prediction,  # type: ignore[arg-type]
        network="unet",
        network_kwargs={"down_dims": [16, 32], "diffusion_step_embed_dim": 16},
    )
    return DiffusionPolicy(spec)


@pytest.mark.parametrize("method,steps", [("ddim", 10), ("ddpm", 100), ("ddpm", 10)])
@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_inference_shapes_and_clipping(method: str, steps: int, prediction: str) -> None:
    p = _policy(prediction).eval()
    obs = {"observation.state": torch.randn(5, 2, 2)}
    chunk = p.sample(p.global_cond(p.normalize_obs(obs)), method, steps)  # type: ignore[arg-type]
    assert chunk.shape == (5, 8, 2)
    assert torch.isfinite(chunk).all()
    acts = p.predict_action(obs, method, steps)  # type: ignore[arg-type]
    assert acts.shape == (5, 4, 2)


def test_runner_is_a_numpy_chunk_policy_and_validates_obs() -> None:
    runner = PolicyRunner(_policy(), num_inference_steps=5)
    out = runner({"observation.state": np.zeros((3, 2, 2), np.float32)})
    assert isinstance(out, np.ndarray) and out.shape == (3, 4, 2)
    assert runner.n_obs_steps == 2
    with pytest.raises(KeyError, match="observation.state"):
        runner({"observation.goal": np.zeros((3, 2, 2), np.float32)})


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="exceeds horizon"):
        PolicySpec(obs_dims={"s": 1}, action_dim=1, horizon=8, n_obs_steps=2, n_action_steps=8)
    with pytest.raises(ValueError, match="prediction"):
        PolicySpec(obs_dims={"s": 1}, action_dim=1, prediction="v")  # type: ignore[arg-type]
