"""Test-side clients that speak only the external contract, as the cart,
the warehouse and an operator would: plain confluent-kafka and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient


def uid(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def checkout_event(
    session_id: str,
    items: list[tuple[str, int, int]],
    token: str = "tok_visa",
    promo_code: str | None = None,
    event_id: str | None = None,
) -> bytes:
    data: dict[str, Any] = {
        "checkout_session_id": session_id,
        "customer_id": "cust_42",
        "currency": "USD",
        "items": [{"sku": s, "quantity": q, "unit_price": p} for s, q, p in items],
        "payment": {"method": "card", "token": token},
        "shipping_address": {"name": "A. Buyer", "line1": "1 Main St", "city": "Springfield",
                             "postal_code": "12345", "country": "US"},
    }
    if promo_code:
        data["promo_code"] = promo_code
    return json.dumps({
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": "urn:test:cart",
        "type": "CheckoutRequested",
        "time": "2026-11-25T10:00:00Z",
        "subject": session_id,
        "datacontenttype": "application/json",
        "data": data,
    }).encode()


def order_event(
    type_: str,
    order_id: str,
    session_id: str,
    event_id: str | None = None,
    **extra: Any,
) -> bytes:
    """An event on orders.requests or fulfillment.events, as customer service
    or the warehouse would send it (``extra``: reason, carrier, ...)."""
    return json.dumps({
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": "urn:test:outside",
        "type": type_,
        "time": "2026-11-26T10:00:00Z",
        "subject": session_id,
        "datacontenttype": "application/json",
        "data": {"order_id": order_id, "checkout_session_id": session_id, **extra},
    }).encode()


@dataclass
class Bus:
    """Produce to and read from the project's topics like an outside client."""

    bootstrap: str
    _producer: Producer | None = None
    _readers: dict[str, Consumer] = field(default_factory=dict)
    _seen: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all",
                                       "enable.idempotence": True, "linger.ms": 1})
        return self._producer

    def send(self, topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, key=key.encode(), value=value)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)

    def flush(self) -> None:
        self.producer.flush(30)

    def _reader(self, topic: str) -> Consumer:
        if topic not in self._readers:
            c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": uid("reader"),
                          "enable.auto.commit": False})
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            c.assign([TopicPartition(topic, p, 0) for p in parts])
            self._readers[topic] = c
            self._seen[topic] = []
        return self._readers[topic]

    def poll(self, topic: str, seconds: float = 0.2) -> list[dict[str, Any]]:
        """Everything read so far from ``topic`` (all partitions, from the start)."""
        reader = self._reader(topic)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for msg in reader.consume(1000, 0.05):
                if msg.error():
                    continue
                headers = {k: (v.decode() if v else "") for k, v in (msg.headers() or [])}
                try:
                    value: Any = json.loads(msg.value())
                except (ValueError, UnicodeDecodeError, RecursionError):  # hostile bytes
                    value = None
                self._seen[topic].append({"key": msg.key().decode() if msg.key() else None,
                                          "value": value, "raw": msg.value(), "headers": headers,
                                          "partition": msg.partition(), "offset": msg.offset()})
        return self._seen[topic]

    def events_for(self, topic: str, session_id: str, seconds: float = 0.2) -> list[dict[str, Any]]:
        return [r["value"] for r in self.poll(topic, seconds)
                if r["value"] is not None and isinstance(r["value"], dict)
                and r["value"].get("subject") == session_id]

    def wait_for(self, topic: str, session_ids: Iterable[str], timeout: float = 60.0,
                 count: int = 1) -> dict[str, list[dict[str, Any]]]:
        """Wait until each session has ``count`` events on ``topic``."""
        wanted = set(session_ids)
        end = time.monotonic() + timeout
        while True:
            rows = self.poll(topic, 0.2)
            found: dict[str, list[dict[str, Any]]] = {s: [] for s in wanted}
            for r in rows:
                v = r["value"]
                if isinstance(v, dict) and v.get("subject") in wanted:
                    found[v["subject"]].append(v)
            if all(len(found[s]) >= count for s in wanted) or time.monotonic() > end:
                return found
            time.sleep(0.05)

    def result(self, session_id: str, timeout: float = 60.0) -> dict[str, Any]:
        found = self.wait_for("checkout.results", [session_id], timeout)[session_id]
        assert found, f"no result for {session_id} within {timeout}s"
        return found[0]

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
        for c in self._readers.values():
            c.close()


def cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).with_name("checkout-saga"))
    proc = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"checkout-saga {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def cli_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(cli(env, *args, "--json").stdout)


def topic_exists(bootstrap: str, topic: str) -> bool:
    return topic in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics


def environ(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Ask a worker process to stop; kill it if it has not within 30 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
