"""The operator command line, ``checkout-saga``: the root app in ``app``, one module per
command group beside it, and the helpers they share in ``common``."""

from checkout_saga.cli.app import app, main

__all__ = ["app", "main"]
