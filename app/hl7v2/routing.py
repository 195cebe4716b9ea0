"""Which facility an HL7 v2 message belongs to, and which peers may connect at all.

One listening port serves every facility: a message is routed by MSH-3 (sending application) and MSH-4
(sending facility) as each facility's ``hl7v2`` block declares them (an exact MSH-4 match wins over a
block that leaves ``sending_facility`` open), and only when the connection comes from an address that
facility allows. A connection from an address no facility allows is closed before anything is read.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Facility
from app.errors import MessageRejected
from app.facilities.schemas import Hl7v2Config
from app.hl7v2.message import Header

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Hl7Facility:
    id: str
    config: Hl7v2Config
    networks: tuple[Network, ...]

    def allows(self, peer: str) -> bool:
        address = _address(peer)
        return address is not None and any(address in net for net in self.networks)


@functools.lru_cache(maxsize=1024)  # asked for every message; an engine connects from a few addresses
def _address(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return address


class Directory:
    def __init__(self, facilities: Iterable[Hl7Facility]) -> None:
        self.facilities = list(facilities)
        self._by_sender = {
            (f.config.sending_application, f.config.sending_facility): f for f in self.facilities
        }

    def peer_allowed(self, peer: str) -> bool:
        return any(f.allows(peer) for f in self.facilities)

    def route(self, header: Header, peer: str) -> Hl7Facility:
        app = header.sending_application
        facility = self._by_sender.get((app, header.sending_facility or None)) or self._by_sender.get(
            (app, None)
        )
        if facility is None:
            raise MessageRejected("unknown_facility", "MSH-3/MSH-4 name no facility with an hl7v2 block")
        if not facility.allows(peer):
            raise MessageRejected(
                "peer_not_allowed_for_facility", "this address may not send for the facility"
            )
        return facility


def facility_of(row: Facility) -> Hl7Facility | None:
    if not row.hl7v2 or not row.enabled:
        return None
    config = Hl7v2Config.model_validate(row.hl7v2)
    networks = tuple(ipaddress.ip_network(peer, strict=False) for peer in config.allowed_peers)
    return Hl7Facility(row.id, config, networks)


def load_directory(session: Session) -> Directory:
    rows = session.scalars(select(Facility).order_by(Facility.id)).all()
    return Directory(f for f in (facility_of(row) for row in rows) if f is not None)
