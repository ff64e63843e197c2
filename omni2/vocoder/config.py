"""Read CosyVoice2's ``cosyvoice.yaml`` as plain data into dataclasses.

The official file is HyperPyYAML: ``!new:module.Class`` builds objects, ``!name:`` makes partials,
``!ref <key>`` substitutes (with simple arithmetic) and ``!apply:`` runs code at load time. We never
execute any of it: a SafeLoader subclass turns every tag into inert data (:class:`Tagged`), ``!ref``
is resolved by a tiny arithmetic evaluator, and only the ``flow:`` and ``hift:`` sections are read.
Anything we would have to guess about (an unknown class, key or shape) raises ``ConfigError``.
"""

from __future__ import annotations

import ast
import dataclasses
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from omni2.errors import ConfigError


@dataclass
class Tagged:
    """A HyperPyYAML-tagged node kept as data: ``kind`` is new/name/apply, ``target`` the dotted name."""

    kind: str
    target: str
    value: Any


@dataclass
class Ref:
    """An unresolved ``!ref`` expression such as ``<chunk_size> * <token_frame_rate>``."""

    expr: str


class _HyperSafeLoader(yaml.SafeLoader):
    """SafeLoader that maps HyperPyYAML tags to :class:`Tagged`/:class:`Ref` instead of code."""


def _construct_any(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    value = loader.construct_scalar(node)
    return None if value == "" else value


def _multi_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    kind, _, target = node.tag.lstrip("!").partition(":")
    return Tagged(kind, target, _construct_any(loader, node))


def _ref_tag(loader: yaml.SafeLoader, node: yaml.Node) -> Ref:
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"!ref must be a plain expression, got {node.id} at line {node.start_mark.line + 1}")
    return Ref(str(loader.construct_scalar(node)))


for _kind in ("new", "name", "apply", "copy", "module"):
    _HyperSafeLoader.add_multi_constructor(f"!{_kind}:", _multi_tag)
_HyperSafeLoader.add_constructor("!ref", _ref_tag)
# HyperPyYAML writes 1e-06 style floats that YAML 1.1 reads as strings; accept them as floats.
_HyperSafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_REF_RE = re.compile(r"<([^<>]+)>")


