"""The ``markup2im`` command line: argument parsing only.

Each subcommand lives in its own module of this package, with ``add_parser(subparsers)`` that
registers its arguments and sets ``func`` to a function taking the parsed arguments and calling
one library function. Project errors are printed without a traceback and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from markup2im import __version__
from markup2im.errors import Markup2ImError
from markup2im.logutil import setup_logging

# subcommand name -> module in markup2im.cli
SUBCOMMANDS: dict[str, str] = {
    "render": "render",
    "build-dataset": "build_dataset",
    "download": "download",
    "fetch-encoder": "fetch_encoder",
    "train": "train",
    "import-original": "import_original",
    "generate": "generate",
    "evaluate": "evaluate",
    "gif": "gif",
    "figures": "figures",
    "draw": "draw",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(prog="markup2im", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMANDS.values():
        try:
            module = importlib.import_module(f"markup2im.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"markup2im.cli.{module_name}":
                continue  # subcommand not built yet
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # the command line as given (without the program), for messages that say what to run
    args.argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging(args.verbose)
    try:
        result = args.func(args)
    except Markup2ImError as exc:
        logging.getLogger("markup2im").debug("error details", exc_info=True)
        print(f"markup2im {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"markup2im {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
