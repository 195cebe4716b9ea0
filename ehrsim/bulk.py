"""Bulk Data ``$export`` jobs of one facility (FHIR Bulk Data IG, async request pattern).

Kick-off answers 202 with ``Content-Location`` (the status URL); a status poll answers 202 with
``X-Progress`` and ``Retry-After`` until the profile's number of polls has passed, then 200 with the
manifest; the files are ndjson, one or more per type (``bulk_file_resources``). A client may run one job
at a time: a second kick-off while its job is in progress answers 429 with ``Retry-After`` (the IG's
answer to too many concurrent requests). With ``_since`` and a profile that lists deletions
(``bulk_deleted``), the manifest's ``deleted`` names ndjson files of ``transaction`` Bundles whose entries
are ``DELETE {type}/{id}``: what was deleted since then. The data is a snapshot taken at kick-off. A
resource named in ``garbled`` (the ``bad_ndjson`` fault) is written cut short: its line is no JSON.

A Group-level export (``patients``: the Group's members at kick-off) holds only the members' Patients and
the resources in their compartments, as ``patient=`` searches find them (``compartment_patient``); a
type no patient scopes (Medication) is not exported. Its ``deleted`` lists only deletions of such
resources: a deleted resource keeps its last content, so the Patient it belonged to is known.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from ehrsim.instants import format_instant
from ehrsim.search import compartment_patient
from ehrsim.store import Record, ResourceStore

DELETIONS_PER_BUNDLE = 100


class ExportBusy(Exception):
    """The client already has a job in progress."""


@dataclass(frozen=True)
class OutputFile:
    type: str
    name: str
    count: int


@dataclass
class ExportJob:
    id: str
    client_id: str
    request_url: str
    transaction_time_ms: int
    files: dict[str, bytes]  # file name -> ndjson
    polls_left: int
    done: bool = False
    outputs: list[OutputFile] = field(default_factory=list)
    deleted: list[OutputFile] = field(default_factory=list)


class Exports:
    def __init__(
        self,
        store: ResourceStore,
        polls_until_done: int,
        *,
        list_deleted: bool = False,
        file_resources: int = 0,
    ) -> None:
        self._store = store
        self._polls_until_done = polls_until_done
        self._list_deleted = list_deleted
        self._file_resources = file_resources
        self._jobs: dict[str, ExportJob] = {}
        self._ids = itertools.count(1)
        self.kickoffs: list[tuple[str, str]] = []  # (job id, request URL) of every kick-off accepted

    def kickoff(
        self,
        client_id: str,
        request_url: str,
        types: list[str],
        since_ms: int | None,
        now_ms: int,
        *,
        garbled: frozenset[str] = frozenset(),
        patients: frozenset[str] | None = None,
    ) -> ExportJob:
        """``patients``: a Group-level export of these members (``None``: no narrowing by patient)."""
        if any(j.client_id == client_id and not j.done for j in self._jobs.values()):
            raise ExportBusy(client_id)
        job = ExportJob(
            id=f"job-{next(self._ids)}",
            client_id=client_id,
            request_url=request_url,
            transaction_time_ms=now_ms,
            files={},
            polls_left=self._polls_until_done,
        )
        gone: list[Record] = []
        for resource_type in types or self._store.resource_types:
            live: list[bytes] = []
            for r in self._store.records_of(resource_type):
                if since_ms is not None and r.last_updated < since_ms:
                    continue
                if patients is not None and compartment_patient(resource_type, r.resource) not in patients:
                    continue
                if not r.deleted:
                    garble = f"{r.resource_type}/{r.id}" in garbled
                    live.append(r.body[: len(r.body) // 2] if garble else r.body)
                elif self._list_deleted and since_ms is not None:
                    gone.append(r)
            size = self._file_resources or max(1, len(live))
            for n, start in enumerate(range(0, len(live), size), 1):
                chunk = live[start : start + size]
                name = f"{resource_type}-{n}.ndjson"
                job.files[name] = b"\n".join(chunk) + b"\n"
                job.outputs.append(OutputFile(resource_type, name, len(chunk)))
        for n, start in enumerate(range(0, len(gone), DELETIONS_PER_BUNDLE), 1):
            deletions = gone[start : start + DELETIONS_PER_BUNDLE]
            bundle = {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {"request": {"method": "DELETE", "url": f"{r.resource_type}/{r.id}"}} for r in deletions
                ],
            }
            name = f"deleted-{n}.ndjson"
            job.files[name] = json.dumps(bundle, separators=(",", ":")).encode() + b"\n"
            job.deleted.append(OutputFile("Bundle", name, 1))
        self._jobs[job.id] = job
        self.kickoffs.append((job.id, request_url))
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

    def state(self) -> dict[str, Any]:
        """For the admin API: every kick-off accepted, and the jobs not deleted (running or done)."""
        return {
            "kickoffs": [{"id": i, "request": url} for i, url in self.kickoffs],
            "jobs": [{"id": j.id, "done": j.done, "polls_left": j.polls_left} for j in self._jobs.values()],
        }

    @staticmethod
    def manifest(job: ExportJob, file_base: str) -> dict[str, Any]:
        def entry(f: OutputFile) -> dict[str, Any]:
            return {"type": f.type, "url": f"{file_base}/{job.id}/{f.name}", "count": f.count}

        manifest: dict[str, Any] = {
            "transactionTime": format_instant(job.transaction_time_ms),
            "request": job.request_url,
            "requiresAccessToken": True,
            "output": [entry(f) for f in job.outputs],
            "error": [],
        }
        if job.deleted:
            manifest["deleted"] = [entry(f) for f in job.deleted]
        return manifest
