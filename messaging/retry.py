"""When a consumer stops retrying a message (pure: no clock, no I/O).

A transient failure (a lost connection, a lock timeout, a lost race) is
retried with capped exponential backoff and jitter. The question is when to
stop, and the two causes of a long run of transient failures need opposite
answers:

- an outage (PostgreSQL, Redis or the broker away): every message fails.
  Dead-lettering them would empty the topic into its ``.dlq`` for nothing;
  they must wait, uncommitted, until the outage ends or the worker stops;
- a message that keeps failing on its own (a row locked by a stuck session,
  a statement that always times out on its data): it holds its partition
  and, through the batch, the whole consumer, for ever.

The consumer cannot see the cause, but it can see the symptom that tells them
apart: whether other messages on the same consumer loop still succeed. So a
message is given up (dead-lettered as ``RetriesExhausted``) only when its
budget is spent (at least ``attempts`` failures over at least ``seconds``)
and some other message succeeded since its previous failure, that is while
it was waiting to try again: the infrastructure worked, so this message is
the problem. With no such evidence (an outage, or an idle consumer that has
nothing else to try) it is retried until the worker stops. A partial outage
(Redis down, so only hot-SKU reservations fail) looks like the second case
after the budget; that is why the budget is long (a minute by default) and
why it only applies to messages a redelivery or a re-send can replace: the
saga re-sends an unanswered command after its step timeout.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 10
    seconds: float = 60.0
    base_delay: float = 0.05
    max_delay: float = 5.0

    def delay(self, failures: int, jitter: float) -> float:
        """The wait after the ``failures``-th failure in a row; ``jitter`` in [0, 1)."""
        return min(self.max_delay, self.base_delay * 2 ** min(failures, 16)) * (0.5 + jitter)

    def give_up(self, failures: int, failing_for: float, others_succeeded: bool) -> bool:
        """True when a message that failed ``failures`` times over ``failing_for``
        seconds is to be dead-lettered; ``others_succeeded``: another message on
        the same loop succeeded since this one's previous failure."""
        return others_succeeded and failures >= self.attempts and failing_for >= self.seconds
