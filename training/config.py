"""Model configuration: one dataclass describes every network of the family.

A checkpoint stores ``ModelConfig.to_dict()`` beside the weights so that the model can be
rebuilt from the file alone (``training.checkpoint.load_model``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

# The four classes of the Stem-JEPA baseline (ISMIR 2024): the project's one category vocabulary
# (engine/categories.py). Any category not listed maps to "other".
from engine.categories import CATEGORIES as CLASSES, class_index  # noqa: E402,F401


@dataclass(frozen=True)
class ModelConfig:
    """Encoder, predictor and beat head of Stem-JEPA and its zero-shot (text/FiLM) extension.

    Shapes: log-mel input ``(B, n_mels, T)`` with ``T <= max_frames``; patches ``patch x patch``
    give a grid ``(n_mels/patch) x (T/patch)`` = 5 x 50 for an 8-s window; tokens are ordered
    time-major (``index = column * freq_patches + row``).
    """

    name: str = "tiny"
    n_mels: int = 80
    max_frames: int = 800  # 8 s at 10 ms
    patch: int = 16  # 16 x 16 mel bins x frames; one time column = 160 ms
    d_model: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    # predictor (per patch MLP): predictor_layers Linear layers, hidden width predictor_hidden
    predictor_hidden: int = 512
    predictor_layers: int = 6
    conditioning: str = "film"  # "film" (free text, zero-shot) or "class" (4 learned classes)
    text_dim: int = 384  # width of the text embedding (all-MiniLM-L6-v2: 384, CLAP: 512)
    n_classes: int = len(CLASSES)
    beat_probes: int = 8  # beat activations per 160-ms column -> 50 Hz
    # Streaming (block-causal) encoder: a token attends to the tokens of its own and earlier time
    # columns only, at most ``max_columns`` columns back (8 s), so a token never changes when newer
    # audio arrives. Time position is then relative (a per-head linear bias on the column distance,
    # ALiBi-style) instead of the absolute time half of the sin-cos embedding, so cached tokens stay
    # valid while the window slides. The frequency half of the position embedding is kept.
    causal: bool = False

    @property
    def freq_patches(self) -> int:
        return self.n_mels // self.patch

    @property
    def max_columns(self) -> int:
        return self.max_frames // self.patch

    @property
    def beat_rate(self) -> float:
        """Beat activation frame rate in Hz (8 probes per 160 ms = 50 Hz)."""
        return self.beat_probes / (self.patch * 0.01)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)

    def with_(self, **kw) -> "ModelConfig":
        return replace(self, **kw)

    def validate(self) -> "ModelConfig":
        if self.n_mels % self.patch or self.max_frames % self.patch:
            raise ValueError("n_mels and max_frames must be multiples of patch")
        if self.d_model % self.heads:
            raise ValueError("d_model must be divisible by heads")
        if self.d_model % 4:
            raise ValueError("d_model must be divisible by 4 (2-D sin-cos position embedding)")
        if self.conditioning not in ("film", "class"):
            raise ValueError(f"conditioning must be 'film' or 'class', not {self.conditioning!r}")
        if self.predictor_layers < 2:
            raise ValueError("predictor needs at least 2 layers")
        return self


CONFIGS: dict[str, ModelConfig] = {
    # CPU-sized: one 8-s window in ~10 ms on 2 cores
    "tiny": ModelConfig(),
    # the paper's size: ViT-Base encoder, 1024-wide predictor
    "base": ModelConfig(name="base", d_model=768, depth=12, heads=12, predictor_hidden=1024),
    # for tests and CI export checks
    "micro": ModelConfig(name="micro", d_model=64, depth=2, heads=2, predictor_hidden=128, predictor_layers=3),
}


def get_config(name: str, **overrides) -> ModelConfig:
    if name not in CONFIGS:
        raise KeyError(f"unknown model config {name!r}; choose from {sorted(CONFIGS)}")
    return CONFIGS[name].with_(**overrides).validate()
