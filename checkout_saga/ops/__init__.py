"""Operator tools: verify, replay, dead letters, chaos, the supervisor of `up`."""
