"""Jobs: one run of one program on one machine, with progress and an ETA.

:class:`JobBook` keeps them (fed by ingest, stored in the ``jobs`` table, announced to
listeners); :mod:`shopfloor.hub.jobs.eta` estimates when each will be done.
"""

from shopfloor.hub.jobs.book import JobBook, JobListener, find_order_ref
from shopfloor.hub.store.job_records import EndReason, JobBookStore, JobRecord

__all__ = ["EndReason", "JobBook", "JobBookStore", "JobListener", "JobRecord", "find_order_ref"]
