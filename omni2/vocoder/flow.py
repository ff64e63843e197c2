"""Speech units -> mel: CosyVoice2's CausalMaskedDiffWithXvec (LLaMA-Omni2 / Dec-2024 semantics).

tokens -> embedding -> upsampling conformer (x2, chunk masks) -> Linear = mu; then conditional
flow matching from a *fixed* noise buffer: 10 Euler steps on a cosine time grid with
classifier-free guidance 0.7, the vector field being the causal UNet. Because the noise is
indexed by frame position and every mask/conv is causal or chunked, a frame's value only depends
on the tokens of its own and earlier chunks (+3 lookahead tokens): the basis of streaming.

No prompt tokens / prompt mel (LLaMA-Omni2 never passes them): the speaker enters only through
the x-vector. Parameter names follow the official ``flow.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from omni2.vocoder.config import FlowConfig
from omni2.vocoder.conformer import EncoderState, UpsampleConformerEncoder
from omni2.vocoder.estimator import CausalUNetEstimator, FrozenPrefix, IncrementalContext

DEFAULT_NOISE_SEED = 0


def make_noise(n_mels: int, frames: int, seed: int = DEFAULT_NOISE_SEED) -> torch.Tensor:
    """The CFM start noise [1, n_mels, frames] drawn on CPU from ``seed``.

    With seed 0 this equals upstream CosyVoice's convention (``set_all_random_seed(0)`` then
    ``randn(1, 80, 15000)``). LLaMA-Omni2's own buffer depends on its whole construction history
    and cannot be re-derived; load a dumped buffer with :meth:`FlowModel.set_noise` for parity.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(1, n_mels, frames, generator=gen)


@dataclass
class FlowOutput:
    mel: torch.Tensor  # [1, n_mels, T - start] float32
    mu: torch.Tensor  # [1, n_mels, T - start] encoder_proj output (transposed)
    start: int = 0  # first frame ``mel`` covers (incremental mode; 0 = all frames)


@dataclass
class FlowState:
    """Per-utterance state of the incremental flow: frames [0, frozen) are final and summarised."""

    frozen: int = 0
    prefixes: list[FrozenPrefix] | None = None
    encoder: EncoderState = field(default_factory=EncoderState)

    def nbytes(self) -> int:
        return sum(p.nbytes() for p in self.prefixes or []) + self.encoder.nbytes()


