"""Device sessions: one owner per link. A session opens its link, polls the device, feeds
the protocol, watches for silence, reconnects with backoff, and yields readings."""
