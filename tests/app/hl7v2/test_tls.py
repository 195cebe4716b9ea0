"""Optional TLS from certificate files: the listener speaks MLLP over TLS, and a plain-TCP client gets
no ACK from it."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, text

from app.cli.mllp import make_url_conninfo
from app.hl7v2.listener import tls_context
from app.hl7v2.mllp import END, frame
from tests.app.hl7v2.conftest import msa, start_listener
from tests.app.hl7v2.samples import a01


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def test_mllp_over_tls_is_acknowledged_after_commit(
    tmp_path: Path, mllp_database: str, clean: Engine
) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    gen = start_listener(
        make_url_conninfo(mllp_database), clean, tls=tls_context(str(cert_file), str(key_file))
    )
    running = next(gen)
    try:
        client_context = ssl.create_default_context(cafile=str(cert_file))
        with (
            socket.create_connection(("127.0.0.1", running.port), timeout=10) as raw,
            client_context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(frame(a01("TLS1")))
            answer = b""
            while END not in answer:
                chunk = tls.recv(65536)
                assert chunk
                answer += chunk
        assert msa(answer.strip(b"\x0b\x1c\r"))[:2] == ["AA", "TLS1"]
        with clean.connect() as conn:
            assert (
                conn.execute(text("SELECT count(*) FROM adt_inbox WHERE control_id = 'TLS1'")).scalar() == 1
            )

        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as plain:
            plain.sendall(frame(a01("PLAIN1")))
            try:
                reply = plain.recv(65536)
            except ConnectionResetError:
                reply = b""
            assert b"MSA" not in reply
    finally:
        next(gen, None)
