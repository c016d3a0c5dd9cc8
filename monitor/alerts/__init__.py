"""Alert policies: a safe condition grammar, hysteresis, cooldown, deduplication and channels."""
