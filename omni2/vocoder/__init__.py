"""CosyVoice2 speech-unit decoder: flow matching (units -> mel) and HiFT (mel -> 24 kHz audio)."""
