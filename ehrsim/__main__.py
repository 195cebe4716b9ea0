from __future__ import annotations

import argparse
from collections.abc import Sequence

from ehrsim import cli_main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ehrsim", description="Serve the simulated FHIR EHR.")
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--access-log", action="store_true", help="log every request (slow)")
    args = parser.parse_args(argv)
    cli_main(args.config, args.host, args.port, access_log=args.access_log)


if __name__ == "__main__":
    main()
