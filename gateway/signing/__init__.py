"""Signature schemes: pure functions from request parts and keys to headers or verdicts."""
