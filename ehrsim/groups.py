"""The Groups of one facility: the cohorts a client exports (``Group/{id}/$export``: the members'
Patients and their compartments, ``ehrsim.bulk``) and, where the profile serves them (``group_read``),
reads (``GET Group/{id}``) and searches (``GET Group``, ``_id``).

A Group lists its members as ``member[].entity`` references to Patients; one configured without members
(``members: null``) is every live patient of the facility, as it is when read. Membership is set from the
config and changed through the admin API (a new version each time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ehrsim.instants import format_instant
from ehrsim.store import ResourceStore


@dataclass
class Group:
    id: str
    members: list[str] | None  # Patient ids; None: every live patient
    version: int
    last_updated_ms: int


class Groups:
    def __init__(self, store: ResourceStore, *, meta: bool) -> None:
        self._store = store
        self._meta = meta
        self._groups: dict[str, Group] = {}

    def put(self, group_id: str, members: list[str] | None, now_ms: int) -> Group:
        current = self._groups.get(group_id)
        version = current.version + 1 if current is not None else 1
        group = Group(group_id, list(members) if members is not None else None, version, now_ms)
        self._groups[group_id] = group
        return group

    def remove(self, group_id: str) -> bool:
        return self._groups.pop(group_id, None) is not None

    def get(self, group_id: str) -> Group | None:
        return self._groups.get(group_id)

    def all(self) -> list[Group]:
        return [self._groups[k] for k in sorted(self._groups)]

    def member_ids(self, group: Group) -> list[str]:
        """The Patient ids of the Group's members now, as its ``member[].entity`` references name them."""
        if group.members is None:
            return [r.id for r in self._store.records_of("Patient") if not r.deleted]
        return list(group.members)

    def resource(self, group: Group) -> dict[str, Any]:
        members = self.member_ids(group)
        resource: dict[str, Any] = {"resourceType": "Group", "id": group.id}
        if self._meta:
            resource["meta"] = {
                "versionId": str(group.version),
                "lastUpdated": format_instant(group.last_updated_ms),
            }
        resource |= {
            "type": "person",
            "actual": True,
            "quantity": len(members),
            "member": [{"entity": {"reference": f"Patient/{m}"}} for m in members],
        }
        return resource