class CausalCFM(nn.Module):
    """Holds the estimator (``decoder.estimator.*``) and runs guided Euler integration."""

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.estimator = CausalUNetEstimator(cfg.estimator)

    def time_grid(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        n = self.cfg.cfm.n_timesteps
        t = torch.linspace(0, 1, n + 1, device=device, dtype=dtype)
        if self.cfg.cfm.t_scheduler == "cosine":
            t = 1 - torch.cos(t * 0.5 * torch.pi)
        return t

    def forward(
        self,
        mu: torch.Tensor,
        spks: torch.Tensor,
        z: torch.Tensor,
        cond: torch.Tensor,
        prefixes: list[FrozenPrefix] | None = None,
        freeze: int = 0,
    ) -> tuple[torch.Tensor, list[FrozenPrefix] | None]:
        """Integrate from noise ``z`` [1,C,T] to a mel; operation order mirrors the official solver.

        With ``prefixes`` (one per Euler step) the inputs cover only the frames after the frozen
        prefix; the returned prefixes additionally freeze the first ``freeze`` of those frames.
        """
        rate = self.cfg.cfm.inference_cfg_rate
        chunk = self.cfg.estimator_chunk
        t_span = self.time_grid(mu.dtype, mu.device)
        mask = torch.ones(1, 1, mu.size(2), device=mu.device, dtype=mu.dtype)
        x = z
        t = t_span[0].unsqueeze(0)
        dt = t_span[1] - t_span[0]
        if rate > 0:
            mask_in = torch.cat([mask, mask])
            mu_in = torch.cat([mu, torch.zeros_like(mu)])
            spks_in = torch.cat([spks, torch.zeros_like(spks)])
            cond_in = torch.cat([cond, torch.zeros_like(cond)])
        n = len(t_span)
        out_prefixes: list[FrozenPrefix] | None = [] if prefixes is not None else None
        for step in range(1, n):
            ctx = IncrementalContext(prefixes[step - 1]) if prefixes is not None else None
            if rate > 0:
                v = self.estimator(torch.cat([x, x]), mask_in, mu_in, t.expand(2), spks_in, cond_in, chunk, ctx)
                v_cond, v_uncond = v[:1], v[1:]
                v = (1.0 + rate) * v_cond - rate * v_uncond
            else:
                v = self.estimator(x, mask, mu, t, spks, cond, chunk, ctx)
            if ctx is not None:
                out_prefixes.append(ctx.advance(freeze))
            x = x + dt * v
            t = t + dt
            if step < n - 1:
                dt = t_span[step + 1] - t
        return x.float(), out_prefixes


class FlowModel(nn.Module):
    """CausalMaskedDiffWithXvec for one utterance at a time (batch 1, no padding)."""

    def __init__(self, cfg: FlowConfig, noise_seed: int = DEFAULT_NOISE_SEED) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.input_size)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.output_size)
        self.encoder = UpsampleConformerEncoder(cfg.encoder)
        self.encoder_proj = nn.Linear(cfg.encoder.output_size, cfg.output_size)
        self.decoder = CausalCFM(cfg)
        self.register_buffer("noise", make_noise(cfg.output_size, cfg.cfm.noise_frames, noise_seed), persistent=False)
        self.noise_seed = noise_seed

    def set_noise(self, noise: torch.Tensor) -> None:
        """Replace the start-noise buffer (e.g. a dump of the reference's ``rand_noise``)."""
        if noise.dim() != 3 or noise.size(0) != 1 or noise.size(1) != self.cfg.output_size:
            raise ValueError(f"noise must be [1, {self.cfg.output_size}, L], got {tuple(noise.shape)}")
        self.noise = noise.to(device=self.noise.device, dtype=torch.float32).contiguous()

    def noise_for(self, frames: int) -> torch.Tensor:
        """Columns 0..frames-1 of the buffer; grown deterministically past its end (official: crash)."""
        have = self.noise.size(2)
        if frames > have:
            extra = make_noise(self.cfg.output_size, frames - have, self.noise_seed + 1 + have)
            self.noise = torch.cat([self.noise, extra.to(self.noise.device)], dim=2)
        return self.noise[:, :, :frames]

    def speaker(self, xvector: torch.Tensor) -> torch.Tensor:
        """Raw CAM++ x-vector [1, 192] -> [1, n_mels]: L2-normalise then project."""
        return self.spk_embed_affine_layer(F.normalize(xvector, dim=1))

    def encode(self, tokens: torch.Tensor, finalize: bool) -> torch.Tensor:
        """tokens [1, N] -> mu [1, n_mels, 2N] (2N-6 when not final: the lookahead frames are cut)."""
        emb = self.input_embedding(torch.clamp(tokens, min=0))
        h = self.encoder(emb, self.cfg.encoder_chunk)
        if not finalize:
            h = h[:, : h.size(1) - self.cfg.pre_lookahead_len * self.cfg.token_mel_ratio]
        return self.encoder_proj(h).transpose(1, 2).contiguous()

    @torch.inference_mode()
    def inference(self, tokens: torch.Tensor, xvector: torch.Tensor, finalize: bool = True) -> FlowOutput:
        """All tokens so far [1, N] -> mel of every frame (recomputes the whole prefix, as official)."""
        if tokens.dim() != 2 or tokens.size(0) != 1:
            raise ValueError(f"tokens must be [1, N], got {tuple(tokens.shape)}")
        dtype = self.input_embedding.weight.dtype
        spk = self.speaker(xvector.to(device=tokens.device, dtype=dtype))
        mu = self.encode(tokens, finalize)
        frames = mu.size(2)
        z = self.noise_for(frames).to(device=mu.device, dtype=mu.dtype)
        cond = torch.zeros_like(mu)
        if frames == 0:
            mel = mu.float()
        else:
            mel, _ = self.decoder(mu, spk, z, cond)
        return FlowOutput(mel=mel, mu=mu.float())

    def can_freeze(self) -> bool:
        """Incremental decoding needs estimator chunks aligned with encoder chunks (always true
        for configs read from cosyvoice.yaml: 100 frames = 2 x 50 tokens)."""
        c1, c2 = self.cfg.encoder_chunk, self.cfg.estimator_chunk
        return c1 > 0 and c2 == c1 * self.cfg.token_mel_ratio

    @torch.inference_mode()
    def inference_incremental(
        self, tokens: torch.Tensor, xvector: torch.Tensor, finalize: bool, state: FlowState
    ) -> FlowOutput:
        """Same frames as :meth:`inference` but the estimator only runs from ``state.frozen`` on.

        Frames of an estimator chunk are final once the chunk is complete and its tokens' encoder
        chunk has its 3 lookahead tokens (M - 3 >= its end): chunk masks, causal convs and the
        position-indexed noise make them independent of anything later. Their keys/values and conv
        contexts are kept (``state``), and the encoder likewise keeps the keys/values of its finished
        chunks (``state.encoder``), so a call costs O(current chunk) plus attention over the kept
        context instead of O(prefix). Returned ``mel`` and ``mu`` cover frames ``start`` (=
        ``state.frozen`` before the call) .. T.
        """
        if not self.can_freeze():
            raise RuntimeError("incremental flow needs estimator_chunk == token_mel_ratio * encoder_chunk")
        dtype = self.input_embedding.weight.dtype
        spk = self.speaker(xvector.to(device=tokens.device, dtype=dtype))
        start = state.frozen
        if start != self.cfg.token_mel_ratio * state.encoder.frozen:
            raise RuntimeError("incremental flow: encoder and estimator states are out of step")
        emb = self.input_embedding(torch.clamp(tokens, min=0))
        h = self.encoder.forward_incremental(emb, self.cfg.encoder_chunk, state.encoder, freeze=not finalize)
        if not finalize:
            h = h[:, : h.size(1) - self.cfg.pre_lookahead_len * self.cfg.token_mel_ratio]
        mu_new = self.encoder_proj(h).transpose(1, 2).contiguous()
        frames = start + mu_new.size(2)
        if frames <= start:
            raise RuntimeError(f"incremental flow: {frames} frames but {start} already frozen")
        freeze_to = start
        if not finalize:
            c1, c2 = self.cfg.encoder_chunk, self.cfg.estimator_chunk
            final_tokens = max(tokens.size(1) - self.cfg.pre_lookahead_len, 0)
            freeze_to = max(start, min((final_tokens // c1) * c2, (frames // c2) * c2))
        z = self.noise_for(frames)[:, :, start:].to(device=mu_new.device, dtype=mu_new.dtype)
        prefixes = state.prefixes or [FrozenPrefix() for _ in range(self.cfg.cfm.n_timesteps)]
        mel, new_prefixes = self.decoder(
            mu_new, spk, z, torch.zeros_like(mu_new), prefixes=prefixes, freeze=freeze_to - start
        )
        state.prefixes = new_prefixes
        state.frozen = freeze_to
        return FlowOutput(mel=mel, mu=mu_new.float(), start=start)

    def num_frames(self, n_tokens: int, finalize: bool) -> int:
        """Mel frames one call yields for ``n_tokens`` (official arithmetic, never negative)."""
        n = n_tokens * self.cfg.token_mel_ratio
        if not finalize:
            n -= self.cfg.pre_lookahead_len * self.cfg.token_mel_ratio
        return max(n, 0)


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
