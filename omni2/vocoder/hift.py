"""Mel -> 24 kHz waveform: CosyVoice2's HiFTGenerator (neural source filter + iSTFTNet).

An F0 predictor (5 conv+ELU layers, |Linear|) drives a harmonic sine source (fundamental + 8
harmonics, SineGen "v1" as in LLaMA-Omni2's vendored code); the mel is upsampled x8x5x3 with
Snake ResBlocks while the source's STFT is injected at each scale; the output is 9 magnitudes +
9 phases for an iSTFT (n_fft 16, hop 4), i.e. 480 samples per mel frame.

Weight norm is folded into plain ``weight`` tensors at load time (see :func:`fold_weight_norm`),
so the module itself has no parametrizations. Randomness (harmonic phases, additive noise) can be
switched off (``deterministic=True``, what the goldens use) or drawn from a given generator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omni2.vocoder.config import F0PredictorConfig, HiFTConfig


def _padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class Snake(nn.Module):
    """x + 1/(alpha + 1e-9) * sin(alpha x)^2, one alpha per channel (linear scale)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        return x + (1.0 / (alpha + 1e-9)) * torch.pow(torch.sin(x * alpha), 2)


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=_padding(kernel, d)) for d in dilations
        )
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=_padding(kernel)) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.activations1, self.activations2, strict=True):
            x = c2(a2(c1(a1(x)))) + x
        return x


