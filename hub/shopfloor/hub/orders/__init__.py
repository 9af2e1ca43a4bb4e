"""Customer orders: their items, the jobs that make them, a status derived from those jobs and
the machines they run on, and signed webhooks that push every status change from a durable
outbox.

- :mod:`.model`: the plain records (orders, items, changes, webhooks, deliveries).
- :mod:`.status`: the status, progress and ETA of one order, as pure functions.
- :mod:`.signing`: HMAC-SHA256 signatures of webhook bodies.
- :mod:`.backoff`: when a failed delivery is tried again.
- :mod:`.feed`: a bounded broadcast of order changes (the SSE stream reads it).
- :mod:`.book`: the owner of order state in a running hub: links jobs, re-derives
  statuses, records each change with its outbox rows in one transaction.
- :mod:`.delivery`: the worker that sends the outbox.
"""
