"""Entry point: python -m xorsparse.bench {codec,formats} ..."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xorsparse.bench", description=__doc__)
    sub = p.add_subparsers(dest="which", required=True)
    from . import codec

    codec.add_arguments(sub.add_parser("codec", help="codec efficiency and speed on random masks"))
    args = p.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
