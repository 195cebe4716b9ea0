"""python-hl7's own command-line sender, ``mllp_send``, against the listener: a file of messages gets
one AA per message; a malformed one gets AR with its reason and is in quarantine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import Engine, text

from app.hl7v2.mllp import frame
from tests.app.hl7v2.conftest import Running, msa
from tests.app.hl7v2.samples import a01, a40

MLLP_SEND = str(Path(sys.executable).parent / "mllp_send")


def _send_file(path: Path, port: int) -> list[bytes]:
    done = subprocess.run(
        [MLLP_SEND, "-p", str(port), "-f", str(path), "127.0.0.1"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    # mllp_send prints each ACK as received (its MLLP envelope included), one per line.
    return [a.strip(b"\x0b\x1c\r\n") for a in done.stdout.split(b"\x1c\r\n") if a.strip()]


def test_mllp_send_delivers_a_file_and_gets_an_aa_per_message(
    listener: Running, clean: Engine, tmp_path: Path
) -> None:
    messages = [a01(f"F{n}", mrn=f"M{n:07d}") for n in range(10)] + [a40("F40")]
    path = tmp_path / "adt.hl7"
    path.write_bytes(b"".join(frame(m) for m in messages))
    acks = _send_file(path, listener.port)
    assert [msa(a)[:2] for a in acks] == [["AA", f"F{n}"] for n in range(10)] + [["AA", "F40"]]
    with clean.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM adt_inbox")).scalar() == 11


def test_mllp_send_gets_ar_with_a_reason_for_a_malformed_message_kept_in_quarantine(
    listener: Running, clean: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "bad.hl7"
    path.write_bytes(
        frame(a01("G1")) + frame(b"MSH|^~|EPIC|GENHOSP|||||ADT^A01|G2|P|2.5.1") + frame(a01("G3"))
    )
    acks = _send_file(path, listener.port)
    assert [msa(a)[0] for a in acks] == ["AA", "AR", "AA"]
    assert msa(acks[1])[1:3] == ["G2", "unparseable_msh"]
    with clean.connect() as conn:
        assert conn.execute(text("SELECT reason FROM adt_quarantine")).scalars().all() == ["unparseable_msh"]
