"""A tiny random CosyVoice2 decoder folder for tests and ``make_tiny`` (seconds to write and run).

Same file set and structure as the official ``cosy2_decoder``: ``cosyvoice.yaml`` (HyperPyYAML
with the official ``!new:`` classes), ``flow.pt`` (flat state dict), ``hift.pt`` (old-style weight
norm ``weight_g``/``weight_v``, as the official file), a ``campplus.onnx`` stand-in with CAM++'s
interface (input "input" [1, T, 80] fbank -> [1, 192]) and ``spk_xvector.npy`` as default voice.
Random weights: it "speaks" noise, which is all the plumbing tests need.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from omni2.vocoder.config import DecoderConfig, parse_config
from omni2.vocoder.flow import FlowModel
from omni2.vocoder.hift import HiFTGenerator
from omni2.vocoder.token2wav import Decoder

TINY_YAML = """\
# Tiny random-weight CosyVoice2 decoder (test fixture written by omni2.vocoder.tiny; NOT a trained model).
# Same HyperPyYAML structure as the official cosyvoice.yaml; omni2 reads it as data only.
__set_seed1: !apply:random.seed [1986]
__set_seed2: !apply:numpy.random.seed [1986]
__set_seed3: !apply:torch.manual_seed [1986]
__set_seed4: !apply:torch.cuda.manual_seed_all [1986]

sample_rate: 24000
spk_embed_dim: 192
qwen_pretrain_path: ''
token_frame_rate: 25
token_mel_ratio: 2

flow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithXvec
    input_size: {width}
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: {vocab}
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: 3
    encoder: !new:cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder
        output_size: {width}
        attention_heads: 2
        linear_units: {ffn}
        num_blocks: 2
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: {width}
        use_cnn_module: False
        macaron_style: False
    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.ConditionalDecoder
            in_channels: 320
            out_channels: 80
            causal: True
            channels: [32]
            dropout: 0.0
            attention_head_dim: 16
            n_blocks: 1
            num_mid_blocks: 2
            num_heads: 2
            act_fn: 'gelu'

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: 80
    base_channels: 32
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 5, 3]
    upsample_kernel_sizes: [16, 11, 7]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: 80
        cond_channels: 32

get_tokenizer: null
feat_extractor: null
allowed_special: 'all'
"""

# Modules of HiFTGenerator that the official code wraps in weight_norm (all convs except source_downs).
_WN_PREFIXES = ("conv_pre.", "ups.", "resblocks.", "source_resblocks.", "conv_post.", "f0_predictor.condnet.")


def unfold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`omni2.vocoder.hift.fold_weight_norm`: write weights as weight_g/weight_v."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".weight") and key.startswith(_WN_PREFIXES) and value.dim() == 3:
            base = key[: -len(".weight")]
            out[f"{base}.weight_g"] = value.norm(dim=(1, 2), keepdim=True)
            out[f"{base}.weight_v"] = value.clone()
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# Minimal ONNX writer (protobuf wire format by hand: no onnx package needed)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, value: bytes | str | int) -> bytes:
    if isinstance(value, int):
        return _varint(num << 3) + _varint(value)
    if isinstance(value, str):
        value = value.encode()
    return _varint(num << 3 | 2) + _varint(len(value)) + value


def _tensor(name: str, arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    dims = b"".join(_field(1, int(d)) for d in arr.shape)
    return dims + _field(2, 1) + _field(8, name) + _field(9, arr.tobytes())


def _value_info(name: str, dims: list[int | str]) -> bytes:
    shape = b"".join(_field(1, _field(1, d) if isinstance(d, int) else _field(2, d)) for d in dims)
    tensor_type = _field(1, 1) + _field(2, shape)
    return _field(1, name) + _field(2, _field(1, tensor_type))


def _node(op: str, inputs: list[str], outputs: list[str], attrs: bytes = b"") -> bytes:
    body = b"".join(_field(1, i) for i in inputs) + b"".join(_field(2, o) for o in outputs)
    return body + _field(4, op) + attrs


def campplus_standin_onnx(seed: int = 0) -> bytes:
    """ONNX bytes with CAM++'s interface: mean-pool the fbank, tanh(affine) -> [1, 192]."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((80, 192)).astype(np.float32) * 0.2
    b = rng.standard_normal(192).astype(np.float32) * 0.1
    axes = _field(1, "axes") + _field(20, 7) + _field(8, 1)  # AttributeProto: name, type INTS, ints
    keep = _field(1, "keepdims") + _field(20, 2) + _field(3, 0)  # type INT, i
    nodes = [
        _node("ReduceMean", ["input"], ["pooled"], _field(5, axes) + _field(5, keep)),
        _node("MatMul", ["pooled", "W"], ["proj"]),
        _node("Add", ["proj", "b"], ["pre"]),
        _node("Tanh", ["pre"], ["output"]),
    ]
    graph = b"".join(_field(1, n) for n in nodes) + _field(2, "campplus_standin")
    graph += _field(5, _tensor("W", w)) + _field(5, _tensor("b", b))
    graph += _field(11, _value_info("input", [1, "T", 80])) + _field(12, _value_info("output", [1, 192]))
    opset = _field(1, "") + _field(2, 13)
    return _field(1, 7) + _field(2, "omni2.vocoder.tiny") + _field(7, graph) + _field(8, opset)


