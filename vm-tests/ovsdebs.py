"""Other OVS versions, as Debian's own packages, for the upgrade tests in the guest.

Fetched once into the cache through a private apt configuration (our own sources list, lists and archive
directories; apt still checks the archive's signatures against the machine's Debian keyring), never through
the machine's own sources.  The guest installs them with `dpkg -i`, so the real maintainer scripts run.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
SUITES = ("bullseye", "bookworm", "trixie")
ALTERNATIVE = "/usr/sbin/ovs-vswitchd"


@dataclasses.dataclass(frozen=True)
class Release:
    """One OVS release: the packages a host needs to run it, each from the suite that serves it."""

    name: str
    suite: str
    packages: tuple[tuple[str, str], ...]  # (package, suite or suite-security), in dpkg's install order
    beside: bool = False  # unpacked under /opt beside the installed OVS, not installed with dpkg


RELEASES = {
    r.name: r
    for r in (
        # 2.15's openvswitch-common links libssl1.1, which bookworm dropped: bullseye-security serves it.
        # Its switch package goes first: unpacked after the common one, it would take ovs-vsctl, ovs-dpctl
        # and ovs-ctl away with 3.1's switch package (files that moved between the two).
        Release("2.15", "bullseye", (("libssl1.1", "bullseye-security"), ("openvswitch-switch", "bullseye"),
                                     ("openvswitch-common", "bullseye"))),
        Release("3.1", "bookworm", (("openvswitch-common", "bookworm"), ("openvswitch-switch", "bookworm"))),
        # 3.5 needs glibc 2.38 and libxdp 1.4: trixie's, beside the host's, through trixie's own loader.
        Release("3.5", "trixie", (("openvswitch-common", "trixie"), ("openvswitch-switch", "trixie"),
                                  ("libc6", "trixie"), ("libxdp1", "trixie")), beside=True),
    )
}


# Not OVS: what the guest needs besides, fetched and unpacked the same way (the fleet test's sshd; the
# machine has only the ssh client, and installing the server would start one on the machine itself).
TOOLS = {
    "openssh": Release("openssh", "bookworm", (("libwrap0", "bookworm"), ("openssh-sftp-server", "bookworm"),
                                               ("openssh-server", "bookworm"))),
}


def prefix(release: str) -> Path:
    return Path(f"/opt/openvswitch-{release}" if release in RELEASES else f"/opt/{release}")


def unpack(directory: Path, release: str) -> Path:
    """The release's packages extracted under /opt (no maintainer script runs); returns that root."""
    root = prefix(release)
    for deb in debs(directory, release):
        subprocess.run(["dpkg-deb", "-x", deb, str(root)], check=True)
    return root


def install_beside(directory: Path, release: str) -> Path:
    """Unpack a release under /opt and register its ovs-vswitchd as an `ovs-vswitchd` alternative, the way
    Debian's postinst registers its own (at a lower priority, so nothing switches by itself).  Returns the
    alternative's path, for `update-alternatives --set`.

    The binary runs through the release's own loader, under a link named ovs-vswitchd: the process's comm
    is then ovs-vswitchd, which ovs-ctl's pid_comm_check requires to stop or restart it."""
    root = unpack(directory, release)
    libdir = root / "usr/lib/x86_64-linux-gnu"
    (root / "loader").mkdir(exist_ok=True)
    loader = root / "loader" / "ovs-vswitchd"
    loader.unlink(missing_ok=True)
    loader.symlink_to(libdir / "ld-linux-x86-64.so.2")
    wrapper = root / "sbin" / "ovs-vswitchd"
    wrapper.parent.mkdir(exist_ok=True)
    wrapper.write_text(f"#!/bin/sh\n# OVS {release} from Debian {RELEASES[release].suite}, on this host's "
                       f"older glibc\nexec {loader} --library-path {libdir} "
                       f"{root}/usr/lib/openvswitch-switch/ovs-vswitchd \"$@\"\n")
    wrapper.chmod(0o755)
    subprocess.run(["update-alternatives", "--install", ALTERNATIVE, "ovs-vswitchd", str(wrapper), "50"],
                   check=True, capture_output=True)
    return wrapper


def _sources() -> str:
    lines = []
    for suite in SUITES:
        lines.append(f"deb [signed-by={KEYRING}] {MIRROR} {suite} main")
        lines.append(f"deb [signed-by={KEYRING}] {SECURITY} {suite}-security main")
    return "\n".join(lines) + "\n"


def _apt_options(state: Path) -> list[str]:
    return [
        "-o", f"Dir::Etc::SourceList={state / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={state / 'lists'}",
        "-o", f"Dir::Cache={state / 'cache'}",
        "-q",
    ]


def debs(directory: Path, release: str) -> list[str]:
    """The release's .deb files in install order, as `dpkg -i` arguments."""
    return [str(next(directory.glob(f"{package}_*.deb"))) for package, _ in _release(release).packages]


def _release(name: str) -> Release:
    return RELEASES[name] if name in RELEASES else TOOLS[name]


def fetch(cache: Path, names: tuple[str, ...] = tuple(RELEASES)) -> dict[str, Path]:
    """The directory of .deb files of each release, downloading whatever is missing."""
    state = cache / "apt"
    out: dict[str, Path] = {}
    updated = False
    for name in names:
        release = _release(name)
        target = cache / ("ovs" if name in RELEASES else "tools") / name
        target.mkdir(parents=True, exist_ok=True)
        for package, suite in release.packages:
            if list(target.glob(f"{package}_*.deb")):
                continue
            if not updated:
                (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
                (state / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
                (state / "sources.list").write_text(_sources())
                subprocess.run(["apt-get", *_apt_options(state), "update"], check=True, capture_output=True,
                               timeout=600)
                updated = True
            subprocess.run(["apt-get", *_apt_options(state), "download", f"{package}/{suite}"], cwd=target,
                           check=True, capture_output=True, timeout=600)
        out[name] = target
    return out
