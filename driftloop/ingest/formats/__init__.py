"""Mapping of the log shapes that already exist (OTLP GenAI, OpenInference, OpenAI, LiteLLM) to v1 records."""
