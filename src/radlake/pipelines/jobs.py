"""Job rows left 'running' by a process that ended: found and marked, for every kind.

A job row records its host and process id. Ingest and batch predict each call
mark_interrupted before opening their own job, so a run killed with SIGKILL (no
chance to close its row) is marked by the next run on that host.
"""

from __future__ import annotations

import os
import socket

from sqlalchemy import select
from sqlalchemy.orm import Session

from radlake.catalog.models import Job

ACTIVE_JOBS: set[int] = set()
"""Jobs this process is running now (a long-lived API process runs many in turn)."""


def mark_interrupted(session: Session) -> None:
    """Jobs left 'running' by a process of this host that no longer exists, or by
    this process when it no longer runs them (the catalog failed as they ended)."""
    host, me = socket.gethostname(), os.getpid()
    for job in session.scalars(select(Job).where(Job.status == "running", Job.host == host)):
        ended = job.pid is not None and not _alive(job.pid)
        if ended or (job.pid == me and job.id not in ACTIVE_JOBS):
            job.status = "interrupted"
            job.error = "the process running this job ended before it finished"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
