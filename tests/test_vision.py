"""Image encoder, vision policy, pixel rendering of bin sorting and the image chunk dataset."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ambient_core.vision import (
    MultiCameraEncoder,
    ResNet18GN,
    RgbEncoder,
    SpatialSoftmax,
    VisionDiffusionPolicy,
    VisionPolicySpec,
    build_policy,
    center_crop,
    random_crop,
)

SMALL: dict[str, Any] = {"num_keypoints": 8, "width": 8}


def test_resnet18_topology_and_groupnorm_everywhere() -> None:
    net = ResNet18GN(width=64)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    # ResNet-18: stem conv + 8 blocks x 2 convs + 3 projection shortcuts = 20 convolutions
    assert len(convs) == 20
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 20
    assert all(m.num_groups == m.num_channels // 16 for m in norms)
    out = net(torch.zeros(2, 3, 84, 84))
    assert out.shape == (2, 512, 3, 3)
    n_params = sum(p.numel() for p in net.parameters())
    assert 11.0e6 < n_params < 11.3e6  # ResNet-18 without its fc head: ~11.2M


def test_spatial_softmax_finds_the_bright_spot() -> None:
    ss = SpatialSoftmax(1, 5, 5, num_keypoints=1)
    with torch.no_grad():
        ss.keypoints.weight.fill_(50.0)
        assert ss.keypoints.bias is not None
        ss.keypoints.bias.zero_()
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 4, 0] = 1.0  # bottom-left pixel -> x = -1, y = +1 (rows grow downwards)
    xy = ss(x)
    assert xy.shape == (1, 2)
    assert torch.allclose(xy, torch.tensor([[-1.0, 1.0]]), atol=1e-3)


def test_crops() -> None:
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    c = center_crop(img, (4, 6))
    assert c.shape == (2, 3, 4, 6)
    assert torch.equal(c, img[..., 2:6, 1:7])
    g = torch.Generator().manual_seed(0)
    crops = random_crop(img.repeat(16, 1, 1, 1), (4, 4), generator=g)
    assert crops.shape == (32, 3, 4, 4)
    # each crop is a contiguous window of its own image, and windows differ across the batch
    corners = {(int(c[0, 0, 0]) % 64 // 8, int(c[0, 0, 0]) % 8) for c in crops}
    assert len(corners) > 3
    for i, c in enumerate(crops):
        top, left = int(c[0, 0, 0]) % 64 // 8, int(c[0, 0, 0]) % 8
        assert torch.equal(c, img.repeat(16, 1, 1, 1)[i, :, top : top + 4, left : left + 4])


def _pixelwise_random_crop(
    images: torch.Tensor, crop: tuple[int, int], generator: torch.Generator
) -> torch.Tensor:
    """The reference: index every pixel of every window (same random draws as random_crop)."""
    n, c, height, width = images.shape
    h, w = crop
    top = torch.randint(0, height - h + 1, (n,), generator=generator)
    left = torch.randint(0, width - w + 1, (n,), generator=generator)
    rows = (top[:, None] + torch.arange(h))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w))[:, None, None, :]
    return images[
        torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols
    ]


def test_random_crop_matches_pixelwise_reference_on_uint8_and_float() -> None:
    imgs = torch.randint(0, 256, (12, 3, 20, 18), dtype=torch.uint8)
    for x in (imgs, imgs.float()):
        fast = random_crop(x, (15, 11), generator=torch.Generator().manual_seed(7))
        ref = _pixelwise_random_crop(x, (15, 11), torch.Generator().manual_seed(7))
        assert fast.dtype == x.dtype and fast.shape == (12, 3, 15, 11)
        assert torch.equal(fast, ref)


def test_encoder_crops_uint8_first_with_the_same_result() -> None:
    """Cropping before the [0, 255] -> [-1, 1] map (and channels_last on the CPU) changes only
    float rounding, in both modes; a float input is not modified in place."""
    torch.manual_seed(0)
    enc = RgbEncoder((3, 48, 48), (40, 40), **SMALL)
    x = torch.randint(0, 256, (5, 3, 48, 48), dtype=torch.uint8)

    def reference(images: torch.Tensor) -> torch.Tensor:
        scaled = images.float() * (2.0 / 255.0) - 1.0
        assert enc.crop is not None
        if enc.training:
            scaled = _pixelwise_random_crop(scaled, enc.crop, torch.default_generator)
        else:
            scaled = center_crop(scaled, enc.crop)
        return torch.relu(enc.out(enc.pool(enc.backbone(scaled))))

    for mode in (enc.eval, enc.train):
        mode()
        torch.manual_seed(3)
        want = reference(x)
        torch.manual_seed(3)
        assert torch.allclose(enc(x), want, atol=1e-5)
    xf = x.float()
    enc(xf).sum().backward()
    assert torch.equal(xf, x.float())


def test_encoder_crop_mode_follows_train_eval() -> None:
    torch.manual_seed(0)
    enc = RgbEncoder((3, 64, 64), (56, 56), **SMALL)
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    enc.eval()
    assert torch.equal(enc(x), enc(x))  # centre crop: deterministic
    enc.train()
    assert not torch.equal(enc(x), enc(x))  # random crop per call
    assert enc(x).shape == (4, 16)
    with pytest.raises(ValueError, match="does not fit"):
        RgbEncoder((3, 64, 64), (70, 24), **SMALL)
    with pytest.raises(ValueError, match="feature map"):
        RgbEncoder((3, 32, 32), (24, 24), **SMALL)


def test_multicamera_shared_and_separate() -> None:
    keys = ["observation.images.top", "observation.images.wrist"]
    sep = MultiCameraEncoder(keys, (3, 40, 40), (36, 36), **SMALL).eval()
    shared = MultiCameraEncoder(keys, (3, 40, 40), (36, 36), shared=True, **SMALL).eval()
    assert len(sep.encoders) == 2 and len(shared.encoders) == 1
    n_sep = sum(p.numel() for p in sep.parameters())
    n_shared = sum(p.numel() for p in shared.parameters())
    assert n_sep == 2 * n_shared
    imgs = {k: torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8) for k in keys}
    for enc in (sep, shared):
        assert enc(imgs).shape == (3, 32)
    # shared: camera order in the output follows image_keys, per sample
    one = shared.encoders["shared"]
    expected = torch.cat([one(imgs[keys[0]]), one(imgs[keys[1]])], dim=-1)
    assert torch.allclose(shared(imgs), expected, atol=1e-6)


def _spec(**kw: object) -> VisionPolicySpec:
    base: dict[str, object] = {
        "obs_dims": {"observation.state": 3},
        "action_dim": 3,
        "horizon": 8,
        "n_obs_steps": 2,
        "n_action_steps": 4,
        "network_kwargs": {"down_dims": [16, 32], "diffusion_step_embed_dim": 16},
        "image_keys": ["observation.images.top"],
        "image_shape": [3, 40, 40],
        "crop_shape": [36, 36],
        "num_keypoints": 8,
        "backbone_width": 8,
    }
    base.update(kw)
    return VisionPolicySpec(**base)  # type: ignore[arg-type]


def _obs(b: int = 2, to: int = 2) -> dict[str, torch.Tensor]:
    return {
        "observation.state": torch.rand(b, to, 3),
        "observation.images.top": torch.randint(0, 256, (b, to, 3, 40, 40), dtype=torch.uint8),
    }


def test_vision_policy_conditioning_and_gradients_reach_encoder() -> None:
    torch.manual_seed(0)
    spec = _spec()
    assert spec.global_cond_dim == 2 * (3 + 16)
    policy = VisionDiffusionPolicy(spec).train()
    cond = policy.global_cond(policy.normalize_obs(_obs()))
    assert cond.shape == (2, spec.global_cond_dim)
    x = torch.randn(2, 8, 3)
    out = policy(x, torch.tensor([3, 50]), cond)
    assert out.shape == x.shape
    ((out - x) ** 2).mean().backward()
    enc_params = list(policy.encoder.parameters())
    assert enc_params and all(p.grad is not None for p in enc_params)
    backbone = [p for n, p in policy.encoder.named_parameters() if ".backbone." in n]
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in backbone)
    # the encoder is part of policy.model, so the training loop's optimiser sees it
    model_ids = {id(p) for p in policy.model.parameters()}
    assert all(id(p) in model_ids for p in enc_params)


def test_vision_policy_predict_action_and_rebuild_from_json() -> None:
    torch.manual_seed(0)
    spec = _spec(shared_encoder=True)
    policy = VisionDiffusionPolicy(spec).eval()
    obs = _obs(b=3)
    obs_float = {k: v.float() for k, v in obs.items()}  # PolicyRunner passes float32 images
    g = torch.Generator().manual_seed(1)
    a = policy.predict_action(obs, num_inference_steps=4, generator=g)
    assert a.shape == (3, 4, 3)
    g = torch.Generator().manual_seed(1)
    b = policy.predict_action(obs_float, num_inference_steps=4, generator=g)
    assert torch.allclose(a, b)
    import json

    spec_json = json.loads(json.dumps(spec.to_dict()))
    rebuilt = build_policy(spec_json)
    assert isinstance(rebuilt, VisionDiffusionPolicy)
    rebuilt.load_state_dict(policy.state_dict())
    with pytest.raises(KeyError, match="observation.images.top"):
        policy.normalize_obs({"observation.state": obs["observation.state"]})


def test_vision_spec_validation() -> None:
    with pytest.raises(ValueError, match="at least one image key"):
        _spec(image_keys=[])
    with pytest.raises(ValueError, match="both image and low-dim"):
        _spec(image_keys=["observation.state"])


# ----------------------------------------------------------------------------- pixel rendering


def test_render_draws_blocks_bins_and_gripper() -> None:
    from ambient_core.envs import bin_sorting as bs
    from ambient_core.envs import bin_sorting_pixels as px

    state = bs.sample_initial_state(np.random.default_rng(0))
    frames = px.render(state[None], size=64)
    assert frames.shape == (1, 64, 64, 3) and frames.dtype == np.uint8

    def pixel(x: float, y: float) -> np.ndarray:
        col = int((x + 1) / 2 * 64)
        row = int((1 - y) / 2 * 64)
        return frames[0, row, col].astype(int)

    for k in range(2):
        x, y, color = state[3 + 5 * k : 6 + 5 * k]
        rgb = pixel(x, y)
        assert (rgb[0] > 150 and rgb[2] < 100) if color > 0 else (rgb[2] > 150 and rgb[0] < 100)
    cx, cy = bs.DEFAULT_CONFIG.bin_center(bs.LEFT)
    assert np.allclose(pixel(cx, cy), px.BIN_COLOR, atol=2)
    assert np.allclose(pixel(0.0, 0.0), px.BACKGROUND, atol=2)
    gx, gy = state[0], state[1]
    assert pixel(gx + 0.085, gy).max() < 180  # the open gripper's (thin, anti-aliased) ring


def test_fast_render_matches_full_canvas_reference() -> None:
    from ambient_core.envs import bin_sorting as bs
    from ambient_core.envs import bin_sorting_pixels as px

    clean, _ = bs.generate(1, 0, seed=3)
    states = clean[0][bs.STATE_KEY][::7]
    fast = px.render(states, size=48)
    ss = 2
    grid = px._pixel_centres(48, ss, bs.DEFAULT_CONFIG)
    for state, got in zip(states, fast, strict=True):
        full = px._background(48, ss, bs.DEFAULT_CONFIG)
        for shape in px._shapes(state, 2):
            px._paint(full, grid[0], grid[1], shape)
        ref = np.rint(full.reshape(48, ss, 48, ss, 3).mean(axis=(1, 3))).astype(np.uint8)
        assert np.array_equal(got, ref)


def test_pixel_episode_and_observation_adapter() -> None:
    from ambient_core.envs import bin_sorting as bs
    from ambient_core.envs import bin_sorting_pixels as px

    clean, corrupt = px.generate(1, 1, seed=0, size=48)
    ep = clean[0]
    n = len(ep[px.ACTION_KEY])
    assert ep[px.IMAGE_KEY].shape == (n, 48, 48, 3)
    assert ep[px.PROPRIO_KEY].shape == (n, 3) and ep[px.ENV_STATE_KEY].shape == (n, 13)
    seen: list[dict[str, np.ndarray]] = []

    class Recorder:
        n_obs_steps = 2

        def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            seen.append(obs)
            return np.tile(obs[px.PROPRIO_KEY][:, -1:, :], (1, 4, 1))  # stay in place

    metrics, roll = px.evaluate(Recorder(), n_episodes=3, seed=0, max_steps=8, size=48)
    assert metrics.n == 3 and metrics.motion == 0.0
    obs = seen[0]
    assert obs[px.IMAGE_KEY].shape == (3, 2, 3, 48, 48) and obs[px.IMAGE_KEY].dtype == np.uint8
    first = bs.BinSortingEnv().reset(3, 0)
    expected = px.render(first, size=48).transpose(0, 3, 1, 2)
    assert np.array_equal(obs[px.IMAGE_KEY][:, 0], expected)
    assert np.allclose(obs[px.PROPRIO_KEY][:, 0], first[:, :3])
