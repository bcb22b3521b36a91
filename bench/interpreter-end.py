"""How soon a call whose interpreter ends says how it ended, in a fork and in a plain sandbox:

    python3 bench/interpreter-end.py ALCOVE [ROUNDS]     # default 10 rounds

Starts a daemon of that build (data under /var/tmp/alcove-interpreter-end-*), then per round
forks a forkable sandbox (its interpreter is then not its agent's child: the kernel's record on
its pidfd says how it ended, once the source's agent reaps it) and creates a plain one, and times
`run_code("os._exit(3)")` in each. Prints the medians and the InterpreterDied value each gave.
Run as root.
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))
from alcove import Sandbox  # noqa: E402


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    home = tempfile.mkdtemp(prefix="alcove-interpreter-end-", dir="/var/tmp")
    token_file = os.path.join(home, "token")
    with open(token_file, "w") as f:
        f.write("end-" + os.urandom(8).hex() + "\n")
    os.chmod(token_file, 0o600)
    log = os.path.join(home, "log")
    proc = subprocess.Popen([sys.argv[1], "serve", "--listen", "127.0.0.1:0", "--data-dir",
                             f"{home}/data", "--token-file", token_file], stderr=open(log, "w"))
    try:
        for _ in range(200):
            found = re.search(r"serving http://(\S+)", open(log).read())
            if found or proc.poll() is not None:
                break
            time.sleep(0.05)
        if not found:
            raise SystemExit(f"the daemon did not start: {open(log).read()}")
        server = {"server": "http://" + found.group(1), "token": open(token_file).read().strip()}
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
        proc.terminate()
        proc.wait()
        prefix = home + "/"
        mounts = [line.split()[4] for line in open("/proc/self/mountinfo") if line.split()[4].startswith(prefix)]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        subprocess.run(["rm", "-rf", home], check=False)


if __name__ == "__main__":
    main()