def _eval_arith(expr: str) -> Any:
    """Evaluate numbers combined with + - * / // % ** and parentheses; nothing else."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        raise ConfigError(f"unsupported !ref expression {expr!r}")

    try:
        return ev(ast.parse(expr, mode="eval"))
    except SyntaxError as exc:
        raise ConfigError(f"cannot parse !ref expression {expr!r}") from exc


class _Resolver:
    """Resolves ``!ref`` nodes against the document root (``<a>`` or ``<a[b]>``), detecting cycles."""

    def __init__(self, root: dict) -> None:
        self.root = root
        self.active: set[str] = set()

    def lookup(self, key: str) -> Any:
        parts = re.findall(r"[^\[\]]+", key)
        if not parts:
            raise ConfigError(f"empty !ref key <{key}>")
        if key in self.active:
            raise ConfigError(f"!ref cycle through <{key}>")
        self.active.add(key)
        try:
            node: Any = self.root
            for part in parts:
                if isinstance(node, Tagged):
                    node = node.value
                if not isinstance(node, dict) or part not in node:
                    raise ConfigError(f"!ref <{key}> names a key that does not exist")
                node = node[part]
            return self.resolve(node)
        finally:
            self.active.discard(key)

    def resolve(self, node: Any) -> Any:
        if isinstance(node, Ref):
            expr = node.expr.strip()
            whole = _REF_RE.fullmatch(expr)
            if whole:
                return self.lookup(whole.group(1))
            values: list[Any] = []

            def sub(m: re.Match) -> str:
                v = self.lookup(m.group(1))
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ConfigError(f"!ref {expr!r}: <{m.group(1)}> is not a number ({v!r})")
                values.append(v)
                return repr(v)

            return _eval_arith(_REF_RE.sub(sub, expr))
        if isinstance(node, Tagged):
            return Tagged(node.kind, node.target, self.resolve(node.value))
        if isinstance(node, dict):
            return {k: self.resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.resolve(v) for v in node]
        return node


def load_yaml_data(text: str) -> dict:
    """Parse HyperPyYAML text into plain data with every ``!ref`` resolved; executes nothing."""
    try:
        doc = yaml.load(text, Loader=_HyperSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"cosyvoice.yaml is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError("cosyvoice.yaml must be a mapping at the top level")
    return _Resolver(doc).resolve(doc)


# --------------------------------------------------------------------------------------------
# Dataclasses (defaults = the class defaults of the Dec-2024 CosyVoice code LLaMA-Omni2 vendors)


@dataclass
class EncoderConfig:
    input_size: int = 512
    output_size: int = 512
    attention_heads: int = 8
    linear_units: int = 2048
    num_blocks: int = 6
    num_up_blocks: int = 4  # hard-coded in UpsampleConformerEncoder
    pre_lookahead_len: int = 3  # hard-coded in UpsampleConformerEncoder
    upsample_stride: int = 2  # hard-coded in UpsampleConformerEncoder
    key_bias: bool = True


@dataclass
class EstimatorConfig:
    in_channels: int = 320
    out_channels: int = 80
    channels: tuple[int, ...] = (256,)
    attention_head_dim: int = 64
    n_blocks: int = 4
    num_mid_blocks: int = 12
    num_heads: int = 8


@dataclass
class CFMConfig:
    n_timesteps: int = 10  # hard-coded in flow.inference
    inference_cfg_rate: float = 0.7
    t_scheduler: str = "cosine"
    spk_emb_dim: int = 80
    noise_frames: int = 15000  # CausalConditionalCFM's randn(1, 80, 50 * 300)


@dataclass
class FlowConfig:
    input_size: int = 512
    output_size: int = 80
    spk_embed_dim: int = 192
    vocab_size: int = 6561
    input_frame_rate: int = 25
    token_mel_ratio: int = 2
    pre_lookahead_len: int = 3
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    cfm: CFMConfig = field(default_factory=CFMConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    # Runtime chunk sizes: LLaMA-Omni2's loader overwrites whatever the yaml says with
    # 2*input_frame_rate tokens and 2*input_frame_rate*token_mel_ratio frames, in every call.
    encoder_chunk: int = 50
    estimator_chunk: int = 100


@dataclass
class F0PredictorConfig:
    num_class: int = 1
    in_channels: int = 80
    cond_channels: int = 512


@dataclass
class HiFTConfig:
    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 22050
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 8)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16)
    n_fft: int = 16
    hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_predictor: F0PredictorConfig = field(default_factory=F0PredictorConfig)

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per mel frame (480 for CosyVoice2: 8*5*3 upsampling times iSTFT hop 4)."""
        n = self.hop_len
        for r in self.upsample_rates:
            n *= r
        return n


@dataclass
class DecoderConfig:
    sample_rate: int
    flow: FlowConfig
    hift: HiFTConfig


# --------------------------------------------------------------------------------------------
# Section readers

_FLOW_CLASSES = {"cosyvoice.flow.flow.CausalMaskedDiffWithXvec"}
_ENCODER_CLASSES = {"cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder"}
_CFM_CLASSES = {"cosyvoice.flow.flow_matching.CausalConditionalCFM"}
_ESTIMATOR_CLASSES = {
    "cosyvoice.flow.decoder.ConditionalDecoder",
    "cosyvoice.flow.decoder.CausalConditionalDecoder",
}
_HIFT_CLASSES = {"cosyvoice.hifigan.generator.HiFTGenerator"}
_F0_CLASSES = {"cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor"}


def _obj(node: Any, where: str, classes: set[str]) -> dict:
    """The kwargs of a ``!new:`` node whose class is one we implement."""
    if not isinstance(node, Tagged) or node.kind != "new":
        raise ConfigError(f"{where}: expected a '!new:' object, found {type(node).__name__}")
    if node.target not in classes:
        raise ConfigError(f"{where}: unsupported class {node.target!r} (supported: {sorted(classes)})")
    if node.value is None:
        return {}
    if not isinstance(node.value, dict):
        raise ConfigError(f"{where}: arguments of {node.target} must be a mapping")
    return dict(node.value)


