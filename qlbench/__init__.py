"""qlbench: does quantizing the model during LoRA fine-tuning cost quality, where, and how many bits are enough?

Importing the package is cheap: heavy libraries (torch, transformers, peft) load inside the functions that need them.
"""

__version__ = "0.1.0"


def sweep(*args, **kwargs):
    """Run a study's grid as a submitit job array (or local processes); see `qlbench.cluster.sweep.sweep`."""
    from qlbench.cluster.sweep import sweep as _sweep

    return _sweep(*args, **kwargs)
