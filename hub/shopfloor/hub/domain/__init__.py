"""Pure calculators: shift calendars, buckets, utilization. No FastAPI, no MQTT, no clock."""
