"""A small real file system for a test: a tmpfs of a few hundred KiB that fills up with ENOSPC.

A helper process ``unshare --user --map-root-user --mount`` mounts a tmpfs of ``size`` in a mount
namespace of its own and waits; the test reaches that file system through ``/proc/<pid>/root/...``
(the helper's view of the tree), so nothing is mounted where other processes look, and writes that
do not fit fail in the kernel with ``ENOSPC``, as on a full disk. The same mechanism works as root
and as an ordinary user (a user namespace of one's own may mount a tmpfs), where unprivileged user
namespaces are enabled (``kernel.unprivileged_userns_clone``, AppArmor's
``apparmor_restrict_unprivileged_userns``); without them ``start`` fails with the reason.

``fill`` writes a filler file until the kernel refuses; ``free`` removes it.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["SmallDisk"]


class SmallDisk:
    def __init__(self, mountpoint: Path, *, size: str = "512k") -> None:
        self.mountpoint, self.size = mountpoint.resolve(), size
        self._helper: subprocess.Popen[bytes] | None = None

    @property
    def path(self) -> Path:
        """The mounted file system, as this process reaches it."""
        assert self._helper is not None, "not started"
        return Path(f"/proc/{self._helper.pid}/root") / self.mountpoint.relative_to("/")

    def start(self) -> SmallDisk:
        unshare = shutil.which("unshare")
        if unshare is None:
            raise RuntimeError("util-linux's unshare is needed for a small disk")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        script = f'mount -t tmpfs -o size={self.size},mode=0700 tmpfs "$1" && echo ready && exec sleep infinity'
        self._helper = subprocess.Popen([unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh",
                                         str(self.mountpoint)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self._helper.stdout is not None
        if self._helper.stdout.readline().strip() != b"ready":
            self._helper.wait(timeout=10)
            problem = self._helper.stderr.read().decode(errors="replace") if self._helper.stderr else ""
            raise RuntimeError(f"could not mount a tmpfs in a user namespace of our own: {problem.strip()}")
        return self

    def fill(self) -> int:
        """Write a filler until the file system refuses (ENOSPC); the bytes it took."""
        written = 0
        with open(self.path / ".filler", "ab", buffering=0) as filler:
            chunk = bytes(4096)
            while True:
                try:
                    written += filler.write(chunk) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    return written

    def free(self) -> None:
        (self.path / ".filler").unlink(missing_ok=True)

    def stop(self) -> None:
        if self._helper is not None:
            self._helper.kill()
            self._helper.wait(timeout=10)
            for stream in (self._helper.stdout, self._helper.stderr):
                if stream is not None:
                    stream.close()
            self._helper = None

    def __enter__(self) -> SmallDisk:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize
