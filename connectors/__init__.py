"""Connectors to the outside: Kafka helpers, notification sinks, promotion targets."""
