"""ehrsim: a simulated FHIR R4 EHR for tests, the demo and the benchmarks.

One ASGI app serves every configured facility under ``/{facility}``, each with a vendor profile
(``ehrsim.profiles``: epic, oracle, athena, meditech, medplum, hapi, generic): SMART Backend Services
and client-secret auth, read and search with the vendor's parameters, errors and paging (refusing what
the vendor refuses), bulk ``$export`` at the levels it serves, Subscription resources and their
``$status``/``$events`` where the vendor has them, a CapabilityStatement saying exactly that, seeded
clinical data,
admin-triggered activity, a sender that notifies subscriptions in the vendor's style, an HL7 v2 ADT feed
over MLLP for the Epic, Oracle and MEDITECH profiles (``ehrsim.mllp``), and faults
switchable at start and at runtime (``ehrsim.faults``). ``ehrsim/README.md`` documents them all.
Minimal config::

    public_base_url: http://127.0.0.1:8090   # optional; origin used in notification URLs
    facilities:
      - id: general                          # FHIR base = {origin}/general/fhir
        profile: generic
        seed: 1
        patients: 5
        token_lifetime_s: 300
        clients:
          - client_id: ingest
            public_key_file: /abs/path/public.pem   # RSA (RS384) or EC P-384 (ES384)
            scopes: ["system/*.read"]
        webhook:
          url: http://127.0.0.1:8000/hooks/general
          headers: {Authorization: "Bearer s3cret"}
          subscription_id: sub-general
          max_attempts: 5

Run it with ``python -m ehrsim --config FILE --host 127.0.0.1 --port 8090``.
"""

from __future__ import annotations

__all__ = ["cli_main"]


def cli_main(config_path: str, host: str, port: int, *, access_log: bool = False) -> None:
    """Load the config and serve the simulator with uvicorn until interrupted."""
    import uvicorn

    from ehrsim.config import load_config
    from ehrsim.server import create_app

    config = load_config(config_path)
    local_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - comparing, not binding
    public_base_url = config.public_base_url or f"http://{local_host}:{port}"
    app = create_app(config, public_base_url=public_base_url)
    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="info")
