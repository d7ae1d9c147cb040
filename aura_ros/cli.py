"""The `aura-ros` command: sub-commands are added by the layers that provide them."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aura-ros", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)
    if args.command == "version":
        from aura_ros import __version__

        print(__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