# --------------------------------------------------------------------------------------------


def _randomize(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Deterministic small random weights; norms keep weight 1 / bias 0, Snake alpha ~1."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("alpha"):
                p.copy_(1.0 + 0.1 * torch.rand(p.shape, generator=gen))
            elif (
                ".norm" in name
                or "norm_" in name
                or name.endswith(("out.1.weight", "out.1.bias"))
                or (".block.2." in name)
                or name.startswith("encoder.after_norm")
            ):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=gen) / max(fan_in, 1) ** 0.5)


def _random_flow_hift(cfg: DecoderConfig, gen: torch.Generator) -> tuple[FlowModel, HiFTGenerator]:
    """Flow + HiFT with random weights; HiFT kept in a speech-like F0 range and quiet."""
    flow, hift = FlowModel(cfg.flow), HiFTGenerator(cfg.hift)
    _randomize(flow, gen)
    _randomize(hift, gen)
    with torch.no_grad():
        # F0 in a speech-like range so the sine source is voiced for most frames ...
        hift.f0_predictor.classifier.bias.fill_(150.0)
        # ... and small iSTFT magnitudes (exp(-1.5)), so the audio is quiet noise, not clipping.
        hift.conv_post.weight.mul_(0.05)
        hift.conv_post.bias[: cfg.hift.n_fft // 2 + 1].fill_(-1.5)
    return flow, hift


def build_random_decoder(
    cfg: DecoderConfig, seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Decoder:
    """An in-memory decoder with random weights for any config (e.g. real-size speed tests)."""
    gen = torch.Generator().manual_seed(seed)
    flow, hift = _random_flow_hift(cfg, gen)
    flow.to(device=device, dtype=dtype)
    flow.noise = flow.noise.float()
    hift.to(device=device)
    xvec = torch.randn(1, cfg.flow.spk_embed_dim, generator=gen)
    return Decoder(cfg, flow, hift, device=device, xvector=xvec)


def write_tiny_decoder(out_dir: Path, seed: int = 0, vocab_size: int = 6561, width: int = 64) -> Path:
    """Write cosyvoice.yaml, flow.pt, hift.pt, campplus.onnx and spk_xvector.npy into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = TINY_YAML.format(width=width, vocab=vocab_size, ffn=2 * width)
    cfg = parse_config(text)
    gen = torch.Generator().manual_seed(seed)
    flow, hift = _random_flow_hift(cfg, gen)
    (out_dir / "cosyvoice.yaml").write_text(text)
    torch.save({k: v.clone() for k, v in flow.state_dict().items()}, out_dir / "flow.pt")
    torch.save(unfold_weight_norm({k: v.clone() for k, v in hift.state_dict().items()}), out_dir / "hift.pt")
    (out_dir / "campplus.onnx").write_bytes(campplus_standin_onnx(seed))
    xvec = torch.randn(192, generator=gen).numpy().astype(np.float32)
    np.save(out_dir / "spk_xvector.npy", xvec)
    return out_dir


__all__ = ["build_random_decoder", "campplus_standin_onnx", "unfold_weight_norm", "write_tiny_decoder"]
