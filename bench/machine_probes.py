"""Two costs of the machine that an exec's round trip pays and alcove cannot change, measured
alone so that figures from different hosts (or VMs) can be read side by side:

  - a CPUID instruction (glibc's start-up makes ~80, for CPU features and cache sizes; in a VM
    each one traps to the hypervisor);
  - a wake across CPUs: two processes passing a byte back and forth over pipes, pinned to one
    CPU, pinned to two, and left to the scheduler. What an idle CPU does decides it: a VM guest
    whose idle driver is haltpoll with `guest_halt_poll_ns` 0 halts at once, and each wake of
    it waits for the host to run that virtual CPU again (printed, read from sysfs).

    python3 bench/machine_probes.py        # prints; asserts nothing

Used by bench/sandboxes.py, which prints them before its rows. x86-64 only for CPUID.
"""
import ctypes
import mmap
import os
import statistics
import time

# cpuid_loop(count): count CPUID leaf-4 queries. push rbx (cpuid clobbers it); rsi = count;
# loop: eax = 4, ecx = 0, cpuid, rsi -= 1, until 0; pop rbx; ret.
CPUID_LOOP = bytes.fromhex("53" "4889fe" "b804000000" "31c9" "0fa2" "48ffce" "75f2" "5b" "c3")


def cpuid_us(count=1000, rounds=5):
    """Median microseconds per CPUID over `rounds` loops of `count`, or None where it cannot run
    (not x86-64, or no executable memory for the loop)."""
    if os.uname().machine != "x86_64":
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError):
        return None
    try:
        page.write(CPUID_LOOP)
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        loop = ctypes.CFUNCTYPE(None, ctypes.c_uint64)(address)
        loop(10)
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            loop(count)
            times.append((time.perf_counter() - t) / count * 1e6)
        del loop
        return statistics.median(times)
    finally:
        try:
            page.close()
        except BufferError:
            pass  # a ctypes view still holds it; freed with the process


def pingpong_us(cpus, n=5000):
    """Median microseconds of a one-byte round trip over two pipes between this process and a
    child, with this process on cpus[0] and the child on cpus[1] (None: wherever the scheduler
    puts them)."""
    to_child, from_parent = os.pipe()
    to_parent, from_child = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if cpus:
                os.sched_setaffinity(0, {cpus[1]})
            while os.read(to_child, 1) == b"x":
                os.write(from_child, b"x")
        finally:
            os._exit(0)
    saved = os.sched_getaffinity(0)
    try:
        if cpus:
            os.sched_setaffinity(0, {cpus[0]})
        rounds = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n // 5):
                os.write(from_parent, b"x")
                os.read(to_parent, 1)
            rounds.append((time.perf_counter() - t) / (n // 5) * 1e6)
        return statistics.median(rounds[1:])
    finally:
        os.write(from_parent, b"q")
        os.waitpid(pid, 0)
        os.sched_setaffinity(0, saved)
        for fd in (to_child, from_parent, to_parent, from_child):
            os.close(fd)


def idle_setting():
    """The CPUs' idle driver, and the guest's halt-poll window where the driver is haltpoll:
    a line of text, or None where sysfs does not say."""
    def read(path):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return None

    driver = read("/sys/devices/system/cpu/cpuidle/current_driver")
    if driver is None:
        return None
    poll = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns") if driver == "haltpoll" else None
    if poll is None:
        return f"idle driver {driver}"
    return f"idle driver haltpoll, guest_halt_poll_ns {poll}" + (
        " (an idle virtual CPU halts at once)" if poll == "0" else ""
    )


def report():
    """Prints the probes, one line each."""
    line = lambda label, us, note="": print(f"  {label:<46}{us:8.2f} us{note}")  # noqa: E731
    cpuid = cpuid_us()
    if cpuid is None:
        print("  a CPUID instruction: left out (not x86-64, or no executable memory here)")
    else:
        line("a CPUID instruction", cpuid, f"   (glibc's start-up makes ~80: ~{cpuid * 80 / 1000:.2f} ms)")
    cpus = sorted(os.sched_getaffinity(0))
    same = pingpong_us((cpus[0], cpus[0]))
    line("pipe ping-pong round trip, one CPU", same)
    if len(cpus) > 1:
        across = pingpong_us((cpus[0], cpus[1]))
        line("pipe ping-pong round trip, two CPUs", across, f"   {across / same:.1f}x of one CPU")
    line("pipe ping-pong round trip, scheduler's choice", pingpong_us(None))
    idle = idle_setting()
    print(f"  {idle or 'idle driver: not given in sysfs'}")


if __name__ == "__main__":
    report()
