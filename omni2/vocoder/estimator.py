"""The flow-matching vector field: Matcha-style causal 1-D UNet with transformer blocks.

One UNet level (CosyVoice2: channels [256]) so there is no real down/up-sampling: down ResBlock +
transformers + causal conv, 12 mid ResBlock+transformer stages, up ResBlock on [h, skip] +
transformers + causal conv, final causal block and a 1x1 projection. Every conv is causal and the
attention uses static chunk masks, so mel frame i depends only on inputs of frames in its own and
earlier chunks. Parameter names follow the official state dict (``decoder.estimator.*``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from omni2.vocoder.config import EstimatorConfig
from omni2.vocoder.conformer import chunk_mask


@dataclass
class FrozenPrefix:
    """What the estimator needs to know about frames [0, length) to compute later frames only.

    One per Euler step (the inputs differ per step). ``k``/``v``: per transformer block (execution
    order) the keys/values [B, H, length, d]; ``conv``: per causal conv the last ``kernel-1`` input
    frames [B, C, kernel-1]. Valid because every conv is causal and attention never looks past the
    end of a query's own chunk: frames of finished chunks never change.
    """

    length: int = 0
    k: list[torch.Tensor] = field(default_factory=list)
    v: list[torch.Tensor] = field(default_factory=list)
    conv: list[torch.Tensor] = field(default_factory=list)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v, *self.conv))


class IncrementalContext:
    """Threaded through one estimator forward: serves the frozen prefix, records the new frames."""

    def __init__(self, prefix: FrozenPrefix) -> None:
        self.prefix = prefix
        self.new_k: list[torch.Tensor] = []
        self.new_v: list[torch.Tensor] = []
        self.conv_in: list[torch.Tensor] = []
        self.conv_width: list[int] = []

    def conv_left(self, x: torch.Tensor, width: int) -> torch.Tensor:
        i = len(self.conv_in)
        self.conv_in.append(x)
        self.conv_width.append(width)
        if self.prefix.length == 0:
            return x.new_zeros(x.size(0), x.size(1), width)
        return self.prefix.conv[i]

    def kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = len(self.new_k)
        self.new_k.append(k)
        self.new_v.append(v)
        if self.prefix.length == 0:
            return k, v
        return torch.cat([self.prefix.k[i], k], dim=2), torch.cat([self.prefix.v[i], v], dim=2)

    def advance(self, frames: int) -> FrozenPrefix:
        """A new prefix that also freezes the first ``frames`` of the frames computed now."""
        old = self.prefix
        if frames <= 0:
            return old
        k = [self._join(old.k, i, t[:, :, :frames]) for i, t in enumerate(self.new_k)]
        v = [self._join(old.v, i, t[:, :, :frames]) for i, t in enumerate(self.new_v)]
        conv = []
        for i, t in enumerate(self.conv_in):
            width = self.conv_width[i]
            joined = t[:, :, :frames] if not old.length else torch.cat([old.conv[i], t[:, :, :frames]], dim=2)
            if joined.size(2) < width:
                joined = F.pad(joined, (width - joined.size(2), 0))
            conv.append(joined[:, :, joined.size(2) - width :].contiguous())
        return FrozenPrefix(old.length + frames, k, v, conv)

    @staticmethod
    def _join(old: list[torch.Tensor], i: int, new: torch.Tensor) -> torch.Tensor:
        return torch.cat([old[i], new], dim=2) if old else new.contiguous()


class CausalConv1d(nn.Conv1d):
    """Conv1d with (kernel-1) zeros on the left only (or the frozen prefix's last inputs)."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__(cin, cout, kernel)
        self.left = kernel - 1

    def forward(self, x: torch.Tensor, ctx: IncrementalContext | None = None) -> torch.Tensor:
        if ctx is None:
            return super().forward(F.pad(x, (self.left, 0)))
        return super().forward(torch.cat([ctx.conv_left(x, self.left), x], dim=2))


class _ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over channels of a [B, C, T] tensor (the official Transpose-LN-Transpose)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class CausalBlock(nn.Module):
    """CausalConv(k3) -> LayerNorm(C) -> Mish, masked in and out. ``block.{0,2}`` hold the weights."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.block = nn.Sequential(CausalConv1d(cin, cout, 3), _Identity(), _ChannelLayerNorm(cout), _Identity())

    def forward(self, x: torch.Tensor, mask: torch.Tensor, ctx: IncrementalContext | None = None) -> torch.Tensor:
        y = self.block[0](x * mask, ctx)
        y = F.mish(self.block[2](y))
        return y * mask


class ResBlock(nn.Module):
    """Matcha ResnetBlock1D with causal blocks: block1 + time bias -> block2, plus a 1x1 residual."""

    def __init__(self, cin: int, cout: int, time_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_dim, cout))
        self.block1 = CausalBlock(cin, cout)
        self.block2 = CausalBlock(cout, cout)
        self.res_conv = nn.Conv1d(cin, cout, 1)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, temb: torch.Tensor, ctx: IncrementalContext | None = None
    ) -> torch.Tensor:
        h = self.block1(x, mask, ctx)
        h = h + self.mlp(temb).unsqueeze(-1)
        h = self.block2(h, mask, ctx)
        return h + self.res_conv(x * mask)


class _Attention(nn.Module):
    """diffusers Attention as Matcha uses it: no q/k/v bias, out projection with bias."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None, ctx: IncrementalContext | None = None
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.to_q(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.to_k(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.to_v(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        if ctx is not None:
            k, v = ctx.kv(k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.to_out[0](out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class _GELUProj(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.ModuleList([_GELUProj(dim, dim * mult), _Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class TransformerBlock(nn.Module):
    """Matcha BasicTransformerBlock (layer_norm, self-attention only, exact-GELU FFN)."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = _Attention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = _FeedForward(dim)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None, ctx: IncrementalContext | None = None
    ) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), bias, ctx)
        return x + self.ff(self.norm3(x))


class _TimeMLP(nn.Module):
    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(cin, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Matcha SinusoidalPosEmb: [B] -> [B, dim] = (sin, cos) of scale*t*exp(-k ln(1e4)/(dim/2-1))."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
    arg = scale * t.unsqueeze(1) * freq.unsqueeze(0)
    return torch.cat((arg.sin(), arg.cos()), dim=-1)


def _stage(dim: int, cfg: EstimatorConfig) -> nn.ModuleList:
    return nn.ModuleList(TransformerBlock(dim, cfg.num_heads, cfg.attention_head_dim) for _ in range(cfg.n_blocks))


class CausalUNetEstimator(nn.Module):
    """v(x, mask, mu, t, spks, cond) -> [B, out, T]; input channels are cat(x, mu, spks, cond)."""

    def __init__(self, cfg: EstimatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels[0]
        time_dim = ch * 4
        self.time_mlp = _TimeMLP(cfg.in_channels, time_dim)
        self.down_blocks = nn.ModuleList(
            [nn.ModuleList([ResBlock(cfg.in_channels, ch, time_dim), _stage(ch, cfg), CausalConv1d(ch, ch, 3)])]
        )
        self.mid_blocks = nn.ModuleList(
            nn.ModuleList([ResBlock(ch, ch, time_dim), _stage(ch, cfg)]) for _ in range(cfg.num_mid_blocks)
        )
        self.up_blocks = nn.ModuleList(
            [nn.ModuleList([ResBlock(2 * ch, ch, time_dim), _stage(ch, cfg), CausalConv1d(ch, ch, 3)])]
        )
        self.final_block = CausalBlock(ch, ch)
        self.final_proj = nn.Conv1d(ch, cfg.out_channels, 1)

    @staticmethod
    def _run(
        blocks: nn.ModuleList, x: torch.Tensor, bias: torch.Tensor | None, ctx: IncrementalContext | None
    ) -> torch.Tensor:
        x = x.transpose(1, 2)
        for block in blocks:
            x = block(x, bias, ctx)
        return x.transpose(1, 2)

    def attention_bias(self, mask: torch.Tensor, chunk: int, offset: int = 0) -> torch.Tensor | None:
        """Additive [B,1,Tq,offset+Tq] bias: 0 where allowed, finfo.min elsewhere (official
        mask_to_bias), or None when every query may see every key. Rows are frames offset..,
        columns all frames. ``mask`` pads keys; with a frozen prefix (``offset`` > 0, batch 1, no
        padding) it is all ones by construction and not looked at.

        Built for the query rows only (Tq x T), never as the full T x T chunk mask: with a frozen
        prefix the queries usually lie in one chunk and need no bias at all.
        """
        tq = mask.size(-1)
        t = offset + tq
        if offset > 0 and (chunk <= 0 or (offset // chunk + 1) * chunk >= t):
            return None
        allowed = chunk_mask(t, chunk, mask.device, first_row=offset)[None]  # [1, Tq, T]
        if offset == 0:
            allowed = allowed & mask.bool()
        bias = (1.0 - allowed.to(mask.dtype)) * torch.finfo(mask.dtype).min
        return bias[:, None]

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        chunk: int,
        ctx: IncrementalContext | None = None,
    ) -> torch.Tensor:
        """With ``ctx`` the inputs are frames ctx.prefix.length.. only (earlier ones come from ctx)."""
        temb = self.time_mlp(timestep_embedding(t, self.cfg.in_channels).to(t.dtype))
        h = torch.cat([x, mu, spks[:, :, None].expand(-1, -1, x.size(-1)), cond], dim=1)
        bias = self.attention_bias(mask, chunk, ctx.prefix.length if ctx is not None else 0)

        resnet, stage, conv = self.down_blocks[0]
        h = resnet(h, mask, temb, ctx)
        skip = self._run(stage, h, bias, ctx)
        h = conv(skip * mask, ctx)
        for resnet, stage in self.mid_blocks:
            h = self._run(stage, resnet(h, mask, temb, ctx), bias, ctx)
        resnet, stage, conv = self.up_blocks[0]
        h = torch.cat([h[:, :, : skip.size(-1)], skip], dim=1)
        h = self._run(stage, resnet(h, mask, temb, ctx), bias, ctx)
        h = conv(h * mask, ctx)
        h = self.final_block(h, mask, ctx)
        return self.final_proj(h * mask) * mask
