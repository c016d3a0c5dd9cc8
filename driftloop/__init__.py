"""driftloop: keep production LLMs good over time."""

__version__ = "0.1.0"
