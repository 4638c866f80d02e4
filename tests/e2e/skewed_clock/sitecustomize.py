"""Imported by Python at start-up when this folder is on PYTHONPATH: sets the
process's wall clock CHECKOUT_TEST_CLOCK_SKEW_SECONDS off, for every Python
reader of it (``time.time``, ``time.time_ns``, ``datetime.now``,
``datetime.utcnow``). The monotonic clock, which asyncio times its waits with,
is left alone, as is C code's clock (librdkafka's): libfaketime, which would
skew that too, hangs librdkafka's metadata requests.
"""

import datetime as _datetime
import os
import time as _time

_SKEW = float(os.environ.get("CHECKOUT_TEST_CLOCK_SKEW_SECONDS", "0"))

if _SKEW:
    _real_time, _real_time_ns = _time.time, _time.time_ns
    _time.time = lambda: _real_time() + _SKEW
    _time.time_ns = lambda: _real_time_ns() + int(_SKEW * 1e9)

    class _SkewedDatetime(_datetime.datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
            return super().now(tz) + _datetime.timedelta(seconds=_SKEW)

        @classmethod
        def utcnow(cls):  # type: ignore[no-untyped-def, override]
            return super().utcnow() + _datetime.timedelta(seconds=_SKEW)

        @classmethod
        def today(cls):  # type: ignore[no-untyped-def, override]
            return cls.now()

    _datetime.datetime = _SkewedDatetime  # type: ignore[misc]
