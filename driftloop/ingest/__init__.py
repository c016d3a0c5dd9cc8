"""Kafka → database ingestion: decode/validate, redact, batch, write, commit."""
