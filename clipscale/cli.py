"""The `clipscale` console script. Each concern registers its own subcommands;
this module only assembles them, importing lazily so `--help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, function) pairs; each function takes the subparsers object and adds
# its commands with `set_defaults(func=...)`.
_REGISTRARS = [
    ("clipscale.data.cli", "register"),
    ("clipscale.scaling.cli", "register"),
    ("clipscale.scaling.compare_cli", "register"),
    ("clipscale.scaling.optimal_cli", "register"),
    ("clipscale.evaluate_cli", "register"),
    ("clipscale.export_cli", "register"),
    ("clipscale.ladder_cli", "register"),
    ("clipscale.sweep_cli", "register"),
    ("clipscale.monitor.cli", "register"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipscale", description="CLIP scaling-law studies")
    sub = parser.add_subparsers(dest="command", required=True)
    for module, func in _REGISTRARS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:  # that concern is not built yet
                continue
            raise
        getattr(mod, func)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
