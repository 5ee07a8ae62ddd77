"""Training data: MIDI rendering into stems, the dataset layout, converters, the stem sampler.

See ``training/data/README.md``. Entry point: ``python -m training.data --help``.
"""
from .layout import DatasetError, Stem, Track, dataset_stats, load_dataset, load_track  # noqa: F401


def __getattr__(name):  # StemSampler without importing numpy-heavy modules up front
    if name == "StemSampler":
        from .sampler import StemSampler

        return StemSampler
    raise AttributeError(name)
