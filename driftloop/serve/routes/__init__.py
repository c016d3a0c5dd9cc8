"""The serving routes, one router per resource: completions (and chat), adapters, feedback, health."""
