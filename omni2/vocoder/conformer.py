"""CosyVoice2's UpsampleConformerEncoder (tokens at 25 Hz -> hidden frames at 50 Hz).

ESPnet-style conformer (no macaron, no conv module, pre-norm) with Transformer-XL relative
position attention, a 3-token pre-lookahead convolution, and a causal x2 upsampler between the
two layer stacks. Attention uses static chunk masks (own chunk + all earlier chunks), which is
what makes streaming possible: frames of a finished chunk never see later tokens except through
the pre-lookahead convolution. Parameter names follow the official state dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from omni2.vocoder.config import EncoderConfig


def chunk_mask(size: int, chunk: int, device: torch.device | None = None, first_row: int = 0) -> torch.Tensor:
    """Boolean [size - first_row, size]: row i (i = first_row..size-1) may see columns
    j < min((i // chunk + 1) * chunk, size); chunk 0 = all. Only the asked-for rows are built."""
    if chunk <= 0:
        return torch.ones(size - first_row, size, dtype=torch.bool, device=device)
    rows = torch.arange(first_row, size, device=device)
    limit = torch.clamp((rows // chunk + 1) * chunk, max=size)
    return torch.arange(size, device=device)[None, :] < limit[:, None]


_PE_CACHE: dict[int, torch.Tensor] = {}


def rel_pos_table(size: int, d_model: int) -> torch.Tensor:
    """ESPnet "new" relative positional table for offsets +(size-1) ... -(size-1): [1, 2*size-1, d].

    Values are computed per position exactly like EspnetRelPositionalEncoding (float32 products),
    so they do not depend on how large the official table happened to be.
    """
    table = _PE_CACHE.get(d_model)
    if table is None or table.size(1) < 2 * size - 1:
        n = max(size, 5000)
        position = torch.arange(0, n, dtype=torch.float32).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
        pos = torch.zeros(n, d_model)
        neg = torch.zeros(n, d_model)
        pos[:, 0::2] = torch.sin(position * div_term)
        pos[:, 1::2] = torch.cos(position * div_term)
        neg[:, 0::2] = torch.sin(-1 * position * div_term)
        neg[:, 1::2] = torch.cos(-1 * position * div_term)
        table = torch.cat([torch.flip(pos, [0]), neg[1:]], dim=0).unsqueeze(0)
        _PE_CACHE[d_model] = table
    centre = table.size(1) // 2
    return table[:, centre - size + 1 : centre + size]


class LinearEmbed(nn.Module):
    """LinearNoSubsampling: Linear -> LayerNorm(1e-5); the input (not the table) is scaled by sqrt(d)."""

    def __init__(self, idim: int, odim: int) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Linear(idim, odim), nn.LayerNorm(odim, eps=1e-5))
        self.xscale = math.sqrt(odim)
        self.odim = odim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.out(x) * self.xscale
        pos = rel_pos_table(x.size(1), self.odim).to(device=x.device, dtype=x.dtype)
        return x, pos


class RelPositionAttention(nn.Module):
    """Multi-head attention with Transformer-XL relative positions (pos_bias_u / pos_bias_v)."""

    def __init__(self, n_head: int, n_feat: int, key_bias: bool = True) -> None:
        super().__init__()
        self.h = n_head
        self.d_k = n_feat // n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat, bias=key_bias)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(self.h, self.d_k))

    @staticmethod
    def rel_shift(x: torch.Tensor) -> torch.Tensor:
        """[B,H,T,2T-1] -> [B,H,T,T] where entry (i, j) holds relative offset i - j."""
        b, h, t, w = x.shape
        padded = torch.cat([x.new_zeros(b, h, t, 1), x], dim=-1).view(b, h, w + 1, t)
        return padded[:, :, 1:].reshape(b, h, t, w)[:, :, :, : w // 2 + 1]

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos).view(pos.size(0), -1, self.h, self.d_k).transpose(1, 2)
        ac = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        bd = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))
        if ac.shape != bd.shape:
            bd = self.rel_shift(bd)
        scores = (ac + bd) / math.sqrt(self.d_k)
        blocked = ~mask[:, None, :, :]  # mask: [B, T, T] bool, True = may attend
        scores = scores.masked_fill(blocked, -float("inf"))
        attn = torch.softmax(scores, dim=-1).masked_fill(blocked, 0.0)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, self.h * self.d_k)
        return self.linear_out(out)


    def forward_cached(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None, start: int, chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows ``start..start+t`` of :meth:`forward` given the keys/values of rows ``0..start``.

        The relative term for (i, j) is looked up by offset i - j in the projected position table
        (what ``rel_shift`` does for a full square). Returns (output, new keys, new values).
        """
        b, t, _ = x.shape
        n = start + t
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k_new = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v_new = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        k = k_new if past is None else torch.cat([past[0], k_new], dim=2)
        v = v_new if past is None else torch.cat([past[1], v_new], dim=2)
        table = rel_pos_table(n, x.size(2)).to(device=x.device, dtype=x.dtype)[:, : 2 * n - 1 - start]
        p = self.linear_pos(table).view(1, -1, self.h, self.d_k).transpose(1, 2)
        ac = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        bd = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))
        rows = torch.arange(t, device=x.device)
        cols = torch.arange(n, device=x.device)
        # table index of offset (start + r) - c is (n - 1) - (start + r - c)
        idx = (n - 1 - start - rows)[:, None] + cols[None, :]
        bd = bd.gather(-1, idx.expand(b, self.h, t, n))
        scores = (ac + bd) / math.sqrt(self.d_k)
        limit = (start + rows) // chunk * chunk + chunk if chunk > 0 else torch.full_like(rows, n)
        blocked = (cols[None, :] >= limit.clamp(max=n)[:, None])[None, None]
        scores = scores.masked_fill(blocked, -float("inf"))
        attn = torch.softmax(scores, dim=-1).masked_fill(blocked, 0.0)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, self.h * self.d_k)
        return self.linear_out(out), k_new, v_new


class FeedForward(nn.Module):
    def __init__(self, idim: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden)
        self.w_2 = nn.Linear(hidden, idim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    """Pre-norm attention + SiLU FFN; LayerNorm eps 1e-12 as in the ESPnet layer."""

    def __init__(self, size: int, heads: int, linear_units: int, key_bias: bool) -> None:
        super().__init__()
        self.self_attn = RelPositionAttention(heads, size, key_bias)
        self.feed_forward = FeedForward(size, linear_units)
        self.norm_ff = nn.LayerNorm(size, eps=1e-12)
        self.norm_mha = nn.LayerNorm(size, eps=1e-12)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), mask, pos)
        return x + self.feed_forward(self.norm_ff(x))

    def forward_cached(self, x: torch.Tensor, past, start: int, chunk: int):
        att, k, v = self.self_attn.forward_cached(self.norm_mha(x), past, start, chunk)
        x = x + att
        return x + self.feed_forward(self.norm_ff(x)), k, v


class PreLookahead(nn.Module):
    """Frame t sees tokens t..t+L (right zero padding), then a causal k=3 conv; residual."""

    def __init__(self, channels: int, lookahead: int) -> None:
        super().__init__()
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=lookahead + 1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pad(x.transpose(1, 2), (0, self.lookahead))
        y = F.leaky_relu(self.conv1(y))
        y = self.conv2(F.pad(y, (2, 0)))
        return y.transpose(1, 2) + x


class CausalUpsample(nn.Module):
    """Nearest x stride, left pad 2*stride, conv k=2*stride+1: length-exact and causal."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(channels, channels, stride * 2 + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(x, scale_factor=float(self.stride), mode="nearest")
        return self.conv(F.pad(y, (self.stride * 2, 0)))


@dataclass
class EncoderState:
    """Frozen prefix of the encoder: tokens [0, frozen) (frames [0, stride*frozen)) are final.

    A token is final once its chunk is complete and its 3 lookahead tokens exist; its keys/values
    in every layer, and the few conv inputs the next frames need, are kept here.
    """

    frozen: int = 0
    lower: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per layer (K, V)
    upper: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    lookahead_tail: torch.Tensor | None = None  # conv1 outputs of the last 2 frozen tokens [B, D, 2]
    lower_tail: torch.Tensor | None = None  # lower-stack outputs of the last 2 frozen tokens [B, 2, D]

    def nbytes(self) -> int:
        ts = [t for kv in (*self.lower, *self.upper) for t in kv]
        ts += [t for t in (self.lookahead_tail, self.lower_tail) if t is not None]
        return sum(t.numel() * t.element_size() for t in ts)


class UpsampleConformerEncoder(nn.Module):
    """Embedded tokens [B, N, D] -> hidden frames [B, stride*N, D] (B = 1 in practice, no padding)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d = cfg.output_size
        self.cfg = cfg
        self.embed = LinearEmbed(cfg.input_size, d)
        self.pre_lookahead_layer = PreLookahead(d, cfg.pre_lookahead_len)
        self.encoders = nn.ModuleList(
            ConformerLayer(d, cfg.attention_heads, cfg.linear_units, cfg.key_bias) for _ in range(cfg.num_blocks)
        )
        self.up_layer = CausalUpsample(d, cfg.upsample_stride)
        self.up_embed = LinearEmbed(cfg.input_size, d)
        self.up_encoders = nn.ModuleList(
            ConformerLayer(d, cfg.attention_heads, cfg.linear_units, cfg.key_bias) for _ in range(cfg.num_up_blocks)
        )
        self.after_norm = nn.LayerNorm(d, eps=1e-5)

    def forward(self, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """``chunk`` = static chunk size in tokens (0 = full attention); the upper stack uses stride*chunk."""
        x, pos = self.embed(x)
        mask = chunk_mask(x.size(1), chunk, x.device)[None]
        x = self.pre_lookahead_layer(x)
        for layer in self.encoders:
            x = layer(x, mask, pos)
        x = self.up_layer(x.transpose(1, 2)).transpose(1, 2)
        x, pos = self.up_embed(x)
        mask = chunk_mask(x.size(1), chunk * self.cfg.upsample_stride, x.device)[None]
        for layer in self.up_encoders:
            x = layer(x, mask, pos)
        return self.after_norm(x)

    def forward_incremental(self, x: torch.Tensor, chunk: int, state: EncoderState, freeze: bool = True
                            ) -> torch.Tensor:
        """Frames [stride*state.frozen, stride*N) of :meth:`forward` for all N embedded tokens ``x``.

        Only tokens from ``state.frozen`` on are computed; afterwards (``freeze``) the state freezes
        every token whose chunk is complete and whose lookahead tokens exist (the estimator's rule).
        """
        if chunk <= 0:
            raise ValueError("incremental encoding needs a static chunk size")
        f, n = state.frozen, x.size(1)
        stride, look = self.cfg.upsample_stride, self.cfg.pre_lookahead_len
        h, _ = self.embed(x[:, f:])
        pre = self.pre_lookahead_layer
        y1 = F.leaky_relu(pre.conv1(F.pad(h.transpose(1, 2), (0, look))))
        left = state.lookahead_tail if f else y1.new_zeros(y1.size(0), y1.size(1), 2)
        h = pre.conv2(torch.cat([left, y1], dim=2)).transpose(1, 2) + h
        new_lower = []
        for i, layer in enumerate(self.encoders):
            h, k, v = layer.forward_cached(h, state.lower[i] if f else None, f, chunk)
            new_lower.append((k, v))
        low = h
        up_in = torch.cat([state.lower_tail, low], dim=1) if f else low
        y = F.interpolate(up_in.transpose(1, 2), scale_factor=float(stride), mode="nearest")
        y = self.up_layer.conv(y if f else F.pad(y, (stride * 2, 0))).transpose(1, 2)
        h, _ = self.up_embed(y)
        new_upper = []
        for i, layer in enumerate(self.up_encoders):
            h, k, v = layer.forward_cached(h, state.upper[i] if f else None, stride * f, stride * chunk)
            new_upper.append((k, v))
        out = self.after_norm(h)

        freeze = max(f, (n - look) // chunk * chunk) if freeze else f
        if freeze > f:
            d, ds = freeze - f, stride * (freeze - f)

            def join(past, new, m):
                return (new[0][:, :, :m], new[1][:, :, :m]) if past is None else (
                    torch.cat([past[0], new[0][:, :, :m]], dim=2), torch.cat([past[1], new[1][:, :, :m]], dim=2))

            state.lower = [join(state.lower[i] if f else None, kv, d) for i, kv in enumerate(new_lower)]
            state.upper = [join(state.upper[i] if f else None, kv, ds) for i, kv in enumerate(new_upper)]
            state.lookahead_tail = y1[:, :, d - 2 : d].contiguous()
            state.lower_tail = low[:, d - 2 : d].contiguous()
            state.frozen = freeze
        return out
