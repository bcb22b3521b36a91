"""What moving a process into a new cgroup costs on this host, by hierarchy:

    python3 bench/cgroup-move.py [ROUNDS]          # as root; 5 rounds by default

For each hierarchy this process is in (v1 memory and pids, and the cgroup2 tree), ROUNDS times:
makes a cgroup beneath this process's own, moves a sleeping child of this process into it by
writing its pid to cgroup.procs (a move by another process, as the daemon makes for a warm copy
or a fork with memory), moves it back and removes the cgroup. Prints each mkdir and move in ms.
The first move after a quiet spell waits for an RCU grace period unless the cgroup2 tree is
mounted `favordynmods` (alcove serve sets it at start; README: "Moving a process into a cgroup,
and favordynmods"), and says which this host is. From Linux 6.18 turning the option on also
makes moves lock only their own thread group, and that stays after it is turned off, so a
host where it was ever on since boot shows cheap moves either way (measured here: 14.8-17.6 ms
for the first move before it was ever on, 0.26 ms after, on or off). Asserts nothing: it
prints. Removes what it made, and ends its child, on every way out.
"""
import os
import sys
import time


def own_dirs():
    """(name, own cgroup directory) for v1 memory, v1 pids and the cgroup2 tree, where present."""
    mounts = {}
    for line in open("/proc/self/mountinfo"):
        left, right = line.split(" - ", 1)
        fstype, _, options = right.split()[:3]
        point = left.split()[4]
        if fstype == "cgroup2":
            mounts.setdefault("cgroup2", (point, options))
        elif fstype == "cgroup":
            for controller in ("memory", "pids"):
                if controller in options.split(","):
                    mounts.setdefault(controller, (point, options))
    found = []
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.rstrip("\n").split(":", 2)
        name = "cgroup2" if controllers == "" else controllers
        if name in mounts:
            found.append((name, mounts[name][0] + path.rstrip("/")))
    favored = any("favordynmods" in o.split(",") for _, o in mounts.values())
    return found, favored


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    if not 1 <= rounds <= 1000:
        raise SystemExit("ROUNDS: give 1 to 1000")
    dirs, favored = own_dirs()
    print(f"favordynmods: {'on' if favored else 'off'}; hierarchies: {', '.join(n for n, _ in dirs)}")
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    made = []
    try:
        for name, base in dirs:
            times = []
            for i in range(rounds):
                d = f"{base}/alcove-move-probe-{os.getpid()}-{i}"
                t = time.perf_counter()
                os.mkdir(d)
                made.append((d, base))
                mkdir_ms = (time.perf_counter() - t) * 1e3
                t = time.perf_counter()
                with open(f"{d}/cgroup.procs", "w") as f:
                    f.write(str(child))
                move_ms = (time.perf_counter() - t) * 1e3
                with open(f"{base}/cgroup.procs", "w") as f:
                    f.write(str(child))
                os.rmdir(d)
                made.pop()
                times.append(f"mkdir {mkdir_ms:.2f} move {move_ms:.2f}")
            print(f"{name:8} " + " | ".join(times))
    finally:
        for d, base in made:
            try:
                with open(f"{base}/cgroup.procs", "w") as f:
                    f.write(str(child))
                os.rmdir(d)
            except OSError as e:
                print(f"could not remove {d}: {e}", file=sys.stderr)
        os.write(w, b"x")
        os.waitpid(child, 0)


if __name__ == "__main__":
    main()
