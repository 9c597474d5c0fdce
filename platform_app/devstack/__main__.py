"""`python -m platform_app.devstack up|down|status`: what `make up`/`make down` call."""

from __future__ import annotations

import argparse
import sys

from .stack import RunDir
from .supervisor import down, status, up

COMMANDS = {"up": up, "down": down, "status": status}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m platform_app.devstack",
        description="Run the platform's services locally under honcho (state in .run/, "
        "or $PLATFORM_RUN_DIR).",
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    args = parser.parse_args(argv)
    return COMMANDS[args.command](RunDir.from_env())


if __name__ == "__main__":
    sys.exit(main())
