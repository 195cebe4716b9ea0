"""Sample ADT messages written for these tests (no real patient): Epic-like v2.5.1, MEDITECH-like v2.3
with custom delimiters, an A40 merge, Z-segments, escape sequences and repeated identifiers."""

from __future__ import annotations

AUTHORITY = "GENHOSP"


def a01(
    control_id: str = "MSG00001", mrn: str = "M0000001", *, app: str = "EPIC", fac: str = "GENHOSP"
) -> bytes:
    segments = [
        f"MSH|^~\\&|{app}|{fac}|EHRI|EHRI|20261202130507-0500||ADT^A01^ADT_A01|{control_id}|P|2.5.1",
        "EVN|A01|20261202130500",
        f"PID|1||{mrn}^^^{AUTHORITY}^MR~999-99-9999^^^SSA^SS||TESTPATIENT^ALPHA||19700101|F",
        "PV1|1|I|4WEST^401^A^GENHOSP||||||||||||||||V0000001|||||||||||||||||||||||||20261202130000",
        "ZPD|site specific|kept",
    ]
    return "\r".join(segments).encode()


def a08_v23_custom(control_id: str = "MT00002", mrn: str = "M0000002") -> bytes:
    # MEDITECH-like: v2.3, field separator '#', components '$', repetition '*', escape '!', sub '@';
    # event only in EVN-1 (MSH-9 without a trigger), \n segment terminators, an escaped separator.
    segments = [
        f"MSH#$*!@#MEDITECH#NORTHCLINIC#EHRI#EHRI#200612021305##ADT#{control_id}#P#2.3",
        "EVN#A08#200612021305",
        f"PID#1##{mrn}$$$NORTH$MR*X1$$$OTHER$PI##DOE!F!SMITH$PAT",
        "PV1#1#O#CLINIC$12#",
    ]
    return "\n".join(segments).encode()


def a40(control_id: str = "MSG00040", survivor: str = "M0000001", prior: str = "M0000009") -> bytes:
    segments = [
        f"MSH|^~\\&|EPIC|GENHOSP|EHRI|EHRI|20261202140000||ADT^A40^ADT_A39|{control_id}|P|2.5.1",
        "EVN|A40|20261202140000",
        f"PID|1||  {survivor}  ^^^{AUTHORITY}^MR||TESTPATIENT^ALPHA",
        f"MRG|{prior}^^^{AUTHORITY}^MR",
    ]
    return ("\r\n".join(segments) + "\r\n").encode()


def oru(control_id: str = "LAB0001") -> bytes:
    return f"MSH|^~\\&|EPIC|GENHOSP|EHRI|EHRI|20261202||ORU^R01|{control_id}|P|2.5.1\rOBX|1|NM|x||1".encode()
