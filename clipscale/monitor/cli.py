"""Registers `clipscale status` and `clipscale ui` (imported lazily by clipscale.cli)."""

from __future__ import annotations


def register(subparsers) -> None:
    from clipscale.monitor import status, ui

    status.register(subparsers)
    ui.register(subparsers)
