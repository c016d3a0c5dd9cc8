"""Continuous improvement: dataset building, LoRA fine-tuning, evaluation gate (extra: driftloop[retrain])."""
