"""`--datapath auto`: the daemon's one datapath, kernel or userspace; a choice is never guessed."""

from __future__ import annotations

import pytest

from dpfreeze.ovs import datapaths


@pytest.mark.parametrize(("names", "expected"), [
    (["ovs-system"], "ovs-system"),
    (["netdev@ovs-netdev"], "netdev@ovs-netdev"),
    (["ovs-system", "dpbench0"], "ovs-system"),  # a scratch datapath is not the daemon's
])
async def test_auto_picks_the_one_datapath(monkeypatch: pytest.MonkeyPatch, names: list[str],
                                           expected: str) -> None:
    async def all_names(env: object = None) -> list[str]:
        return names

    monkeypatch.setattr(datapaths, "all_names", all_names)
    assert await datapaths.resolve("auto") == expected
    assert await datapaths.resolve("netdev@other") == "netdev@other"  # a name is taken as given


@pytest.mark.parametrize(("names", "message"), [
    ([], "no datapath to freeze"),
    (["ovs-system", "netdev@ovs-netdev"],
     "several datapaths (ovs-system, netdev@ovs-netdev): pass --datapath"),
])
async def test_auto_refuses_to_guess(monkeypatch: pytest.MonkeyPatch, names: list[str], message: str) -> None:
    async def all_names(env: object = None) -> list[str]:
        return names

    monkeypatch.setattr(datapaths, "all_names", all_names)
    with pytest.raises(datapaths.NoDatapath, match=message.replace("(", r"\(").replace(")", r"\)")):
        await datapaths.resolve("auto")


async def test_a_module_reload_of_a_userspace_datapath_is_refused_before_anything(tmp_path: object) -> None:
    from dpfreeze.ovs.ovsenv import OvsEnv
    from dpfreeze.upgrade import UpgradeError, upgrade

    class NoApi:  # any call would be a change: the refusal must come first
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"api.{name} called")

    env = OvsEnv.from_environ({"OVS_RUNDIR": "/nonexistent"})
    with pytest.raises(UpgradeError, match="userspace datapath, it does not use the kernel module"):
        await upgrade(NoApi(), env, ttl=60, datapath="netdev@ovs-netdev", reload_kmod=True)  # type: ignore[arg-type]