class ConvF0Predictor(nn.Module):
    """ConvRNNF0Predictor (no RNN in it): mel [B, 80, T] -> F0 in Hz [B, T]."""

    def __init__(self, cfg: F0PredictorConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            cin = cfg.in_channels if i == 0 else cfg.cond_channels
            layers += [nn.Conv1d(cin, cfg.cond_channels, kernel_size=3, padding=1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cfg.cond_channels, cfg.num_class)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        h = self.condnet(mel).transpose(1, 2)
        return torch.abs(self.classifier(h).squeeze(-1))


@dataclass
class SourceNoise:
    """Randomness policy for the NSF source: off (deterministic) or drawn from ``generator``."""

    deterministic: bool = False
    generator: torch.Generator | None = None


class SourceModule(nn.Module):
    """SourceModuleHnNSF with SineGen v1: 9 sines of the cumulated phase -> Linear(9, 1) -> tanh."""

    def __init__(self, cfg: HiFTConfig) -> None:
        super().__init__()
        self.harmonics = cfg.nb_harmonics + 1
        self.sample_rate = cfg.sampling_rate
        self.sine_amp = cfg.nsf_alpha
        self.noise_std = cfg.nsf_sigma
        self.threshold = cfg.nsf_voiced_threshold
        self.l_linear = nn.Linear(self.harmonics, 1)

    def sines(self, f0: torch.Tensor, noise: SourceNoise) -> torch.Tensor:
        """f0 [B, 1, L] (Hz per sample) -> harmonic excitation [B, 9, L]."""
        b, _, length = f0.shape
        fmat = torch.zeros(b, self.harmonics, length, device=f0.device)
        for i in range(self.harmonics):
            fmat[:, i : i + 1, :] = f0 * (i + 1) / self.sample_rate
        theta = 2 * np.pi * (torch.cumsum(fmat, dim=-1) % 1)
        uv = (f0 > self.threshold).to(torch.float32)
        if noise.deterministic:
            return self.sine_amp * torch.sin(theta) * uv
        gen = noise.generator
        gen_device = gen.device if gen is not None else torch.device("cpu")
        phase = (torch.rand(b, self.harmonics, 1, generator=gen, device=gen_device) * 2 - 1) * np.pi
        phase[:, 0, :] = 0
        waves = self.sine_amp * torch.sin(theta + phase.to(f0.device))
        amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        rnd = torch.randn(waves.shape, generator=gen, device=gen_device).to(f0.device)
        return waves * uv + amp * rnd

    def forward(self, f0: torch.Tensor, noise: SourceNoise) -> torch.Tensor:
        s = self.sines(f0, noise)  # [B, 9, L]
        return torch.tanh(self.l_linear(s.transpose(1, 2))).transpose(1, 2)  # [B, 1, L]


@dataclass
class HiFTOutput:
    wav: torch.Tensor  # [1, L] float32 in [-audio_limit, audio_limit]
    source: torch.Tensor  # [1, 1, L] the NSF excitation actually used (after the cache overwrite)
    f0: torch.Tensor  # [1, T] Hz


class HiFTGenerator(nn.Module):
    def __init__(self, cfg: HiFTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        base = cfg.base_channels
        n_stft = cfg.n_fft + 2
        self.m_source = SourceModule(cfg)
        self.conv_pre = nn.Conv1d(cfg.in_channels, base, 7, 1, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(base // 2**i, base // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True))
        )
        down_rates = np.cumprod([1, *cfg.upsample_rates[::-1][:-1]])[::-1]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (u, k, d) in enumerate(
            zip(down_rates, cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilation_sizes, strict=True)
        ):
            ch = base // 2 ** (i + 1)
            u = int(u)
            if u == 1:
                self.source_downs.append(nn.Conv1d(n_stft, ch, 1, 1))
            else:
                self.source_downs.append(nn.Conv1d(n_stft, ch, u * 2, u, padding=u // 2))
            self.source_resblocks.append(ResBlock(ch, k, tuple(d)))
        self.resblocks = nn.ModuleList()
        for i in range(len(self.ups)):
            ch = base // 2 ** (i + 1)
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True):
                self.resblocks.append(ResBlock(ch, k, tuple(d)))
        self.conv_post = nn.Conv1d(ch, n_stft, 7, 1, padding=3)
        self.f0_predictor = ConvF0Predictor(cfg.f0_predictor)
        # scipy get_window('hann', n, fftbins=True): periodic Hann computed in float64, stored fp32
        n = cfg.n_fft
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
        self.register_buffer("stft_window", torch.from_numpy(window.astype(np.float32)), persistent=False)

    @property
    def upsample_factor(self) -> int:
        return self.cfg.samples_per_frame

    def _stft(self, x: torch.Tensor) -> torch.Tensor:
        n, hop = self.cfg.n_fft, self.cfg.hop_len
        spec = torch.stft(x, n, hop, n, window=self.stft_window, return_complex=True)
        spec = torch.view_as_real(spec)
        return torch.cat([spec[..., 0], spec[..., 1]], dim=1)

    def _istft(self, magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        n, hop = self.cfg.n_fft, self.cfg.hop_len
        magnitude = torch.clip(magnitude, max=1e2)
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        return torch.istft(spec, n, hop, n, window=self.stft_window)

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """mel [1, 80, T] + source [1, 1, 480T] -> wav [1, 480T]."""
        s = self._stft(source.squeeze(1))
        x = self.conv_pre(mel)
        k = len(self.cfg.resblock_kernel_sizes)
        last = len(self.ups) - 1
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, self.cfg.lrelu_slope))
            if i == last:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](s))
            xs = self.resblocks[i * k](x)
            for j in range(1, k):
                xs = xs + self.resblocks[i * k + j](x)
            x = xs / k
        x = self.conv_post(F.leaky_relu(x))
        half = self.cfg.n_fft // 2 + 1
        wav = self._istft(torch.exp(x[:, :half, :]), torch.sin(x[:, half:, :]))
        return torch.clamp(wav, -self.cfg.audio_limit, self.cfg.audio_limit)

    @torch.inference_mode()
    def inference(
        self,
        mel: torch.Tensor,
        cache_source: torch.Tensor | None = None,
        noise: SourceNoise | None = None,
    ) -> HiFTOutput:
        """The official ``hift.inference``: predict F0, build the source, overwrite its start with
        ``cache_source`` (the previous call's tail, for phase continuity), decode."""
        mel = mel.to(torch.float32)
        f0 = self.f0_predictor(mel)
        f0_up = F.interpolate(f0[:, None], scale_factor=float(self.upsample_factor), mode="nearest")
        source = self.m_source(f0_up, noise or SourceNoise())
        if cache_source is not None and cache_source.size(2) > 0:
            n = min(cache_source.size(2), source.size(2))
            source = source.clone()
            source[:, :, :n] = cache_source[:, :, :n].to(source)
        wav = self.decode(mel, source)
        return HiFTOutput(wav=wav, source=source, f0=f0)


# --------------------------------------------------------------------------------------------
# Checkpoint key handling

_PARAM_RE = re.compile(r"^(?P<mod>.+)\.parametrizations\.weight\.original(?P<i>[01])$")


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn weight-norm pairs into plain weights: W = g * v / ||v|| (norm over all dims but 0).

    Accepts old-style ``X.weight_g``/``X.weight_v`` and new-style
    ``X.parametrizations.weight.original0``/``original1`` (g, v), strips a ``generator.`` prefix.
    ``g`` is [out,1,1] for Conv1d and [in,1,1] for ConvTranspose1d; both are "dim 0" of the weight.
    """
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith("generator."):
            key = key[len("generator.") :]
        m = _PARAM_RE.match(key)
        if m:
            pairs.setdefault(m.group("mod"), {})["g" if m.group("i") == "0" else "v"] = value
        elif key.endswith(".weight_g") or key.endswith(".weight_v"):
            pairs.setdefault(key[: -len(".weight_g")], {})[key[-1]] = value
        else:
            out[key] = value
    for mod, gv in pairs.items():
        if set(gv) != {"g", "v"}:
            raise KeyError(f"{mod}: weight norm needs both g and v, found only {sorted(gv)}")
        g, v = gv["g"].float(), gv["v"].float()
        norm = v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
        out[f"{mod}.weight"] = v * (g / norm)
    return out
