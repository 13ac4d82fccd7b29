"""The VM smoke scenario that `./bootstrap demo` runs until the upgrade job replaces it.

Inside the test VM (real openvswitch.ko): a private OVS on the kernel datapath, two namespaces on br0,
ping across, the kernel's view (ovs-dpctl show / dump-flows), then ovs-vswitchd stopped and restarted while
the kernel keeps forwarding with its cached flows.  Exits non-zero on any failure.
"""

from __future__ import annotations

import os
import time

import trio

from dpfreeze.sandbox import sandbox


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


async def main() -> None:
    t0 = time.monotonic()
    say(f"guest kernel {os.uname().release}")
    async with sandbox("system") as sb:
        br = await sb.add_bridge("br0")
        a = await sb.add_ns_port(br)
        b = await sb.add_ns_port(br)
        say(f"ping {a.netns} ({a.ipv4}) -> {b.netns} ({b.ipv4}) across {br}")
        print(await sb.ping(a, b))
        say("ovs-dpctl show")
        print(await sb.dpctl("show"))
        say("ovs-dpctl dump-flows")
        print(await sb.dpctl("dump-flows"))
        say("ovs-appctl exit: ovs-vswitchd gone, kernel flows stay")
        await sb.stop_vswitchd("exit")
        print(await sb.dpctl("dump-flows"))
        say("ping with no ovs-vswitchd running (kernel flow cache only)")
        print(await sb.ping(a, b, count=2))
        say("ovs-vswitchd started again (it flushes the kernel flows, then relearns)")
        await sb.start_vswitchd()
        print(await sb.ping(a, b))
        print(await sb.dpctl("dump-flows"))
    say(f"smoke scenario passed in {time.monotonic() - t0:.1f} s (guest time)")


if __name__ == "__main__":
    trio.run(main)
