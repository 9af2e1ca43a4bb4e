"""GRBL proxy mode: pass a sender's stream through unchanged and watch it for jobs."""

from shopfloor.agent.proxy.options import GrblOptions, ProxyOptions, parse_grbl_options
from shopfloor.agent.proxy.session import GrblProxySession
from shopfloor.agent.proxy.watcher import StreamWatcher, WatcherSettings

__all__ = [
    "GrblOptions",
    "GrblProxySession",
    "ProxyOptions",
    "StreamWatcher",
    "WatcherSettings",
    "parse_grbl_options",
]
