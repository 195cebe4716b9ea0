"""ehrsim's HL7 v2 ADT feed over MLLP, against a minimal ACK server (tests/ehrsim/mllp_server.py)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import hl7
import httpx
import pytest

from ehrsim.server import create_app
from tests.ehrsim.mllp_server import AckServer

if TYPE_CHECKING:
    from tests.ehrsim.conftest import MakeConfig, Run, Wait

pytestmark = pytest.mark.anyio
EPIC_MRN_OID = "1.2.840.114350.1.13.0.1.7.5.737384.14"


def _mllp(port: int, **overrides: object) -> dict[str, object]:
    return {
        "port": port,
        "sending_application": "EPIC",
        "sending_facility": "GENHOSP",
        "ack_timeout_s": 2.0,  # the tests of timeouts shorten it
        "backoff_initial_s": 0.005,
        "backoff_max_s": 0.05,
        "max_attempts": 1000,
        **overrides,
    }


@pytest.fixture
async def acks() -> AsyncIterator[AckServer]:
    server = AckServer()
    await server.start()
    yield server
    if server._server is not None:
        await server.stop()


Feed = Callable[..., Any]


@pytest.fixture
def feed(make_config: MakeConfig, run: Run) -> Feed:
    """The simulator with an MLLP feed to ``port``; keyword arguments override facility fields."""

    @asynccontextmanager
    async def open_feed(
        port: int, *, profile: str = "epic", mllp: dict[str, object] | None = None, **facility: object
    ) -> AsyncIterator[httpx.AsyncClient]:
        config = make_config(profile=profile, mllp=_mllp(port, **(mllp or {})), **facility)
        app = create_app(config, public_base_url="http://ehr.test")
        async with run(app) as client:
            client.app = app  # type: ignore[attr-defined] # the store is the FHIR ground truth
            yield client

    return open_feed


async def _state(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/_admin/general/mllp")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _drained(client: httpx.AsyncClient, wait: Wait, within_s: float = 10.0) -> dict[str, Any]:
    async def done() -> bool:
        stats = (await _state(client))["stats"]
        return bool(stats["queued"] > 0 and stats["pending"] == 0)

    await wait(done, within_s=within_s)
    return await _state(client)


async def _activity(client: httpx.AsyncClient, changes: int) -> None:
    response = await client.post("/_admin/general/activity", json={"changes": changes})
    assert response.status_code == 200


async def _faults(client: httpx.AsyncClient, **faults: object) -> None:
    response = await client.post("/_admin/general/faults", json=faults)
    assert response.status_code == 200, response.text


def _store(client: httpx.AsyncClient) -> Any:
    return client.app.state.facilities["general"].store  # type: ignore[attr-defined]


def _field(message: hl7.Message, segment: str, number: int) -> str:
    return str(message.segment(segment)[number])


# -- messages ------------------------------------------------------------------------------------------


async def test_each_patient_and_encounter_change_is_one_message_matching_the_fhir_truth(
    feed: Feed, acks: AckServer, wait: Wait
) -> None:
    async with feed(acks.port) as client:
        await _activity(client, 300)
        state = await _drained(client, wait)
        truth = (await client.get("/_admin/general/truth")).json()["resources"]
        store = _store(client)
        messages = state["messages"]
        assert {m["status"] for m in messages} == {"acked"}
        assert acks.control_ids() == [m["control_id"] for m in messages]  # once each, in order
        assert len(set(acks.control_ids())) == len(messages)
        # One message per change: per resource, the versions announced run without a gap up to the
        # current one (from 1 if created during the activity, from 2 if seeded before it).
        announced: dict[tuple[str, str], list[int]] = defaultdict(list)
        for m in messages:
            announced[(m["resourceType"], m["id"])].append(m["version"])
        for item in truth:
            key = (item["resourceType"], item["id"])
            if key[0] not in ("Patient", "Encounter"):
                assert key not in announced
                continue
            versions = announced.get(key, [])
            current = int(item["versionId"])
            if not versions:
                assert current == 1, f"{key} changed without a message"
                continue
            assert versions == list(range(versions[0], current + 1)), key
            assert versions[0] in (1, 2)
        events = Counter(m["event"] for m in messages)
        assert {"A04", "A08", "A01"} <= set(events), events
        latest = {(m["resourceType"], m["id"]): r for m, r in zip(messages, acks.received, strict=True)}
        for (resource_type, id_), received in latest.items():
            _assert_matches_fhir(received.message, store, resource_type, id_)


async def test_adt_activity_is_patient_and_encounter_changes_only(
    feed: Feed, acks: AckServer, wait: Wait
) -> None:
    async with feed(acks.port) as client:
        response = await client.post("/_admin/general/activity", json={"changes": 200, "adt": True})
        assert response.status_code == 200
        state = await _drained(client, wait)
        store = _store(client)
    messages = state["messages"]
    assert len(messages) == 200  # every change was a Patient or Encounter change, each announced once
    assert {"A01", "A03", "A04", "A08", "A11"} <= {m["event"] for m in messages}
    by_visit: dict[str, list[hl7.Message]] = defaultdict(list)
    for received in acks.received:
        if _field(received.message, "PV1", 2) != "N":
            by_visit[str(received.message.segment("PV1")(19)(1)(1))].append(received.message)
    admitted_then_discharged = 0
    for visit, visit_messages in by_visit.items():
        events = [_field(m, "EVN", 1) for m in visit_messages]
        record = store.get("Encounter", visit)
        if events[:2] == ["A01", "A03"]:
            admitted_then_discharged += 1
            discharge = visit_messages[1].segment("PV1")
            assert str(discharge(45)) == _hl7_ts(record.resource["period"]["end"])
    assert admitted_then_discharged > 0


async def test_adt_activity_needs_encounters(make_config: MakeConfig, run: Run) -> None:
    async with run(create_app(make_config(profile="generic"))) as client:
        response = await client.post("/_admin/general/activity", json={"changes": 1, "adt": True})
    assert response.status_code == 400


def _assert_matches_fhir(message: hl7.Message, store: Any, resource_type: str, id_: str) -> None:
    """The last message about a resource says what its FHIR resource says now."""
    assert _field(message, "MSH", 12) == "2.5.1"
    assert _field(message, "MSH", 3) == "EPIC"
    assert _field(message, "MSH", 4) == "GENHOSP"
    event = _field(message, "EVN", 1)
    assert _field(message, "MSH", 9).startswith(f"ADT^{event}^ADT_A")
    record = store.get(resource_type, id_)
    if resource_type == "Encounter":
        encounter = record.resource
        pv1 = message.segment("PV1")
        assert str(pv1(19)(1)(1)) == id_
        assert str(pv1(2)) == {"IMP": "I", "AMB": "O", "EMER": "E"}[encounter["class"]["code"]]
        assert str(pv1(44)) == _hl7_ts(encounter["period"]["start"])
        if record.deleted or encounter["status"] == "entered-in-error":
            assert event == "A11"
        elif record.version > 1:
            assert event == "A03"
            assert str(pv1(45)) == _hl7_ts(encounter["period"]["end"])
        else:
            assert event == "A01"
        patient = store.get("Patient", encounter["subject"]["reference"].removeprefix("Patient/")).resource
    else:
        patient = record.resource
        assert event == ("A04" if record.version == 1 else "A08")
        assert _field(message, "PV1", 2) == "N"
    pid = message.segment("PID")
    mrn = [rep for rep in pid(3) if str(rep(5)) == "MR"]
    assert len(mrn) == 1
    fhir_mrn = patient["identifier"][0]
    assert str(mrn[0](1)) == fhir_mrn["value"].strip()  # Epic pads the FHIR value; v2 carries it trimmed
    assert str(mrn[0](4)) == f"EPI&{EPIC_MRN_OID}&ISO"
    assert fhir_mrn["system"] == f"urn:oid:{EPIC_MRN_OID}"
    assert [str(rep(1)) for rep in pid(3) if str(rep(5)) == "PI"] == [patient["id"]]
    if resource_type == "Encounter":
        return  # the patient's demographics as they were then: a later A08 may have changed them
    official = patient["name"][0]
    assert str(pid(5)) == f"{official['family']}^{official['given'][0]}"
    assert str(pid(7)) == patient["birthDate"].replace("-", "")
    assert str(pid(13)(1)(1)) == patient["telecom"][0]["value"]


def _hl7_ts(fhir: str) -> str:
    return fhir[:19].replace("-", "").replace("T", "").replace(":", "") + "+0000"


@pytest.mark.parametrize(
    "case", [("oracle", "2.3", "ADT^A04"), ("meditech", "2.4", "ADT^A04^ADT_A01")], ids=["oracle", "meditech"]
)
async def test_the_version_is_the_profiles(
    feed: Feed, acks: AckServer, wait: Wait, case: tuple[str, str, str]
) -> None:
    profile, version, message_type = case
    async with feed(acks.port, profile=profile, patients=0) as client:
        await _activity(client, 1)  # the first change of an empty chart creates a patient
        await _drained(client, wait)
    (received,) = acks.received
    assert _field(received.message, "MSH", 12) == version
    assert _field(received.message, "MSH", 9) == message_type
    authority = str(received.message.segment("PID")(3)(2)(4))
    assert authority == "GENHOSP&http://ehrsim.example.org/general/mrn&URI"


def test_a_profile_without_a_v2_feed_is_refused(make_config: MakeConfig) -> None:
    with pytest.raises(ValueError, match="has no HL7 v2 feed"):
        make_config(profile="athena", mllp=_mllp(2575))


# -- acknowledgements ------------------------------------------------------------------------------------


async def test_no_ack_is_resent_after_the_timeout(feed: Feed, acks: AckServer, wait: Wait) -> None:
    acks.respond = lambda control_id, seen: None if seen == 1 else "AA"
    async with feed(acks.port, mllp={"ack_timeout_s": 0.1}) as client:
        await _activity(client, 40)
        state = await _drained(client, wait)
    for message in state["messages"]:
        assert message["status"] == "acked"
        assert message["attempts"] >= 2  # more when a loaded machine answers late
        assert acks.seen(message["control_id"]) == message["attempts"]
    assert state["stats"]["ack_timeouts"] == sum(m["attempts"] - 1 for m in state["messages"])


async def test_ae_is_resent_and_ar_is_given_up_without_stopping_the_feed(
    feed: Feed, acks: AckServer, wait: Wait
) -> None:
    rejected: set[str] = set()

    def respond(control_id: str, seen: int) -> str:
        if not rejected:
            rejected.add(control_id)  # the first message is refused for good
        if control_id in rejected:
            return "AR"
        return "AE" if seen == 1 else "AA"

    acks.respond = respond
    async with feed(acks.port) as client:
        await _activity(client, 40)
        state = await _drained(client, wait)
    first, *rest = state["messages"]
    assert first["status"] == "rejected"
    assert first["ack_code"] == "AR"
    assert acks.seen(first["control_id"]) == 1
    assert rest
    assert all(m["status"] == "acked" and m["attempts"] == 2 for m in rest)
    assert state["stats"]["rejected"] == 1


async def test_a_message_never_acked_is_given_up_after_max_attempts(
    feed: Feed, acks: AckServer, wait: Wait
) -> None:
    acks.respond = lambda control_id, seen: "AE"
    async with feed(acks.port, mllp={"max_attempts": 3}, patients=0) as client:
        await _activity(client, 1)
        state = await _drained(client, wait)
    (message,) = state["messages"]
    assert message["status"] == "failed"
    assert message["attempts"] == 3
    assert acks.seen(message["control_id"]) == 3


# -- faults -------------------------------------------------------------------------------------------------


async def test_a_connection_dropped_mid_message_is_reopened_and_the_message_resent(
    feed: Feed, acks: AckServer, wait: Wait
) -> None:
    async with feed(acks.port, faults={"mllp": {"drop_connection_rate": 0.3}}) as client:
        await _activity(client, 200)
        state = await _drained(client, wait)
    drops = state["stats"]["connection_drops"]
    assert drops > 0
    assert acks.partial_frames == drops  # the listener saw each connection end inside a frame
    assert acks.connections == drops + 1
    assert all(m["status"] == "acked" for m in state["messages"])
    assert {m["control_id"] for m in state["messages"]} == set(acks.control_ids())
    assert sum(m["attempts"] - 1 for m in state["messages"]) == drops


async def test_a_lost_ack_makes_the_listener_see_the_message_again(
    feed: Feed, acks: AckServer, wait: Wait
) -> None:
    faults = {"mllp": {"ack_lost_rate": 0.3}}
    async with feed(acks.port, mllp={"ack_timeout_s": 0.1}, faults=faults) as client:
        await _activity(client, 120)
        state = await _drained(client, wait, within_s=20)
    stats = state["stats"]
    assert stats["acks_lost"] > 0
    assert stats["ack_timeouts"] >= stats["acks_lost"]  # a loaded machine may also answer late
    assert len(acks.received) == len(state["messages"]) + stats["ack_timeouts"]
    assert all(m["status"] == "acked" for m in state["messages"])
    assert sum(1 for m in state["messages"] if acks.seen(m["control_id"]) > 1) > 0


async def test_duplicates_repeat_the_control_id(feed: Feed, acks: AckServer, wait: Wait) -> None:
    async with feed(acks.port, faults={"mllp": {"duplicate_rate": 1.0}}) as client:
        await _activity(client, 60)
        state = await _drained(client, wait)

        async def duplicates_answered() -> bool:
            return len(acks.received) == 2 * len(state["messages"])

        await wait(duplicates_answered)
    for message in state["messages"]:
        assert acks.seen(message["control_id"]) == 2
    received = acks.control_ids()
    assert received[0::2] == received[1::2]  # each right after its original
    assert received[0::2] == [m["control_id"] for m in state["messages"]]


async def test_reordering_delivers_every_message_out_of_order(
    feed: Feed, acks: AckServer, wait: Wait
) -> None:
    async with feed(acks.port, faults={"mllp": {"reorder_rate": 1.0}}) as client:
        await _activity(client, 100)
        state = await _drained(client, wait)
    in_order = [m["control_id"] for m in state["messages"]]
    assert sorted(acks.control_ids()) == sorted(in_order)
    assert acks.control_ids() != in_order
    assert state["stats"]["reordered"] > 0
    assert all(m["status"] == "acked" for m in state["messages"])


async def test_a_split_frame_arrives_in_several_reads(feed: Feed, acks: AckServer, wait: Wait) -> None:
    async with feed(acks.port, faults={"mllp": {"split_rate": 1.0}}) as client:
        await _activity(client, 60)
        state = await _drained(client, wait)
    assert acks.received
    assert all(r.reads >= 2 for r in acks.received)  # the listener had to reassemble each frame
    assert all(m["status"] == "acked" for m in state["messages"])


async def test_a_listener_down_for_a_while_gets_the_queue_when_it_is_back(
    feed: Feed, acks: AckServer, wait: Wait
) -> None:
    async with feed(acks.port) as client:
        await _activity(client, 50)
        first = await _drained(client, wait)
        await acks.stop()
        await _activity(client, 100)

        async def refused() -> bool:
            return bool((await _state(client))["stats"]["connect_failures"] >= 2)

        await wait(refused)
        assert (await _state(client))["stats"]["pending"] > 0
        await acks.start()  # the same port
        state = await _drained(client, wait)
    assert len(state["messages"]) > len(first["messages"])
    assert all(m["status"] == "acked" for m in state["messages"])
    assert set(acks.control_ids()) == {m["control_id"] for m in state["messages"]}
    assert acks.connections >= 2


async def test_a_connection_the_listener_closed_while_idle_is_reopened_without_a_failed_attempt(
    feed: Feed, acks: AckServer, wait: Wait
) -> None:
    acks.idle_timeout_s = 0.3
    async with feed(acks.port) as client:
        await _activity(client, 30)
        await _drained(client, wait)

        async def idle_closed() -> bool:
            return acks.closed == 1 and not (await _state(client))["connected"]

        await wait(idle_closed)
        await _activity(client, 30)
        state = await _drained(client, wait)
    assert acks.connections == 2, state["stats"]
    assert all(m["status"] == "acked" and m["attempts"] == 1 for m in state["messages"]), (
        state["stats"],
        [m for m in state["messages"] if m["attempts"] != 1],
    )
    assert state["stats"]["connections_lost"] == 0


async def test_link_down_queues_until_it_is_cleared(feed: Feed, acks: AckServer, wait: Wait) -> None:
    async with feed(acks.port) as client:
        await _activity(client, 30)
        await _drained(client, wait)
        await _faults(client, mllp={"link_down": True})

        async def connection_closed() -> bool:
            return acks.closed == 1

        await wait(connection_closed)
        await _activity(client, 60)
        queued = (await _state(client))["stats"]
        assert queued["pending"] > 0
        await _faults(client, mllp={"link_down": False})
        state = await _drained(client, wait)
    assert acks.connections == 2
    assert all(m["status"] == "acked" for m in state["messages"])
    assert set(acks.control_ids()) == {m["control_id"] for m in state["messages"]}
