"""Debian's OpenSSH server on loopback, for tests: a host key and a client key made on the spot, the client's
key, config and known_hosts in a HOME of its own. Whoever runs with that HOME (a DVC command, a Prefect worker)
reaches `url(path)` over SSH with credentials from its environment, and nothing else does.

    with Sshd(tmp_path) as ssh:
        subprocess.run(["dvc", "push"], env=os.environ | {"HOME": str(ssh.home)})
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
WHY_NOT = (
    "no OpenSSH server (apt-get install openssh-server; .ci/run does)"
    if SSHD is None
    else "sshd needs root for its privilege separation"
    if os.geteuid() != 0
    else ""
)


class Sshd:
    def __init__(self, base: Path):
        self.base, self.home = base, base / "home"
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def url(self, path: Path) -> str:
        return f"ssh://{getpass.getuser()}@127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Sshd:
        base, ssh_dir = self.base, self.home / ".ssh"
        ssh_dir.mkdir(parents=True)
        keygen = ["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f"]
        subprocess.run([*keygen, str(base / "host_key")], check=True)
        subprocess.run([*keygen, str(ssh_dir / "id_ed25519")], check=True)
        (base / "authorized_keys").write_text((ssh_dir / "id_ed25519.pub").read_text())
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        kind, key = (base / "host_key.pub").read_text().split()[:2]
        (ssh_dir / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {kind} {key}\n")
        config = base / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {base / 'host_key'}\nPidFile {base / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {base / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
            "Subsystem sftp internal-sftp\nMaxStartups 100\nMaxSessions 100\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # its privilege-separation directory
        self._log = (base / "sshd.log").open("wb")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"sshd did not start: {(base / 'sshd.log').read_text()[-1000:]}") from None
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._log.close()
