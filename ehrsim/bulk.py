"""Bulk Data ``$export`` jobs of one facility (FHIR Bulk Data IG, async request pattern).

Kick-off answers 202 with ``Content-Location`` (the status URL); a status poll answers 202 with
``X-Progress`` and ``Retry-After`` until the profile's number of polls has passed, then 200 with the
manifest; the files are ndjson. A client may run one job at a time: a second kick-off while its job is
in progress answers 429. The data is a snapshot taken at kick-off.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from ehrsim.instants import format_instant
from ehrsim.store import ResourceStore


class ExportBusy(Exception):
    """The client already has a job in progress."""


@dataclass
class ExportJob:
    id: str
    client_id: str
    request_url: str
    transaction_time_ms: int
    files: dict[str, bytes]  # resource type -> ndjson
    polls_left: int
    done: bool = False
    counts: dict[str, int] = field(default_factory=dict)


class Exports:
    def __init__(self, store: ResourceStore, polls_until_done: int) -> None:
        self._store = store
        self._polls_until_done = polls_until_done
        self._jobs: dict[str, ExportJob] = {}
        self._ids = itertools.count(1)

    def kickoff(
        self, client_id: str, request_url: str, types: list[str], since_ms: int | None, now_ms: int
    ) -> ExportJob:
        if any(j.client_id == client_id and not j.done for j in self._jobs.values()):
            raise ExportBusy(client_id)
        files: dict[str, bytes] = {}
        counts: dict[str, int] = {}
        for resource_type in types or self._store.resource_types:
            bodies = [
                r.body
                for r in self._store.records_of(resource_type)
                if not r.deleted and (since_ms is None or r.last_updated >= since_ms)
            ]
            if bodies:
                files[resource_type] = b"\n".join(bodies) + b"\n"
                counts[resource_type] = len(bodies)
        job = ExportJob(
            id=f"job-{next(self._ids)}",
            client_id=client_id,
            request_url=request_url,
            transaction_time_ms=now_ms,
            files=files,
            polls_left=self._polls_until_done,
            counts=counts,
        )
        self._jobs[job.id] = job
        return job

    def get(self, job_id: str) -> ExportJob | None:
        return self._jobs.get(job_id)

    def poll(self, job: ExportJob) -> bool:
        """Count a status poll; ``True`` once the job is complete."""
        if job.polls_left > 0:
            job.polls_left -= 1
            return False
        job.done = True
        return True

    def cancel(self, job_id: str) -> bool:
        return self._jobs.pop(job_id, None) is not None

    @staticmethod
    def manifest(job: ExportJob, file_base: str) -> dict[str, Any]:
        return {
            "transactionTime": format_instant(job.transaction_time_ms),
            "request": job.request_url,
            "requiresAccessToken": True,
            "output": [
                {"type": rtype, "url": f"{file_base}/{job.id}/{rtype}.ndjson", "count": job.counts[rtype]}
                for rtype in job.files
            ],
            "error": [],
        }
