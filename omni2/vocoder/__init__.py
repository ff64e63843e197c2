"""CosyVoice2 speech-unit decoder: flow matching (units -> mel) and HiFT (mel -> 24 kHz audio).

dec = load_decoder("checkpoints/cosy2_decoder", device="cpu")
wav = dec.vocode(units)                      # offline, float32 [960 * len(units)]
s = dec.stream()                             # one per utterance
piece = s.push(units_so_far_new)             # 0 or more new samples each time
tail = s.finalize()                          # flush
"""

from omni2.vocoder.config import DecoderConfig, load_config, parse_config
from omni2.vocoder.token2wav import Decoder, DecoderStream, UnitsError, load_decoder

__all__ = [
    "Decoder",
    "DecoderConfig",
    "DecoderStream",
    "UnitsError",
    "load_config",
    "load_decoder",
    "parse_config",
]