def _take(args: dict, where: str, spec: dict[str, Any]) -> dict:
    """Check the keys of ``args`` against ``spec`` (name -> expected value, or a type to accept)."""
    unknown = sorted(set(args) - set(spec))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}")
    out = {}
    for key, expect in spec.items():
        if key not in args:
            continue
        value = args[key]
        if isinstance(expect, type) or (isinstance(expect, tuple) and all(isinstance(t, type) for t in expect)):
            if isinstance(value, bool) and expect is not bool and (expect is int or expect is float):
                raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
            if not isinstance(value, expect):
                raise ConfigError(f"{where}.{key}: expected {expect}, got {value!r}")
            out[key] = value
        elif value != expect:
            raise ConfigError(f"{where}.{key}: only {expect!r} is supported, got {value!r}")
    return out


_NUM = (int, float)
_ANY = object


def _int_list(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{where}: expected a list of integers, got {value!r}")
    return tuple(value)


def _int_lists(value: Any, where: str) -> tuple[tuple[int, ...], ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list of lists, got {value!r}")
    return tuple(_int_list(v, f"{where}[{i}]") for i, v in enumerate(value))


def _read_encoder(node: Any) -> EncoderConfig:
    where = "flow.encoder"
    args = _take(
        _obj(node, where, _ENCODER_CLASSES),
        where,
        {
            "input_size": int,
            "output_size": int,
            "attention_heads": int,
            "linear_units": int,
            "num_blocks": int,
            "dropout_rate": _NUM,
            "positional_dropout_rate": _NUM,
            "attention_dropout_rate": _NUM,
            "input_layer": "linear",
            "pos_enc_layer_type": "rel_pos_espnet",
            "normalize_before": True,
            "static_chunk_size": int,
            "use_dynamic_chunk": False,
            "use_dynamic_left_chunk": False,
            "macaron_style": False,
            "selfattention_layer_type": "rel_selfattn",
            "activation_type": "swish",
            "use_cnn_module": False,
            "key_bias": bool,
            "gradient_checkpointing": bool,
            "global_cmvn": type(None),
            "causal": bool,
            "cnn_module_kernel": int,
            "cnn_module_norm": str,
            "positionwise_conv_kernel_size": int,
        },
    )
    cfg = EncoderConfig()
    for k in ("input_size", "output_size", "attention_heads", "linear_units", "num_blocks", "key_bias"):
        if k in args:
            setattr(cfg, k, args[k])
    if cfg.output_size % cfg.attention_heads:
        raise ConfigError(f"{where}: output_size {cfg.output_size} not divisible by {cfg.attention_heads} heads")
    return cfg


def _read_estimator(node: Any) -> EstimatorConfig:
    where = "flow.decoder.estimator"
    raw = _obj(node, where, _ESTIMATOR_CLASSES)
    args = _take(
        raw,
        where,
        {
            "in_channels": int,
            "out_channels": int,
            "causal": bool,
            "channels": (list, tuple),
            "dropout": _NUM,
            "attention_head_dim": int,
            "n_blocks": int,
            "num_mid_blocks": int,
            "num_heads": int,
            "act_fn": "gelu",
            "static_chunk_size": int,
            "num_decoding_left_chunks": int,
        },
    )
    if node.target.endswith(".ConditionalDecoder") and not args.get("causal", False):
        raise ConfigError(f"{where}: only the causal estimator (causal: True) is supported")
    cfg = EstimatorConfig()
    for k in ("in_channels", "out_channels", "attention_head_dim", "n_blocks", "num_mid_blocks", "num_heads"):
        if k in args:
            setattr(cfg, k, args[k])
    if "channels" in args:
        cfg.channels = _int_list(args["channels"], f"{where}.channels")
    if len(cfg.channels) != 1:
        raise ConfigError(
            f"{where}.channels: only one UNet level is supported (CosyVoice2 uses [256]), got {list(cfg.channels)}"
        )
    return cfg


def _read_flow(node: Any) -> FlowConfig:
    where = "flow"
    args = _take(
        _obj(node, where, _FLOW_CLASSES),
        where,
        {
            "input_size": int,
            "output_size": int,
            "spk_embed_dim": int,
            "output_type": "mel",
            "vocab_size": int,
            "input_frame_rate": int,
            "only_mask_loss": bool,
            "token_mel_ratio": int,
            "pre_lookahead_len": int,
            "encoder": _ANY,
            "decoder": _ANY,
            "length_regulator": type(None),
            "decoder_conf": dict,
            "mel_feat_conf": dict,
        },
    )
    cfg = FlowConfig()
    for k in (
        "input_size",
        "output_size",
        "spk_embed_dim",
        "vocab_size",
        "input_frame_rate",
        "token_mel_ratio",
        "pre_lookahead_len",
    ):
        if k in args:
            setattr(cfg, k, args[k])
    if "encoder" not in args or "decoder" not in args:
        raise ConfigError("flow: needs both 'encoder' and 'decoder'")
    cfg.encoder = _read_encoder(args["encoder"])
    cfg.encoder.pre_lookahead_len = cfg.pre_lookahead_len
    cfg.encoder.upsample_stride = cfg.token_mel_ratio

    where = "flow.decoder"
    dec = _take(
        _obj(args["decoder"], where, _CFM_CLASSES),
        where,
        {"in_channels": int, "n_spks": 1, "spk_emb_dim": int, "cfm_params": _ANY, "estimator": _ANY},
    )
    cfm = CFMConfig()
    if "spk_emb_dim" in dec:
        cfm.spk_emb_dim = dec["spk_emb_dim"]
    params = dec.get("cfm_params")
    if isinstance(params, Tagged):  # !new:omegaconf.DictConfig {content: {...}}
        if params.target != "omegaconf.DictConfig" or not isinstance(params.value, dict):
            raise ConfigError(f"{where}.cfm_params: unsupported {params.target!r}")
        params = params.value.get("content", params.value)
    if params is not None:
        if not isinstance(params, dict):
            raise ConfigError(f"{where}.cfm_params: expected a mapping")
        p = _take(
            params,
            f"{where}.cfm_params",
            {
                "sigma_min": _NUM,
                "solver": "euler",
                "t_scheduler": str,
                "training_cfg_rate": _NUM,
                "inference_cfg_rate": _NUM,
                "reg_loss_type": str,
            },
        )
        if "t_scheduler" in p:
            if p["t_scheduler"] not in ("cosine", "linear"):
                raise ConfigError(f"{where}.cfm_params.t_scheduler: unsupported {p['t_scheduler']!r}")
            cfm.t_scheduler = p["t_scheduler"]
        if "inference_cfg_rate" in p:
            cfm.inference_cfg_rate = float(p["inference_cfg_rate"])
    cfg.cfm = cfm
    if "estimator" not in dec:
        raise ConfigError(f"{where}: missing 'estimator'")
    cfg.estimator = _read_estimator(dec["estimator"])

    mel = cfg.output_size
    if cfm.spk_emb_dim != mel:
        raise ConfigError(f"{where}.spk_emb_dim {cfm.spk_emb_dim} must equal flow.output_size {mel}")
    if cfg.estimator.in_channels != 4 * mel or cfg.estimator.out_channels != mel:
        raise ConfigError(
            f"flow.decoder.estimator: in/out channels "
            f"{cfg.estimator.in_channels}/{cfg.estimator.out_channels}"
            f" do not fit {mel} mel bins (expected {4 * mel}/{mel}: x, mu, speaker, cond)"
        )
    if cfg.encoder.input_size != cfg.input_size or cfg.encoder.output_size != cfg.input_size:
        raise ConfigError(
            f"flow.encoder: input_size/output_size ({cfg.encoder.input_size}/{cfg.encoder.output_size}) "
            f"must equal flow.input_size {cfg.input_size}"
        )
    cfg.encoder_chunk = 2 * cfg.input_frame_rate
    cfg.estimator_chunk = 2 * cfg.input_frame_rate * cfg.token_mel_ratio
    return cfg


def _read_hift(node: Any) -> HiFTConfig:
    where = "hift"
    args = _take(
        _obj(node, where, _HIFT_CLASSES),
        where,
        {
            "in_channels": int,
            "base_channels": int,
            "nb_harmonics": int,
            "sampling_rate": int,
            "nsf_alpha": _NUM,
            "nsf_sigma": _NUM,
            "nsf_voiced_threshold": _NUM,
            "upsample_rates": _ANY,
            "upsample_kernel_sizes": _ANY,
            "istft_params": dict,
            "resblock_kernel_sizes": _ANY,
            "resblock_dilation_sizes": _ANY,
            "source_resblock_kernel_sizes": _ANY,
            "source_resblock_dilation_sizes": _ANY,
            "lrelu_slope": _NUM,
            "audio_limit": _NUM,
            "f0_predictor": _ANY,
        },
    )
    cfg = HiFTConfig()
    for k in ("in_channels", "base_channels", "nb_harmonics", "sampling_rate"):
        if k in args:
            setattr(cfg, k, args[k])
    for k in ("nsf_alpha", "nsf_sigma", "nsf_voiced_threshold", "lrelu_slope", "audio_limit"):
        if k in args:
            setattr(cfg, k, float(args[k]))
    for k in (
        "upsample_rates",
        "upsample_kernel_sizes",
        "resblock_kernel_sizes",
        "source_resblock_kernel_sizes",
    ):
        if k in args:
            setattr(cfg, k, _int_list(args[k], f"{where}.{k}"))
    for k in ("resblock_dilation_sizes", "source_resblock_dilation_sizes"):
        if k in args:
            setattr(cfg, k, _int_lists(args[k], f"{where}.{k}"))
    if "istft_params" in args:
        ist = _take(args["istft_params"], f"{where}.istft_params", {"n_fft": int, "hop_len": int})
        cfg.n_fft = ist.get("n_fft", cfg.n_fft)
        cfg.hop_len = ist.get("hop_len", cfg.hop_len)
    if "f0_predictor" not in args:
        raise ConfigError(f"{where}: missing 'f0_predictor'")
    f0 = _take(
        _obj(args["f0_predictor"], f"{where}.f0_predictor", _F0_CLASSES),
        f"{where}.f0_predictor",
        {"num_class": 1, "in_channels": int, "cond_channels": int},
    )
    cfg.f0_predictor = F0PredictorConfig(**f0)
    n_up = len(cfg.upsample_rates)
    if len(cfg.upsample_kernel_sizes) != n_up:
        raise ConfigError(f"{where}: upsample_rates and upsample_kernel_sizes differ in length")
    if len(cfg.source_resblock_kernel_sizes) != n_up or len(cfg.source_resblock_dilation_sizes) != n_up:
        raise ConfigError(f"{where}: need one source resblock per upsampling stage ({n_up})")
    if len(cfg.resblock_kernel_sizes) != len(cfg.resblock_dilation_sizes):
        raise ConfigError(f"{where}: resblock_kernel_sizes and resblock_dilation_sizes differ in length")
    if cfg.base_channels % (2**n_up):
        raise ConfigError(f"{where}: base_channels {cfg.base_channels} not divisible by 2**{n_up}")
    return cfg


def parse_config(text: str) -> DecoderConfig:
    """Build a :class:`DecoderConfig` from the text of a ``cosyvoice.yaml``."""
    data = load_yaml_data(text)
    for key in ("flow", "hift"):
        if key not in data:
            raise ConfigError(f"cosyvoice.yaml has no '{key}:' section (is this a CosyVoice2 decoder config?)")
    flow = _read_flow(data["flow"])
    hift = _read_hift(data["hift"])
    sr = data.get("sample_rate", hift.sampling_rate)
    if not isinstance(sr, int) or isinstance(sr, bool) or sr <= 0:
        raise ConfigError(f"sample_rate must be a positive integer, got {sr!r}")
    if sr != hift.sampling_rate:
        raise ConfigError(f"sample_rate {sr} differs from hift.sampling_rate {hift.sampling_rate}")
    if hift.in_channels != flow.output_size:
        raise ConfigError(f"hift.in_channels {hift.in_channels} != flow.output_size {flow.output_size}")
    return DecoderConfig(sample_rate=sr, flow=flow, hift=hift)


def cosyvoice2_config() -> DecoderConfig:
    """The real CosyVoice2-0.5B decoder dimensions (what the official cosyvoice.yaml yields)."""
    hift = HiFTConfig(
        sampling_rate=24000,
        upsample_rates=(8, 5, 3),
        upsample_kernel_sizes=(16, 11, 7),
        source_resblock_kernel_sizes=(7, 7, 11),
        source_resblock_dilation_sizes=((1, 3, 5), (1, 3, 5), (1, 3, 5)),
    )
    return DecoderConfig(sample_rate=24000, flow=FlowConfig(), hift=hift)


def load_config(path: str | Path) -> DecoderConfig:
    """Read ``cosyvoice.yaml`` from disk (see :func:`parse_config`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        return parse_config(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def config_to_dict(cfg: Any) -> dict:
    """Plain-dict view of a config dataclass (for logging and tests)."""
    return dataclasses.asdict(cfg)
