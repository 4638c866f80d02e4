"""The embedded stack and what runs on it for development: demo, bench."""
