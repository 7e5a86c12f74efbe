"""The record step: result.json and runs.jsonl, resume, provenance, redaction, summary, atomic writes."""
