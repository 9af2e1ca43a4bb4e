"""Sans-IO protocol cores: bytes in, typed frozen events out, commands encoded to bytes.

Nothing in this package imports asyncio, serial or a clock; the device sessions own the
I/O and pass time in.
"""
