"""Diffusion Policy's image encoder and the image-conditioned policy built on it.

The encoder follows diffusion_policy / LeRobot (``DiffusionRgbEncoder``): a ResNet-18 whose
BatchNorms are GroupNorms (``num_groups = channels // 16``; BatchNorm statistics break under EMA
and small batches), trained from scratch, then a spatial softmax that turns the last feature map
into ``num_keypoints`` expected (x, y) image coordinates, then Linear + ReLU. Images are cropped
at random per sample while training (augmentation) and at the centre in eval mode, so the EMA copy
used for rollouts sees the same field of view every time.

ResNet-18 is written in plain torch: torchvision 0.28 resolves against the pinned CPU torch but
fails to import (``torchvision::nms does not exist``), and no weights can be downloaded anyway.

``VisionDiffusionPolicy`` is a ``DiffusionPolicy`` whose global condition is the flattened
low-dim observation history plus the image features of every camera and observation step. The
encoder lives inside ``policy.model`` next to the U-Net, so the existing training loop, optimiser,
EMA and checkpoints train and save it without knowing about images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ambient_core.policy import DiffusionPolicy, Normalizer, PolicySpec

GN_GROUP_WIDTH = 16  # diffusion_policy's replace_bn_with_gn: num_groups = num_channels // 16


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with diffusion_policy's group count (at least one group)."""
    return nn.GroupNorm(max(1, channels // GN_GROUP_WIDTH), channels)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with GroupNorm and a projected shortcut on stride."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = group_norm(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), group_norm(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18GN(nn.Module):
    """ResNet-18 trunk (no pooling head): (N, 3, H, W) -> (N, 8 * width, H / 32, W / 32).

    ``width`` is the first stage's channel count (64 in ResNet-18); smaller widths keep the exact
    topology but train faster on CPU.
    """

    def __init__(self, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"backbone width must be >= 1, got {width}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
            group_norm(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages: list[nn.Module] = []
        c_in = width
        for i, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out)))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.out_channels = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class SpatialSoftmax(nn.Module):
    """Keypoints from a feature map: a 1x1 conv to K maps, softmax over pixels, expected (x, y).

    Coordinates lie in [-1, 1]; the output is (N, 2K) (Levine et al.; robomimic; LeRobot).
    """

    grid: torch.Tensor

    def __init__(self, channels: int, height: int, width: int, num_keypoints: int = 32) -> None:
        super().__init__()
        self.keypoints = nn.Conv2d(channels, num_keypoints, 1)
        self.num_keypoints = num_keypoints
        ys, xs = torch.meshgrid(
            torch.linspace(-1.0, 1.0, height), torch.linspace(-1.0, 1.0, width), indexing="ij"
        )
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.keypoints(x).flatten(2)  # (N, K, H*W)
        attention = torch.softmax(maps, dim=-1)
        return (attention @ self.grid).flatten(1)  # (N, 2K)


def center_crop(images: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """Crop (N, C, H, W) to (N, C, h, w) around the centre."""
    h, w = crop
    top = (images.shape[-2] - h) // 2
    left = (images.shape[-1] - w) // 2
    return images[..., top : top + h, left : left + w]


def random_crop(
    images: torch.Tensor, crop: tuple[int, int], generator: torch.Generator | None = None
) -> torch.Tensor:
    """An independent random (h, w) window per image (diffusion_policy's CropRandomizer).

    The windows are gathered from an ``unfold`` view, one (C, h, w) block per image: several
    times cheaper than indexing every pixel, and it works on uint8, so callers crop before
    converting to float (4x fewer bytes to convert).
    """
    n, _, height, width = images.shape
    h, w = crop
    top = torch.randint(0, height - h + 1, (n,), generator=generator, device=images.device)
    left = torch.randint(0, width - w + 1, (n,), generator=generator, device=images.device)
    windows = images.unfold(2, h, 1).unfold(3, w, 1)  # (N, C, H - h + 1, W - w + 1, h, w)
    return windows[torch.arange(n, device=images.device), :, top, left]


class RgbEncoder(nn.Module):
    """One camera: [0, 255] images -> crop -> ResNet-18 (GroupNorm) -> keypoints -> features."""

    def __init__(
        self,
        image_shape: Sequence[int],
        crop_shape: Sequence[int] | None = (84, 84),
        num_keypoints: int = 32,
        width: int = 64,
    ) -> None:
        super().__init__()
        c, height, wid = (int(v) for v in image_shape)
        self.crop: tuple[int, int] | None = None
        if crop_shape is not None:
            ch, cw = (int(v) for v in crop_shape)
            if not (0 < ch <= height and 0 < cw <= wid):
                raise ValueError(f"crop {crop_shape} does not fit images of shape {image_shape}")
            self.crop = (ch, cw)
        self.backbone = ResNet18GN(width, in_channels=c)
        in_h, in_w = self.crop or (height, wid)
        with torch.no_grad():
            fh, fw = self.backbone(torch.zeros(1, c, in_h, in_w)).shape[-2:]
        if fh < 2 or fw < 2:
            raise ValueError(
                f"images of {in_h}x{in_w} pixels (after cropping) leave a {fh}x{fw} feature map: "
                "spatial-softmax keypoints need at least 2x2, i.e. inputs of 33 pixels or more"
            )
        self.pool = SpatialSoftmax(self.backbone.out_channels, fh, fw, num_keypoints)
        self.feature_dim = 2 * num_keypoints
        self.out = nn.Linear(2 * num_keypoints, self.feature_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [0, 255] (uint8 or float) -> (N, feature_dim)."""
        x = images
        if self.crop is not None:  # crop first: uint8 windows are 4x cheaper to move than float
            x = random_crop(x, self.crop) if self.training else center_crop(x, self.crop)
        # channels_last on the CPU: oneDNN's convolutions and GroupNorm run NHWC natively (about
        # 15% of the encoder's CPU time); elsewhere the layout is left to the backend.
        fmt = torch.channels_last if x.device.type == "cpu" else torch.contiguous_format
        x = x.to(dtype=torch.float32, memory_format=fmt, copy=True)
        x = x.mul_(2.0 / 255.0).sub_(1.0)  # [-1, 1]; fixed, so no image statistics needed
        return torch.relu(self.out(self.pool(self.backbone(x))))


def _module_name(key: str) -> str:
    return key.replace(".", "__")


class MultiCameraEncoder(nn.Module):
    """Features of several cameras concatenated in ``image_keys`` order.

    ``shared=True`` runs one encoder over every camera (fewer weights, as LeRobot's
    ``use_separate_rgb_encoder_per_camera=False``); otherwise each camera has its own.
    """

    def __init__(
        self,
        image_keys: Sequence[str],
        image_shape: Sequence[int],
        crop_shape: Sequence[int] | None = (84, 84),
        num_keypoints: int = 32,
        width: int = 64,
        shared: bool = False,
    ) -> None:
        super().__init__()
        if not image_keys:
            raise ValueError("a vision encoder needs at least one image key")
        self.image_keys = list(image_keys)
        self.shared = shared
        names = [_module_name(k) for k in self.image_keys] if not shared else ["shared"]
        self.encoders = nn.ModuleDict(
            {n: RgbEncoder(image_shape, crop_shape, num_keypoints, width) for n in names}
        )
        self.feature_dim = len(self.image_keys) * 2 * num_keypoints

    def forward(self, images: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``images[key]`` (N, C, H, W) per camera -> (N, n_cameras * 2K)."""
        if self.shared:
            enc = self.encoders["shared"]
            n = images[self.image_keys[0]].shape[0]
            stacked = torch.cat([images[k] for k in self.image_keys], dim=0)
            feats = enc(stacked).reshape(len(self.image_keys), n, -1)
            return feats.permute(1, 0, 2).reshape(n, -1)
        return torch.cat(
            [self.encoders[_module_name(k)](images[k]) for k in self.image_keys], dim=-1
        )


@dataclass
class VisionPolicySpec(PolicySpec):
    """A ``PolicySpec`` plus cameras: ``image_keys`` images of shape ``image_shape`` (C, H, W).

    ``obs_dims`` keeps only the low-dim keys (normalised min-max); images are mapped to [-1, 1]
    by the encoder. Plain JSON like the base spec, so checkpoints rebuild it.
    """

    image_keys: list[str] = field(default_factory=list)
    image_shape: list[int] = field(default_factory=lambda: [3, 96, 96])
    crop_shape: list[int] | None = field(default_factory=lambda: [84, 84])
    num_keypoints: int = 32
    backbone_width: int = 64
    shared_encoder: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.image_keys:
            raise ValueError("VisionPolicySpec needs at least one image key")
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {self.image_shape}")
        overlap = set(self.image_keys) & set(self.obs_dims)
        if overlap:
            raise ValueError(f"keys {sorted(overlap)} are both image and low-dim observations")

    @property
    def image_feature_dim(self) -> int:
        """Features per observation step, all cameras together."""
        return len(self.image_keys) * 2 * self.num_keypoints

    @property
    def global_cond_dim(self) -> int:
        return self.n_obs_steps * (sum(self.obs_dims.values()) + self.image_feature_dim)


class VisionDenoiser(nn.Module):
    """The U-Net and the image encoder under one module, so ``policy.model`` trains both."""

    def __init__(self, net: nn.Module, encoder: MultiCameraEncoder) -> None:
        super().__init__()
        self.net = net
        self.encoder = encoder

    def check_horizon(self, horizon: int) -> None:
        self.net.check_horizon(horizon)  # type: ignore[operator]

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> Any:
        return self.net(sample, timestep, cond)


class VisionDiffusionPolicy(DiffusionPolicy):
    """Image-conditioned diffusion policy: same U-Net, sampler and normaliser as the low-dim one.

    Observations: low-dim keys (B, T_o, D) in env units, image keys (B, T_o, C, H, W) in
    [0, 255]. The global condition is [low-dim history, image features of each step].
    """

    spec: VisionPolicySpec

    def __init__(self, spec: VisionPolicySpec, normalizer: Normalizer | None = None) -> None:
        super().__init__(spec, normalizer)
        encoder = MultiCameraEncoder(
            spec.image_keys,
            spec.image_shape,
            spec.crop_shape,
            spec.num_keypoints,
            spec.backbone_width,
            spec.shared_encoder,
        )
        self.model = VisionDenoiser(self.model, encoder)

    @property
    def encoder(self) -> MultiCameraEncoder:
        enc = self.model.encoder
        assert isinstance(enc, MultiCameraEncoder)
        return enc

    def normalize_obs(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec = self.spec
        missing = [k for k in (*spec.obs_dims, *spec.image_keys) if k not in obs]
        if missing:
            raise KeyError(
                f"observation is missing keys {missing}; expected "
                f"{[*spec.obs_dims, *spec.image_keys]}"
            )
        out = {k: self.normalizer.normalize(k, obs[k].float()) for k in spec.obs_dims}
        out.update({k: obs[k] for k in spec.image_keys})
        return out

    def global_cond(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Low-dim history (B, T_o * sum D) and image features (B, T_o * n_cams * 2K), joined."""
        spec = self.spec
        to = spec.n_obs_steps
        first = obs[spec.image_keys[0]]
        b = first.shape[0]
        parts = [obs[k][:, :to].reshape(b, -1) for k in spec.obs_dims]
        images = {k: obs[k][:, :to].reshape(b * to, *obs[k].shape[2:]) for k in spec.image_keys}
        parts.append(self.encoder(images).reshape(b, -1))
        return torch.cat(parts, dim=-1)


def build_policy(spec: dict[str, Any], normalizer: Normalizer | None = None) -> DiffusionPolicy:
    """Rebuild a low-dim or vision policy from its JSON spec (a checkpoint's ``policy.json``)."""
    if spec.get("image_keys"):
        return VisionDiffusionPolicy(VisionPolicySpec(**spec), normalizer)
    return DiffusionPolicy(PolicySpec(**spec), normalizer)
