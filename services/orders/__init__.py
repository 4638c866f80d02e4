"""The orders service: the order record and its state machine."""
