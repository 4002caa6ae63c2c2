"""``python -m bench.cpu_profile OUT -m MODULE [ARGS...]``: run MODULE as ``__main__`` under cProfile, timing CPU.

``python -m cProfile`` times with the wall clock, so a process that waits (``epoll``) or wakes a peer
(``send``) shows those waits as its own time. This launcher gives cProfile ``time.process_time`` instead:
what the profile says is CPU the process spent. The profile is written to OUT when MODULE exits
(``SystemExit`` included, as when the local host is stopped with Ctrl-C).
"""

from __future__ import annotations

import cProfile
import runpy
import sys
import time


def main() -> None:
    out, flag, module, *args = sys.argv[1:]
    if flag != "-m":
        raise SystemExit("usage: python -m bench.cpu_profile OUT -m MODULE [ARGS...]")
    sys.argv = [module, *args]
    profile = cProfile.Profile(time.process_time)
    try:
        profile.runcall(runpy.run_module, module, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        profile.dump_stats(out)


if __name__ == "__main__":
    main()
