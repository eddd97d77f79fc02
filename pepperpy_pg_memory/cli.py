"""The ``pepperpy-memory`` command (also ``python -m pepperpy_pg_memory``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import PostgresConfig
from .errors import MemoryError

__all__ = ["main"]


def _config(args: argparse.Namespace, **overrides: Any) -> PostgresConfig:
    values: dict[str, Any] = dict(overrides)
    if args.dsn:
        values["dsn"] = args.dsn
    if args.data_dir:
        values["data_dir"] = Path(args.data_dir)
    if args.table:
        values["table"] = args.table
    return PostgresConfig(**values)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    config = _config(args) if args.table else _config(args, table="demo_memories")
    asyncio.run(run_demo(config))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pepperpy-memory",
        description="PostgreSQL memory for LLM agents. With no --dsn (and no PEPPERPY_PG_HOST or "
        "PEPPERPY_PG_DSN), runs on an embedded PostgreSQL.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="store a dozen agent memories and show semantic, contextual, hybrid recall"
    )
    demo.add_argument("--dsn", help="postgresql:// URL of an external server")
    demo.add_argument("--data-dir", help="embedded server's data folder")
    demo.add_argument("--table", help="table to use (default: demo_memories)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    try:
        result: int = args.handler(args)
        return result
    except MemoryError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
