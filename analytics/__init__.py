"""The analytics app: a faust-streaming worker (``checkout-saga analytics``)
that watches the checkout and order topics, keeps windowed tables (checkouts
per minute by outcome, failure reasons, conversion, latency percentiles, hot-SKU
demand), marks hot SKUs for inventory and serves a live dashboard.

Pure rules are in ``analytics.stats``; the faust wiring in ``analytics.app``;
database reads and writes in ``analytics.sinks``.
"""
