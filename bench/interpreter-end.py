"""How soon a call whose interpreter ends says how it ended, in a fork and in a plain sandbox:

    python3 bench/interpreter-end.py ALCOVE [ROUNDS]     # default 10 rounds

Starts a daemon of that build (data under /var/tmp/alcove-interpreter-end-*), then per round
forks a forkable sandbox (its interpreter is then not its agent's child: the kernel's record on
its pidfd says how it ended, once the source's agent reaps it) and creates a plain one, and times
`run_code("os._exit(3)")` in each. Prints the medians and the InterpreterDied value each gave.
Run as root.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
from alcove import Sandbox  # noqa: E402
from bench_daemon import Daemon  # noqa: E402


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    rounds = sys.argv[2] if len(sys.argv) > 2 else "10"
    if not rounds.isdigit() or not 1 <= int(rounds) <= 10000:
        raise SystemExit(f"ROUNDS {rounds!r}: give 1 to 10000")
    rounds = int(rounds)
    daemon = Daemon(sys.argv[1], "interpreter-end")
    try:
        server = daemon.server()
        source = Sandbox.create(timeout=600, forkable=True, **server)
        source.run_code("import os", timeout=30)
        took = {"fork": [], "plain": []}
        said = {}
        for _ in range(rounds):
            for kind in ("fork", "plain"):
                if kind == "fork":
                    sb = source.fork(memory=True)
                else:
                    sb = Sandbox.create(timeout=60, **server)
                    sb.run_code("import os", timeout=30)
                t = time.perf_counter()
                ended = sb.run_code("os._exit(3)", timeout=30)
                took[kind].append((time.perf_counter() - t) * 1e3)
                said[kind] = ended.error.value if ended.error else "no error"
                sb.kill()
        source.kill()
        for kind, times in took.items():
            print(f"{kind}: InterpreterDied after {statistics.median(times):.1f} ms"
                  f" (min {min(times):.1f}, max {max(times):.1f}): {said[kind]!r}")
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
