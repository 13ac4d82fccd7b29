"""An in-process freeze service on a sandbox's OVS, for the netdev and kernel tests alike."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from dpfreeze.freeze.service import FreezeService, ServiceConfig, SystemBackend
from dpfreeze.lab.sandbox import Sandbox


@asynccontextmanager
async def freeze_service(
    sb: Sandbox, state_dir: Path, monkeypatch: pytest.MonkeyPatch, **config: Any
) -> AsyncIterator[FreezeService]:
    for k, v in sb.env.environ().items():
        monkeypatch.setenv(k, v)  # ovs-ofctl/ovs-vsctl run by the snapshot find the sandbox's OVS
    cfg = ServiceConfig(state_dir=state_dir, socket_path=state_dir / "c.sock", **config)
    svc = FreezeService(cfg, SystemBackend(sb.env))
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        yield svc
        nursery.cancel_scope.cancel()


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
