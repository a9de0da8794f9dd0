"""Chaos tests: several workers of one app on a replicated cluster under faults."""
