"""A small fleet inside the kernel VM, for the Ansible rollout: each hypervisor a network namespace with a
mount namespace of its own, holding its own OVS (ovsdb-server and ovs-vswitchd on the kernel datapath of
that namespace, Debian's ovs-ctl, default paths), its own `ovs-vswitchd` alternative, its own dpfreeze
directories, and an sshd on a management address the controller (the VM's root namespace) reaches over a
Linux bridge.  The hosts' OVS bridges meet on a second Linux bridge, so traffic between two hosts crosses
both datapaths, as between two hypervisors.

Everything a host does runs inside its namespaces: its sshd is started there, and every process an
Ansible connection starts is its child.  The test reaches a host the same way (nsenter into the sshd).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import ovsdebs
import vmharness
from systemdrig import sh

from dpfreeze.probe import Endpoint

ROOT = Path("/tmp/fleet")
SSHD = ovsdebs.prefix("openssh") / "usr/sbin/sshd"
OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
# What a host owns alone: mounted over the shared filesystem in its mount namespace.  /opt/dpfreeze is
# not among them: the hosts share one image, as hosts booted from one golden image do, so the first host's
# install is every host's (installing four venvs at once takes minutes under TCG).
PRIVATE = ("/run/openvswitch", "/etc/openvswitch", "/var/log/openvswitch", "/var/lib/openvswitch",
           "/run/dpfreeze", "/var/lib/dpfreeze", "/etc/alternatives", "/var/lib/dpkg/alternatives")
COPIED = ("/etc/alternatives", "/var/lib/dpkg/alternatives")  # start as the VM's, then the host's own


@dataclass
class Host:
    name: str
    index: int
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def mgmt(self) -> str:
        return f"10.88.0.{10 + self.index}"

    @property
    def data(self) -> str:
        return f"10.77.0.{10 + self.index}"

    @property
    def root(self) -> Path:
        return ROOT / self.name

    def run(self, *argv: str, check: bool = True, timeout: float = 300) -> str:
        """A command inside the host, as its sshd's children run."""
        assert self.sshd
        # -r -w: the guest's root is a chroot, and entering a mount namespace resets the root to its own
        return sh("nsenter", "-t", str(self.sshd.pid), "-m", "-n", "-r", "-w", "--", *argv, check=check,
                  timeout=timeout)

    def version(self) -> str:
        return self.run("ovs-appctl", "version").splitlines()[0].split()[-1]

    def boot_script(self) -> str:
        binds = "\n".join(f"mkdir -p {self.root}{d} {d}; mount --bind {self.root}{d} {d}" for d in PRIVATE)
        return f"""set -e
{binds}
ip link set lo up
{OVS_CTL} --no-ovs-vswitchd --no-monitor --system-id=random start
{OVS_CTL} --no-ovsdb-server --no-monitor start
ovs-vsctl add-br br0 -- add-port br0 up0
ip addr add {self.data}/24 dev br0
ip link set br0 up
ip link set up0 up
export LD_LIBRARY_PATH={ovsdebs.prefix("openssh")}/usr/lib/x86_64-linux-gnu
exec {SSHD} -D -e -f {self.root}/sshd_config
"""

    def sshd_config(self) -> str:
        return f"""ListenAddress {self.mgmt}
HostKey {self.root}/host_key
PidFile none
UsePAM no
PermitRootLogin prohibit-password
AuthorizedKeysFile {ROOT}/authorized_keys
StrictModes no
PrintMotd no
Subsystem sftp {ovsdebs.prefix("openssh")}/usr/lib/openssh/sftp-server
"""

    def up(self) -> None:
        self.root.mkdir(parents=True)
        for d in COPIED:
            shutil.copytree(d, f"{self.root}{d}", symlinks=True)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.root / "host_key")
        (self.root / "sshd_config").write_text(self.sshd_config())
        (self.root / "boot.sh").write_text(self.boot_script())
        sh("ip", "netns", "add", self.name)
        for link, peer, bridge in ((f"{self.name}-m", "eth0", "flmgmt"), (f"{self.name}-d", "up0", "fldata")):
            sh("ip", "link", "add", link, "type", "veth", "peer", "name", peer, "netns", self.name)
            sh("ip", "link", "set", link, "master", bridge, "up")
        sh("ip", "-n", self.name, "addr", "add", f"{self.mgmt}/24", "dev", "eth0")
        sh("ip", "-n", self.name, "link", "set", "eth0", "up")
        log = (self.root / "boot.log").open("wb")
        self.sshd = subprocess.Popen(["ip", "netns", "exec", self.name, "sh", str(self.root / "boot.sh")],
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while sh("ip", "netns", "exec", self.name, "ss", "-Hltn", f"src {self.mgmt}:22", check=False) == "":
            assert self.sshd.poll() is None, (self.root / "boot.log").read_text()
            assert time.monotonic() < deadline, (self.root / "boot.log").read_text()
            time.sleep(0.5)

    def attach(self, ns: str, ip: int) -> Endpoint:
        """A namespace on a veth port of this host's bridge: a VM of this hypervisor."""
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"{ns}-o", "type", "veth", "peer", "name", f"{ns}-i", "netns", ns)
        sh("ip", "link", "set", f"{ns}-o", "netns", self.name)
        self.run("ovs-vsctl", "add-port", "br0", f"{ns}-o")
        self.run("ip", "link", "set", f"{ns}-o", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"10.77.0.{ip}/24", "dev", f"{ns}-i")
        sh("ip", "-n", ns, "addr", "add", f"fd00:77::{ip}/64", "dev", f"{ns}-i", "nodad")
        sh("ip", "-n", ns, "link", "set", f"{ns}-i", "up")
        return Endpoint(f"{ns}-i", ns)

    def down(self) -> None:
        if self.sshd:
            self.run(OVS_CTL, "stop", check=False)
            self.sshd.kill()
            self.sshd.wait()
        sh("ip", "netns", "del", self.name, check=False)


def prepare_controller() -> Path:
    """The VM's root namespace as the Ansible controller: the two fabric bridges, a key, sshd's user."""
    ROOT.mkdir(parents=True, exist_ok=True)
    release = os.uname().release  # a host has its kernel's image in /boot: dpfreeze preflight reads it
    image = next((vmharness.cache_dir() / "kernel").glob(f"**/boot/vmlinuz-{release}"))
    Path("/boot").mkdir(exist_ok=True)
    Path(f"/boot/vmlinuz-{release}").symlink_to(image)
    ovsdebs.unpack(vmharness.cache_dir() / "tools" / "openssh", "openssh")
    if subprocess.run(["id", "sshd"], capture_output=True).returncode:
        sh("useradd", "--system", "--no-create-home", "--home-dir", "/run/sshd", "--shell",
           "/usr/sbin/nologin", "sshd")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    sh("modprobe", "bridge")
    for bridge, address in (("flmgmt", "10.88.0.1/24"), ("fldata", None)):
        sh("ip", "link", "add", bridge, "type", "bridge")
        if address:
            sh("ip", "addr", "add", address, "dev", bridge)
        sh("ip", "link", "set", bridge, "up")
    key = ROOT / "id_ed25519"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
    (ROOT / "authorized_keys").write_text((ROOT / "id_ed25519.pub").read_text())
    return key
