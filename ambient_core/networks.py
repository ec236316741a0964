"""Denoiser networks: diffusion_policy's ConditionalUnet1D and a small MLP.

Both map (noisy action chunk (B, H, Da), level k (B,), global condition (B, C)) to a tensor shaped
like the chunk. The U-Net follows real-stanford/diffusion_policy: Conv1d-GroupNorm-Mish blocks,
FiLM scale + bias from (sinusoidal level embedding, global condition), a down path with skips,
two mid blocks and an up path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn


class SinusoidalPosEmb(nn.Module):
    """Transformer-style embedding of a scalar (the diffusion level k)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(
            torch.arange(half, device=x.device, dtype=torch.float32)
            * -(math.log(10000) / (half - 1))
        )
        arg = x.float()[:, None] * freqs[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, c_out),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM (per-channel scale and bias) after the first, plus a residual."""

    def __init__(
        self, c_in: int, c_out: int, cond_dim: int, kernel_size: int = 3, n_groups: int = 8
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                Conv1dBlock(c_in, c_out, kernel_size, n_groups),
                Conv1dBlock(c_out, c_out, kernel_size, n_groups),
            ]
        )
        self.out_channels = c_out
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.residual_conv = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        out = self.blocks[0](x)
        scale, bias = self.cond_encoder(cond).unsqueeze(-1).chunk(2, dim=1)
        out = scale * out + bias
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


def check_unet_horizon(horizon: int, levels: int) -> None:
    """The down path halves the length levels-1 times and the up path must undo it exactly
    (the one copy of this rule: the run-config schema calls it too)."""
    factor = 2 ** (levels - 1)
    if horizon % factor:
        raise ValueError(
            f"horizon {horizon} must be divisible by 2^(len(down_dims)-1) = {factor} "
            f"for a U-Net with {levels} levels; use a horizon like "
            f"{max(factor, horizon // factor * factor)} or fewer down_dims"
        )


class ConditionalUnet1D(nn.Module):
    """1-D temporal U-Net over action chunks with FiLM conditioning (diffusion_policy)."""

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int,
        diffusion_step_embed_dim: int = 64,
        down_dims: Sequence[int] = (64, 128, 256),
        kernel_size: int = 3,
        n_groups: int = 8,
    ) -> None:
        super().__init__()
        dims = [input_dim, *down_dims]
        for d in down_dims:
            if d % n_groups:
                raise ValueError(f"every down_dim must be divisible by n_groups={n_groups}: {d}")
        self.levels = len(down_dims)
        dsed = diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed), nn.Linear(dsed, dsed * 4), nn.Mish(), nn.Linear(dsed * 4, dsed)
        )
        cond_dim = dsed + global_cond_dim

        def res(a: int, b: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(a, b, cond_dim, kernel_size, n_groups)

        in_out = list(zip(dims[:-1], dims[1:], strict=True))
        self.down_modules = nn.ModuleList()
        for i, (a, b) in enumerate(in_out):
            last = i == len(in_out) - 1
            self.down_modules.append(
                nn.ModuleList(
                    [res(a, b), res(b, b), nn.Conv1d(b, b, 3, 2, 1) if not last else nn.Identity()]
                )
            )
        mid = dims[-1]
        self.mid_modules = nn.ModuleList([res(mid, mid), res(mid, mid)])
        self.up_modules = nn.ModuleList()
        for a, b in reversed(in_out[1:]):  # every up level doubles the length back
            self.up_modules.append(
                nn.ModuleList([res(b * 2, a), res(a, a), nn.ConvTranspose1d(a, a, 4, 2, 1)])
            )
        self.final_conv = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], input_dim, 1),
        )

    def check_horizon(self, horizon: int) -> None:
        check_unet_horizon(horizon, self.levels)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor
    ) -> torch.Tensor:
        """sample (B, H, Da), timestep (B,), global_cond (B, C) -> (B, H, Da)."""
        self.check_horizon(sample.shape[1])
        x = sample.transpose(1, 2)
        cond = torch.cat([self.diffusion_step_encoder(timestep), global_cond], dim=-1)
        skips = []
        for level in self.down_modules:
            r1, r2, down = cast(nn.ModuleList, level)
            x = r2(r1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for m in self.mid_modules:
            x = m(x, cond)
        for level in self.up_modules:
            r1, r2, up = cast(nn.ModuleList, level)
            x = torch.cat([x, skips.pop()], dim=1)
            x = up(r2(r1(x, cond), cond))
        return self.final_conv(x).transpose(1, 2)


class MLPDenoiser(nn.Module):
    """Flattened-chunk MLP with the same interface; cheap, for tests and ablations."""

    def __init__(
        self,
        input_dim: int,
        horizon: int,
        global_cond_dim: int,
        hidden: int = 256,
        depth: int = 3,
        diffusion_step_embed_dim: int = 32,
    ) -> None:
        super().__init__()
        self.horizon, self.input_dim = horizon, input_dim
        self.embed = SinusoidalPosEmb(diffusion_step_embed_dim)
        layers: list[nn.Module] = []
        width = input_dim * horizon + diffusion_step_embed_dim + global_cond_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.Mish()]
            width = hidden
        layers.append(nn.Linear(width, input_dim * horizon))
        self.net = nn.Sequential(*layers)

    def check_horizon(self, horizon: int) -> None:
        if horizon != self.horizon:
            raise ValueError(f"MLPDenoiser was built for horizon {self.horizon}, got {horizon}")

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, global_cond: torch.Tensor
    ) -> torch.Tensor:
        self.check_horizon(sample.shape[1])
        h = torch.cat([sample.flatten(1), self.embed(timestep), global_cond], dim=-1)
        return self.net(h).view(sample.shape)


def build_network(
    kind: str, action_dim: int, horizon: int, global_cond_dim: int, **kwargs: object
) -> nn.Module:
    """Construct a denoiser by name ("unet" or "mlp") and validate the horizon up front."""
    if kind == "unet":
        net: nn.Module = ConditionalUnet1D(action_dim, global_cond_dim, **kwargs)  # type: ignore[arg-type]
    elif kind == "mlp":
        net = MLPDenoiser(action_dim, horizon, global_cond_dim, **kwargs)  # type: ignore[arg-type]
    else:
        raise ValueError(f"network kind must be 'unet' or 'mlp', got {kind!r}")
    net.check_horizon(horizon)  # type: ignore[operator]
    return net
