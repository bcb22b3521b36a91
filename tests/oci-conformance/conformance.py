#!/usr/bin/env python3
"""A port of a representative subset of opencontainers/runtime-tools'
validation/ programs (and the in-container checks of its cmd/runtimetest),
driving an OCI runtime through runc's command line.

Why a port: Debian's golang-github-opencontainers-runtime-tools-dev ships only
the library packages (generate, validate, specerror, cgroups, filepath, error,
api) -- validation/ and cmd/runtimetest are excluded -- and the source package's
orig tarball is not served by the reachable Debian mirror (404), nor is the Go
module proxy reachable.  The base config IS runtime-tools' own: gen/gen
(built from Debian's runtime-tools `generate` package) prints
generate.New("linux") -- the config util.GetDefaultGenerator() starts from.

Usage: conformance.py RUNTIME [--root DIR] [--only t1,t2] [--json OUT]
Output: TAP per test program, then a summary line per test.
"""
import argparse
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
SCRATCH = os.environ.get("CONFORMANCE_DIR", "/var/tmp/alcove-oci-conformance")
WORK = os.path.join(SCRATCH, "work")
TEMPLATE = os.path.join(SCRATCH, "rootfs-template")
DEFAULT_CONFIG = json.load(open(os.path.join(HERE, "gen", "default-config.json")))

CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
        "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
        "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD",
        "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE"]


def capmask(names):
    m = 0
    for n in names:
        m |= 1 << CAPS.index(n)
    return m


# --------------------------------------------------------------------------
# util.Runtime equivalent

class Result:
    def __init__(self, rc, out, err, argv):
        self.rc, self.out, self.err, self.argv = rc, out, err, argv

    @property
    def ok(self):
        return self.rc == 0

    def diag(self):
        return {"cmd": " ".join(self.argv), "rc": self.rc,
                "stderr": (self.err or "").strip()[-600:]}


class Runtime:
    def __init__(self, path, root):
        self.path, self.root = path, root

    def argv(self, *args):
        return [self.path, "--root", self.root] + [a for a in args if a is not None]

    def _run(self, *args, timeout=30, stdout=None, stderr=None):
        argv = self.argv(*args)
        try:
            if stdout is not None:
                p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                                   stderr=stderr, timeout=timeout)
                return Result(p.returncode, "", "", argv)
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=timeout)
            return Result(p.returncode, p.stdout, p.stderr, argv)
        except subprocess.TimeoutExpired:
            return Result(-999, "", "TIMEOUT after %ss" % timeout, argv)

    def create(self, cid, bundle, pid_file=None):
        """Like runtime-tools: the runtime's (and so the container's) stdout
        and stderr go to files in the bundle."""
        iodir = bundle if os.path.isdir(bundle) else WORK
        out = open(os.path.join(iodir, "stdout"), "ab")
        err = open(os.path.join(iodir, "stderr"), "ab")
        pos = err.tell()
        args = ["create", "--bundle", bundle]
        if pid_file:
            args += ["--pid-file", pid_file]
        if cid:
            args.append(cid)
        try:
            r = self._run(*args, stdout=out, stderr=err)
        finally:
            out.close()
            err.close()
        with open(os.path.join(iodir, "stderr"), "rb") as f:
            f.seek(pos)
            r.err = f.read().decode(errors="replace")
        if r.rc == -999:
            r.err = "TIMEOUT"
        return r

    def start(self, cid):
        return self._run("start", cid or None)

    def state(self, cid):
        r = self._run("state", cid or None)
        r.json = None
        if r.ok:
            try:
                r.json = json.loads(r.out)
            except ValueError as e:
                r.rc = -1
                r.err = "state output is not JSON: %s: %r" % (e, r.out[:200])
        return r

    def kill(self, cid, sig=None):
        return self._run("kill", cid or None, sig)

    def delete(self, cid, force=False):
        return self._run("delete", "--force" if force else None, cid or None)

    def status(self, cid):
        r = self.state(cid)
        return r.json.get("status") if r.ok and r.json else None

    def wait_status(self, cid, want, timeout=10.0):
        end = time.time() + timeout
        st = None
        while time.time() < end:
            st = self.status(cid)
            if st in want:
                return st
            time.sleep(0.1)
        return st

    def cleanup(self, cid):
        if self.status(cid) is None:
            return
        self.kill(cid, "KILL")
        self.wait_status(cid, ["stopped"], 5)
        r = self.delete(cid)
        if not r.ok:
            self.delete(cid, force=True)


# --------------------------------------------------------------------------
# bundles and configs

def default_config(args=None):
    """util.GetDefaultGenerator(): generate.New("linux") (root "rootfs")."""
    c = copy.deepcopy(DEFAULT_CONFIG)
    if args is not None:
        c["process"]["args"] = args
    return c


def prepare_bundle(name, config=None):
    d = os.path.join(WORK, "%s-%s" % (name, uuid.uuid4().hex[:8]))
    os.makedirs(d)
    subprocess.run(["cp", "-a", TEMPLATE, os.path.join(d, "rootfs")], check=True)
    if config is not None:
        write_config(d, config)
    return d


def write_config(bundle, config):
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f, indent=1)


def new_id():
    return str(uuid.uuid4())


def sh(script):
    return ["sh", "-c", script]


# --------------------------------------------------------------------------
# TAP

class T:
    def __init__(self, name):
        self.name, self.cases, self.skipped = name, [], None

    def ok(self, cond, desc, diag=None):
        self.cases.append((bool(cond), desc, diag))
        return bool(cond)

    def skip(self, why):
        self.skipped = why

    def tap(self):
        lines = ["# %s" % self.name, "TAP version 13"]
        if self.skipped:
            lines.append("1..0 # SKIP %s" % self.skipped)
            return "\n".join(lines)
        for i, (ok, desc, diag) in enumerate(self.cases, 1):
            lines.append("%s %d - %s" % ("ok" if ok else "not ok", i, desc))
            if diag and not ok:
                lines.append("  ---")
                for k, v in (diag.items() if isinstance(diag, dict) else [("info", diag)]):
                    v = str(v).replace("\n", "\n      ")
                    lines.append("  %s: %s" % (k, v))
                lines.append("  ...")
        lines.append("1..%d" % len(self.cases))
        return "\n".join(lines)

    @property
    def verdict(self):
        if self.skipped:
            return "SKIP"
        if not self.cases:
            return "FAIL"
        return "PASS" if all(c[0] for c in self.cases) else "FAIL"


def lifecycle_inside(rt, t, config, name, timeout=10.0):
    """util.RuntimeInsideValidate: create, start, wait for stopped, read the
    container's stdout, delete. Returns (stdout, bundle) or (None, bundle)."""
    bundle = prepare_bundle(name, config)
    cid = new_id()
    try:
        r = rt.create(cid, bundle)
        if not t.ok(r.ok, "create (%s)" % name, r.diag()):
            return None, bundle
        r = rt.start(cid)
        if not t.ok(r.ok, "start (%s)" % name, r.diag()):
            return None, bundle
        st = rt.wait_status(cid, ["stopped"], timeout)
        t.ok(st == "stopped", "container process exits, status stopped (%s)" % name,
             {"status": st})
        out = open(os.path.join(bundle, "stdout")).read()
        r = rt.delete(cid)
        t.ok(r.ok, "delete (%s)" % name, r.diag())
        return out, bundle
    finally:
        rt.cleanup(cid)


def kv(out):
    d = {}
    for line in (out or "").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            d.setdefault(k.strip(), v)
    return d


def status_field(out, field):
    for line in (out or "").splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return None


# --------------------------------------------------------------------------
# tests (names follow runtime-tools' validation/ programs)

TESTS = {}


def test(fn):
    TESTS[fn.__name__] = fn
    return fn


@test
def create(rt, t):
    bundle = prepare_bundle("create", default_config(["ls"]))
    cid = new_id()
    try:
        r = rt.create("", bundle)
        t.ok(not r.ok, "create MUST generate an error if the ID is not provided", r.diag())
        r = rt.create(cid, bundle)
        t.ok(r.ok, "create MUST create a new container", r.diag())
        s = rt.state(cid)
        t.ok(s.ok and s.json.get("id") == cid, "'state' MUST return the state of a container",
             s.diag())
        r = rt.create(cid, bundle)
        t.ok(not r.ok, "create MUST generate an error if the ID provided is not unique", r.diag())
        s = rt.state(cid)
        t.ok(s.ok and s.json.get("status") == "created",
             "failed duplicate create leaves the first container alone", s.diag())
    finally:
        rt.cleanup(cid)


@test
def start(rt, t):
    cfg = default_config(sh("echo started >> /start-output"))
    bundle = prepare_bundle("start", cfg)
    out = os.path.join(bundle, "rootfs", "start-output")
    cid = new_id()
    try:
        r = rt.start("")
        t.ok(not r.ok, "start MUST generate an error if it is not provided the container ID", r.diag())
        r = rt.start(cid)
        t.ok(not r.ok, "attempting to start a container that does not exist MUST generate an error", r.diag())
        r = rt.create(cid, bundle)
        t.ok(r.ok, "create", r.diag())
        time.sleep(0.5)
        t.ok(not os.path.exists(out), "create MUST NOT run the user-specified program")
        r = rt.start(cid)
        t.ok(r.ok, "start MUST run the user-specified program", r.diag())
        rt.wait_status(cid, ["stopped"])
        data = open(out).read() if os.path.exists(out) else ""
        t.ok(data == "started\n", "the user-specified program ran exactly once", {"output": repr(data)})
        r = rt.start(cid)
        t.ok(not r.ok, "attempting to start a container that is not created MUST generate an error", r.diag())
        data = open(out).read() if os.path.exists(out) else ""
        t.ok(data == "started\n", "start on a stopped container MUST have no effect", {"output": repr(data)})
    finally:
        rt.cleanup(cid)


@test
def state(rt, t):
    cfg = default_config(["sleep", "30"])
    cfg["annotations"] = {"org.opencontainers.runtime-tools": "state test"}
    bundle = prepare_bundle("state", cfg)
    cid = new_id()
    try:
        r = rt.state("")
        t.ok(not r.ok, "state MUST generate an error if it is not provided the ID", r.diag())
        r = rt.state(cid)
        t.ok(not r.ok, "state MUST generate an error for a container that does not exist", r.diag())
        r = rt.create(cid, bundle)
        t.ok(r.ok, "create", r.diag())
        s = rt.state(cid)
        j = s.json or {}
        t.ok(s.ok, "state returns JSON", s.diag())
        t.ok(isinstance(j.get("ociVersion"), str) and j.get("ociVersion"), "state.ociVersion is set", j)
        t.ok(j.get("id") == cid, "state.id is the container ID", j)
        t.ok(j.get("status") == "created", "state.status is 'created' after create", j)
        pid = j.get("pid")
        t.ok(isinstance(pid, int) and pid > 0 and os.path.exists("/proc/%d" % pid),
             "state.pid is the container process on the host while created", j)
        t.ok(j.get("bundle") == bundle, "state.bundle is the absolute bundle path", j)
        t.ok(j.get("annotations") == cfg["annotations"], "state.annotations are the config's", j)
        r = rt.start(cid)
        t.ok(r.ok, "start", r.diag())
        s = rt.state(cid)
        j = s.json or {}
        t.ok(j.get("status") == "running", "state.status is 'running' after start", j)
        t.ok(j.get("pid") == pid, "state.pid unchanged while running", j)
        rt.kill(cid, "KILL")
        st = rt.wait_status(cid, ["stopped"])
        t.ok(st == "stopped", "state.status is 'stopped' after the process exits", {"status": st})
        r = rt.delete(cid)
        t.ok(r.ok, "delete", r.diag())
        r = rt.state(cid)
        t.ok(not r.ok, "state MUST generate an error after the container is deleted", r.diag())
    finally:
        rt.cleanup(cid)


@test
def delete(rt, t):
    bundle = prepare_bundle("delete")
    cid = new_id()
    r = rt.delete("")
    t.ok(not r.ok, "delete MUST generate an error if it is not provided the container ID", r.diag())
    r = rt.delete(cid)
    t.ok(not r.ok, "delete of a container that does not exist MUST generate an error", r.diag())
    for label, args, act_start in (("created", ["true"], False), ("running", ["sleep", "30"], True)):
        write_config(bundle, default_config(args))
        cid = new_id()
        try:
            r = rt.create(cid, bundle)
            t.ok(r.ok, "create (%s)" % label, r.diag())
            if act_start:
                t.ok(rt.start(cid).ok, "start (%s)" % label)
            time.sleep(0.3)
            r = rt.delete(cid)
            t.ok(not r.ok, "attempting to delete a container that is not stopped MUST generate an error (%s)" % label, r.diag())
            s = rt.state(cid)
            t.ok(s.ok and s.json.get("status") == label,
                 "attempting to delete a container that is not stopped MUST have no effect (%s)" % label, s.diag())
            if not s.ok:
                continue
            rt.kill(cid, "KILL")
            rt.wait_status(cid, ["stopped"])
            r = rt.delete(cid)
            t.ok(r.ok, "delete of a stopped container succeeds (%s)" % label, r.diag())
            r = rt.state(cid)
            t.ok(not r.ok, "after delete the container is gone (%s)" % label, r.diag())
        finally:
            rt.cleanup(cid)


def cgroup_paths(pid):
    d = {}
    try:
        for line in open("/proc/%d/cgroup" % pid):
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(","):
                d[c or "unified"] = path
    except OSError:
        pass
    return d


def cgdir(ctrl, path):
    base = "/sys/fs/cgroup/unified" if ctrl == "unified" else "/sys/fs/cgroup/" + ctrl
    return base + path


@test
def delete_resources(rt, t):
    cfg = default_config(["sleep", "30"])
    cfg["linux"]["cgroupsPath"] = "/conformance-delres-%s" % uuid.uuid4().hex[:6]
    bundle = prepare_bundle("delete_resources", cfg)
    cid = new_id()
    try:
        r = rt.create(cid, bundle)
        t.ok(r.ok, "create", r.diag())
        pid = (rt.state(cid).json or {}).get("pid", 0)
        mem = cgdir("memory", cgroup_paths(pid).get("memory", "/nonexistent"))
        t.ok(os.path.isdir(mem), "the container's memory cgroup exists", {"dir": mem})
        rt.kill(cid, "KILL")
        rt.wait_status(cid, ["stopped"])
        r = rt.delete(cid)
        t.ok(r.ok, "delete", r.diag())
        time.sleep(0.3)
        t.ok(not os.path.isdir(mem), "delete MUST delete the resources that were created during create (cgroup)", {"dir": mem})
        t.ok(not os.path.exists("/proc/%d" % pid) or open("/proc/%d/stat" % pid).read().split()[2] == "Z",
             "container process gone", {"pid": pid})
    finally:
        rt.cleanup(cid)


@test
def kill(rt, t):
    bundle = prepare_bundle("kill")
    cid = new_id()
    r = rt.kill("", "KILL")
    t.ok(not r.ok, "kill MUST generate an error if it is not provided the container ID", r.diag())
    r = rt.kill(cid, "KILL")
    t.ok(not r.ok, "signal to a container that is neither created nor running MUST generate an error (nonexistent)", r.diag())
    for label, args, do_start, expect_ok in (("created", ["true"], False, True),
                                              ("stopped", ["true"], True, False),
                                              ("running", ["sleep", "30"], True, True)):
        write_config(bundle, default_config(args))
        cid = new_id()
        try:
            r = rt.create(cid, bundle)
            t.ok(r.ok, "create (%s)" % label, r.diag())
            if do_start:
                rt.start(cid)
            if label == "stopped":
                rt.wait_status(cid, ["stopped"])
            elif label == "running":
                time.sleep(0.3)
            r = rt.kill(cid, "KILL")
            if expect_ok:
                ok = r.ok and rt.wait_status(cid, ["stopped"]) == "stopped"
                t.ok(ok, "kill MUST send the specified signal to the container process (%s)" % label, r.diag())
            else:
                t.ok(not r.ok, "signal to a container that is neither created nor running MUST generate an error (stopped)", r.diag())
            r = rt.delete(cid)
            t.ok(r.ok, "delete (%s)" % label, r.diag())
        finally:
            rt.cleanup(cid)


@test
def kill_no_effect(rt, t):
    bundle = prepare_bundle("kill_no_effect", default_config(["true"]))
    cid = new_id()
    try:
        r = rt.create(cid, bundle)
        t.ok(r.ok, "create", r.diag())
        r = rt.start(cid)
        t.ok(r.ok, "start", r.diag())
        rt.wait_status(cid, ["stopped"])
        before = rt.state(cid).json
        r = rt.kill(cid, "KILL")
        after = rt.state(cid).json
        t.ok(not r.ok, "kill on a stopped container MUST generate an error", r.diag())
        t.ok(before == after and after and after.get("status") == "stopped",
             "kill on a stopped container MUST have no effect on the container", {"before": before, "after": after})
    finally:
        rt.cleanup(cid)


@test
def killsig(rt, t):
    script = ("trap 'echo TERM >> /sig' TERM; trap 'echo USR1 >> /sig' USR1; "
              "trap 'echo HUP >> /sig' HUP; echo ready > /ready; "
              "while true; do sleep 0.05; done")
    bundle = prepare_bundle("killsig", default_config(sh(script)))
    sigf = os.path.join(bundle, "rootfs", "sig")
    cid = new_id()
    try:
        t.ok(rt.create(cid, bundle).ok, "create")
        t.ok(rt.start(cid).ok, "start")
        end = time.time() + 5
        while time.time() < end and not os.path.exists(os.path.join(bundle, "rootfs", "ready")):
            time.sleep(0.05)
        seen = []
        for sig, expect in (("USR1", "USR1"), ("SIGUSR1", "USR1"), ("10", "USR1"),
                            ("HUP", "HUP"), (None, "TERM")):
            r = rt.kill(cid, sig)
            end = time.time() + 3
            want = seen + [expect]
            got = []
            while time.time() < end:
                got = open(sigf).read().split() if os.path.exists(sigf) else []
                if len(got) >= len(want):
                    break
                time.sleep(0.05)
            t.ok(r.ok and got == want, "kill %s delivers SIG%s to the container process" % (sig or "(no signal: default)", expect),
                 dict(r.diag(), got=got, want=want))
            seen = got if len(got) >= len(want) else want
        r = rt.kill(cid, "NOTASIGNAL")
        t.ok(not r.ok, "kill with an unknown signal name generates an error", r.diag())
    finally:
        rt.cleanup(cid)


@test
def pidfile(rt, t):
    bundle = prepare_bundle("pidfile", default_config(["sleep", "30"]))
    pf = os.path.join(bundle, "container.pid")
    cid = new_id()
    try:
        r = rt.create(cid, bundle, pid_file=pf)
        t.ok(r.ok, "create --pid-file", r.diag())
        data = open(pf).read().strip() if os.path.exists(pf) else ""
        pid = (rt.state(cid).json or {}).get("pid")
        t.ok(data.isdigit() and int(data) == pid, "pid-file holds the container process's pid",
             {"pidfile": data, "state.pid": pid})
    finally:
        rt.cleanup(cid)


def host_hook(cmd, timeout=None):
    h = {"path": "/bin/sh", "args": ["sh", "-c", cmd]}
    if timeout:
        h["timeout"] = timeout
    return h


@test
def hooks(rt, t):
    cfg = default_config(["sleep", "1"])
    bundle = prepare_bundle("hooks")
    log = os.path.join(bundle, "rootfs", "hooklog")
    hk = lambda s: host_hook("echo %s >> %s" % (s, log))
    rootfs = os.path.join(bundle, "rootfs")
    # createContainer: path resolves in the runtime namespace, runs in the
    # container namespace before pivot_root, so the host rootfs path is valid.
    cc = {"path": "/bin/sh", "args": ["sh", "-c", "echo createContainer >> %s; readlink /proc/self/ns/mnt > %s/cc-mntns"
                                      % (log, rootfs)]}
    # startContainer: path resolves in, and runs in, the container (after pivot_root).
    sc = {"path": "/bin/sh", "args": ["sh", "-c", "echo startContainer >> /hooklog; readlink /proc/self/ns/mnt > /sc-mntns"]}
    cfg["hooks"] = {
        "prestart": [hk("pre-start1"), hk("pre-start2")],
        "createRuntime": [hk("createRuntime")],
        "createContainer": [cc],
        "startContainer": [sc],
        "poststart": [hk("post-start1"), hk("post-start2")],
        "poststop": [hk("post-stop1"), hk("post-stop2")],
    }
    write_config(bundle, cfg)
    cid = new_id()
    read = lambda: open(log).read().split() if os.path.exists(log) else []
    try:
        t.ok(rt.create(cid, bundle).ok, "create")
        got = read()
        t.ok(got[:2] == ["pre-start1", "pre-start2"], "prestart hooks run at create, in order", {"log": got})
        t.ok("createRuntime" in got and "createContainer" in got
             and got.index("createRuntime") < got.index("createContainer"),
             "createRuntime then createContainer (in the container's namespace) run at create", {"log": got})
        t.ok("startContainer" not in got and not any(g.startswith("post") for g in got),
             "startContainer/poststart/poststop do not run at create", {"log": got})
        pid = (rt.state(cid).json or {}).get("pid")
        cmnt = ns_of(pid, "mnt")
        ccm = open(os.path.join(rootfs, "cc-mntns")).read().strip() if os.path.exists(os.path.join(rootfs, "cc-mntns")) else None
        t.ok(ccm == cmnt, "createContainer runs in the container's mount namespace", {"hook": ccm, "container": cmnt})
        t.ok(rt.start(cid).ok, "start")
        time.sleep(0.3)
        scm = open(os.path.join(rootfs, "sc-mntns")).read().strip() if os.path.exists(os.path.join(rootfs, "sc-mntns")) else None
        t.ok(scm == cmnt, "startContainer runs in the container's mount namespace (path resolved in the container)", {"hook": scm, "container": cmnt})
        rt.wait_status(cid, ["stopped"])
        got = read()
        t.ok("startContainer" in got and "createContainer" in got and got.index("startContainer") > got.index("createContainer"),
             "startContainer runs at start, after createContainer", {"log": got})
        t.ok([g for g in got if g.startswith("post-start")] == ["post-start1", "post-start2"],
             "poststart hooks run after start, in order", {"log": got})
        t.ok(not any(g.startswith("post-stop") for g in got), "poststop has not run before delete", {"log": got})
        t.ok(rt.delete(cid).ok, "delete")
        got = read()
        t.ok(got[-2:] == ["post-stop1", "post-stop2"], "poststop hooks run at delete, in order", {"log": got})
    finally:
        rt.cleanup(cid)


@test
def hooks_stdin(rt, t):
    bundle = prepare_bundle("hooks_stdin")
    out = os.path.join(bundle, "rootfs")
    cfg = default_config(["true"])
    cfg["annotations"] = {"org.opencontainers.runtime-tools": "hook stdin test"}
    cfg["hooks"] = {h: [host_hook("cat > %s/%s" % (out, h), timeout=1)]
                    for h in ("prestart", "poststart", "poststop")}
    write_config(bundle, cfg)
    cid = new_id()
    pid = None
    try:
        t.ok(rt.create(cid, bundle).ok, "create")
        pid = (rt.state(cid).json or {}).get("pid")
        t.ok(rt.start(cid).ok, "start")
        rt.wait_status(cid, ["stopped"])
        t.ok(rt.delete(cid).ok, "delete")
    finally:
        rt.cleanup(cid)
    for h in ("prestart", "poststart", "poststop"):
        errs = []
        try:
            s = json.load(open(os.path.join(out, h)))
        except Exception as e:
            s = {}
            errs.append("no state JSON: %s" % e)
        if s.get("id") != cid:
            errs.append("id %r" % s.get("id"))
        if s.get("bundle") != bundle:
            errs.append("bundle %r" % s.get("bundle"))
        if h != "poststop" and s.get("pid") != pid:
            errs.append("pid %r != %r" % (s.get("pid"), pid))
        if s.get("annotations") != cfg["annotations"]:
            errs.append("annotations %r" % s.get("annotations"))
        want = {"prestart": "created", "poststart": "running"}.get(h)
        if want and s.get("status") != want:
            errs.append("status %r, want %r" % (s.get("status"), want))
        if h == "poststop" and not s.get("status"):
            errs.append("empty status")
        t.ok(not errs, "the state of the container MUST be passed to %r hook over stdin" % h,
             {"errors": errs, "state": s})


@test
def prestart_fail(rt, t):
    cfg = default_config(sh("echo ran > /output"))
    cfg["hooks"] = {"prestart": [host_hook("exit 1")]}
    bundle = prepare_bundle("prestart_fail", cfg)
    cid = new_id()
    try:
        r1 = rt.create(cid, bundle)
        r2 = rt.start(cid) if r1.ok else r1
        time.sleep(0.5)
        ran = os.path.exists(os.path.join(bundle, "rootfs", "output"))
        t.ok((not r1.ok or not r2.ok) and not ran,
             "if any prestart hook fails, the runtime MUST generate an error, stop the container, and not run the process",
             {"create": r1.diag(), "start": r2.diag(), "process ran": ran})
    finally:
        rt.cleanup(cid)


@test
def poststart_fail(rt, t):
    cfg = default_config(sh("echo ran > /output"))
    cfg["hooks"] = {"poststart": [host_hook("exit 1")]}
    bundle = prepare_bundle("poststart_fail", cfg)
    cid = new_id()
    try:
        r = rt.create(cid, bundle)
        t.ok(r.ok, "create", r.diag())
        r = rt.start(cid)
        rt.wait_status(cid, ["stopped"])
        ran = os.path.exists(os.path.join(bundle, "rootfs", "output"))
        t.ok(ran, "if any poststart hook fails, the runtime MUST log a warning, but the lifecycle continues "
                  "(process runs)", {"start": r.diag(), "process ran": ran})
    finally:
        rt.cleanup(cid)


@test
def poststop_fail(rt, t):
    cfg = default_config(["true"])
    cfg["hooks"] = {"poststop": [host_hook("exit 1")]}
    bundle = prepare_bundle("poststop_fail", cfg)
    cid = new_id()
    try:
        t.ok(rt.create(cid, bundle).ok, "create")
        t.ok(rt.start(cid).ok, "start")
        rt.wait_status(cid, ["stopped"])
        r = rt.delete(cid)
        gone = not rt.state(cid).ok
        t.ok(r.ok and gone, "if any poststop hook fails, the runtime MUST log a warning, but the remaining "
                            "lifecycle continues (delete succeeds)", dict(r.diag(), gone=gone))
    finally:
        rt.cleanup(cid)


@test
def config_updates_without_affect(rt, t):
    cfg = default_config(sh("hostname > /out"))
    cfg["hostname"] = "original-host"
    bundle = prepare_bundle("config_updates", cfg)
    cid = new_id()
    try:
        t.ok(rt.create(cid, bundle).ok, "create")
        cfg2 = copy.deepcopy(cfg)
        cfg2["hostname"] = "changed-host"
        cfg2["process"]["args"] = sh("echo changed > /out")
        write_config(bundle, cfg2)
        t.ok(rt.start(cid).ok, "start")
        rt.wait_status(cid, ["stopped"])
        out = open(os.path.join(bundle, "rootfs", "out")).read().strip() if os.path.exists(
            os.path.join(bundle, "rootfs", "out")) else ""
        t.ok(out == "original-host", "updates to config.json after create MUST NOT affect the container",
             {"out": out})
    finally:
        rt.cleanup(cid)


@test
def hostname(rt, t):
    cfg = default_config(sh("hostname"))
    cfg["hostname"] = "hostname-specific"
    out, _ = lifecycle_inside(rt, t, cfg, "hostname")
    t.ok(out is not None and out.strip() == "hostname-specific", "hostname is set in the UTS namespace",
         {"got": out})


@test
def default(rt, t):
    """validation/default.go: runtimetest over the default generator's config."""
    script = r"""
echo hostname=$(hostname)
echo uid=$(id -u); echo gid=$(id -g); echo cwd=$(pwd)
grep -E '^(Cap|NoNewPrivs|Seccomp|Groups)' /proc/$$/status | sed 's/:\t*/=/'
echo nofile=$(grep 'Max open files' /proc/$$/limits | awk '{print $4":"$5}')
echo env=$(env | sort | tr '\n' ' ')
for d in null zero full random urandom tty; do echo dev_$d=$(stat -c '%F %t:%T' /dev/$d 2>&1); done
echo dev_ptmx=$(stat -c '%F' /dev/ptmx 2>&1) $(readlink /dev/ptmx)
for l in fd stdin stdout stderr; do echo link_$l=$(readlink /dev/$l); done
awk '{for(i=7;i<=NF;i++) if($i=="-"){print "mount_"$5"="$(i+1)" "$6; break}}' /proc/$$/mountinfo
"""
    out, _ = lifecycle_inside(rt, t, default_config(sh(script)), "default")
    if out is None:
        return
    d = kv(out)
    cfg = DEFAULT_CONFIG
    t.ok(d.get("hostname") == cfg["hostname"], "hostname", d.get("hostname"))
    t.ok(d.get("uid") == "0" and d.get("gid") == "0", "process.user uid/gid", out)
    t.ok(d.get("cwd") == "/", "process.cwd", d.get("cwd"))
    caps = cfg["process"]["capabilities"]
    for key, setname in (("CapBnd", "bounding"), ("CapEff", "effective"), ("CapPrm", "permitted"),
                         ("CapInh", "inheritable"), ("CapAmb", "ambient")):
        want = capmask(caps[setname])
        got = int(d.get(key, "-1"), 16) if d.get(key) else None
        t.ok(got == want, "process.capabilities.%s" % setname, {"got": hex(got or 0), "want": hex(want)})
    t.ok(d.get("nofile") == "1024:1024", "process.rlimits RLIMIT_NOFILE 1024/1024", d.get("nofile"))
    t.ok(d.get("Seccomp") == "2", "linux.seccomp filter installed", d.get("Seccomp"))
    env = d.get("env", "")
    t.ok(all(e in env.split() for e in cfg["process"]["env"]), "process.env", env)
    majors = {"null": "1:3", "zero": "1:5", "full": "1:7", "random": "1:8", "urandom": "1:9", "tty": "5:0"}
    for dev, mm in majors.items():
        v = d.get("dev_" + dev, "")
        t.ok(v == "character special file %s" % mm, "default device /dev/%s" % dev, v)
    v = d.get("dev_ptmx", "")
    t.ok(v.endswith("pts/ptmx") or v.startswith("character special"), "default device /dev/ptmx", v)
    for l, want in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                    ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        t.ok(d.get("link_" + l) == want, "default symlink /dev/%s -> %s" % (l, want), d.get("link_" + l))
    for m in cfg["mounts"]:
        v = d.get("mount_" + m["destination"])
        t.ok(v is not None and v.split()[0] == m["type"], "mount %s type %s" % (m["destination"], m["type"]), v)


@test
def mounts(rt, t):
    bundle_src = os.path.join(WORK, "mounts-src-%s" % uuid.uuid4().hex[:6])
    os.makedirs(bundle_src)
    open(os.path.join(bundle_src, "hello"), "w").write("from-host\n")
    script = r"""
cat /mnt/bind/hello
grep -E ' /(mnt/bind|mnt/tmpfs|mnt/newdir/deep) ' /proc/$$/mountinfo
touch /mnt/bind/x 2>&1 || echo bind-ro-ok
touch /mnt/tmpfs/x && echo tmpfs-rw-ok
"""
    cfg = default_config(sh(script))
    cfg["mounts"] += [
        {"destination": "/mnt/bind", "type": "bind", "source": bundle_src, "options": ["rbind", "ro"]},
        {"destination": "/mnt/tmpfs", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "size=1m", "mode=1777"]},
        {"destination": "/mnt/newdir/deep", "type": "tmpfs", "source": "tmpfs", "options": []},
    ]
    out, _ = lifecycle_inside(rt, t, cfg, "mounts")
    if out is None:
        return
    lines = out.splitlines()
    mi = {l.split()[4]: l for l in lines if len(l.split()) > 6 and l.split()[4].startswith("/mnt")}
    t.ok("from-host" in lines, "bind mount source is visible", out)
    b = mi.get("/mnt/bind", "")
    t.ok(b and "ro" in b.split()[5].split(","), "bind mount with 'ro' is read-only", b)
    t.ok("bind-ro-ok" in out, "write to ro bind mount fails", out)
    tm = mi.get("/mnt/tmpfs", "")
    t.ok(tm and " - tmpfs " in tm and "nosuid" in tm.split()[5] and "nodev" in tm.split()[5],
         "tmpfs mount with nosuid,nodev", tm)
    t.ok("tmpfs-rw-ok" in out, "tmpfs is writable", out)
    t.ok("/mnt/newdir/deep" in mi, "mount destination directories are created", out)


@test
def linux_masked_paths(rt, t):
    bundle_cfg = default_config(sh(r"""
echo dir=$(ls -A /masked-dir | tr '\n' ' ')
echo file=$(cat /masked-file 2>&1)
echo subfile=$(cat /masked-dir/secret 2>&1)
"""))
    bundle_cfg["linux"]["maskedPaths"] = ["/masked-dir", "/masked-file", "/masked-nonexistent"]
    bundle = prepare_bundle("masked_paths", bundle_cfg)
    os.makedirs(os.path.join(bundle, "rootfs", "masked-dir"))
    open(os.path.join(bundle, "rootfs", "masked-dir", "secret"), "w").write("secret\n")
    open(os.path.join(bundle, "rootfs", "masked-file"), "w").write("secret\n")
    # lifecycle_inside makes its own bundle: reuse this one
    cid = new_id()
    try:
        r = rt.create(cid, bundle)
        t.ok(r.ok, "create (maskedPaths incl. a nonexistent one)", r.diag())
        if not r.ok:
            return
        t.ok(rt.start(cid).ok, "start")
        rt.wait_status(cid, ["stopped"])
        d = kv(open(os.path.join(bundle, "stdout")).read())
        t.ok(d.get("dir", "x").strip() == "", "masked directory is empty", d)
        t.ok("secret" not in d.get("file", "secret"), "masked file is not readable", d)
        t.ok(d.get("subfile") != "secret", "file under masked directory is hidden", d)
    finally:
        rt.cleanup(cid)


@test
def linux_readonly_paths(rt, t):
    cfg = default_config(sh(r"""
echo dirw=$(touch /ro-dir/new 2>&1 && echo writable)
echo filew=$(echo x 2>&1 > /ro-file && echo writable)
echo rd=$(cat /ro-file)
"""))
    cfg["linux"]["readonlyPaths"] = ["/ro-dir", "/ro-file", "/ro-nonexistent"]
    bundle = prepare_bundle("readonly_paths", cfg)
    os.makedirs(os.path.join(bundle, "rootfs", "ro-dir"))
    open(os.path.join(bundle, "rootfs", "ro-file"), "w").write("content\n")
    cid = new_id()
    try:
        r = rt.create(cid, bundle)
        t.ok(r.ok, "create (readonlyPaths incl. a nonexistent one)", r.diag())
        if not r.ok:
            return
        t.ok(rt.start(cid).ok, "start")
        rt.wait_status(cid, ["stopped"])
        d = kv(open(os.path.join(bundle, "stdout")).read())
        t.ok("writable" not in d.get("dirw", "writable") and "Read-only" in d.get("dirw", ""),
             "readonly directory is not writable (EROFS)", d)
        t.ok("writable" not in d.get("filew", "writable") and "Read-only" in d.get("filew", ""),
             "readonly file is not writable (EROFS)", d)
        t.ok(d.get("rd") == "content", "readonly file is still readable", d)
    finally:
        rt.cleanup(cid)


@test
def linux_sysctl(rt, t):
    cfg = default_config(sh("echo fwd=$(cat /proc/sys/net/ipv4/ip_forward); "
                            "echo msgmax=$(cat /proc/sys/kernel/msgmax); "
                            "echo somax=$(cat /proc/sys/net/core/somaxconn)"))
    cfg["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1", "kernel.msgmax": "4096",
                              "net.core.somaxconn": "1234"}
    out, _ = lifecycle_inside(rt, t, cfg, "sysctl")
    d = kv(out)
    t.ok(d.get("fwd") == "1", "linux.sysctl net.ipv4.ip_forward=1 (net ns)", d)
    t.ok(d.get("msgmax") == "4096", "linux.sysctl kernel.msgmax=4096 (ipc ns)", d)
    t.ok(d.get("somax") == "1234", "linux.sysctl net.core.somaxconn=1234", d)


@test
def linux_rootfs_propagation(rt, t):
    for prop, marker in (("private", None), ("slave", "master:"), ("shared", "shared:"),
                         ("unbindable", "unbindable")):
        cfg = default_config(sh("awk '$5==\"/\"' /proc/$$/mountinfo"))
        cfg["linux"]["rootfsPropagation"] = prop
        out, _ = lifecycle_inside(rt, t, cfg, "propagation-" + prop)
        line = (out or "").strip().splitlines()[-1:] or [""]
        line = line[0]
        fields = line.split(" - ")[0].split()[6:]
        if marker is None:
            ok = out is not None and not any(f.startswith(("shared:", "master:", "unbindable")) for f in fields)
        else:
            ok = any(f.startswith(marker) for f in fields)
        t.ok(ok, "linux.rootfsPropagation %s: / has propagation %s" % (prop, marker or "private"),
             {"mountinfo": line})


@test
def linux_devices(rt, t):
    cfg = default_config(sh("for d in /dev/test-char /dev/test-blk /dev/test-fifo; do "
                            "echo ${d#/dev/}=$(stat -c '%F %t:%T %a %u:%g' $d 2>&1); done"))
    cfg["linux"]["devices"] = [
        {"path": "/dev/test-char", "type": "c", "major": 1, "minor": 3, "fileMode": 0o644, "uid": 1, "gid": 2},
        {"path": "/dev/test-blk", "type": "b", "major": 7, "minor": 0, "fileMode": 0o600, "uid": 0, "gid": 0},
        {"path": "/dev/test-fifo", "type": "p", "fileMode": 0o622, "uid": 0, "gid": 0},
    ]
    out, _ = lifecycle_inside(rt, t, cfg, "devices")
    d = kv(out)
    t.ok(d.get("test-char") == "character special file 1:3 644 1:2", "char device type/major/minor/mode/uid/gid", d)
    t.ok(d.get("test-blk") == "block special file 7:0 600 0:0", "block device type/major/minor/mode/uid/gid", d)
    t.ok((d.get("test-fifo") or "").startswith("fifo 0:0 622 0:0"), "fifo device type/mode", d)


@test
def process(rt, t):
    cfg = default_config(sh(r"""
echo cwd=$(pwd); echo uid=$(id -u); echo gid=$(id -g)
grep -E '^Groups' /proc/$$/status | sed 's/:\t*/=/'
echo umask=$(umask); echo testa=$testa; echo testb=$testb; echo args="$0 $1"
""") + ["arg0", "arg1"])
    cfg["process"]["cwd"] = "/tmp"
    cfg["process"]["env"] += ["testa=valuea", "testb=123"]
    cfg["process"]["user"] = {"uid": 1000, "gid": 1001, "additionalGids": [5, 2000], "umask": 0o027}
    out, _ = lifecycle_inside(rt, t, cfg, "process")
    d = kv(out)
    t.ok(d.get("cwd") == "/tmp", "process.cwd", d)
    t.ok(d.get("uid") == "1000", "process.user.uid", d)
    t.ok(d.get("gid") == "1001", "process.user.gid", d)
    t.ok(sorted((d.get("Groups") or "").split()) == ["2000", "5"], "process.user.additionalGids", d)
    t.ok(d.get("umask") == "0027", "process.user.umask", d)
    t.ok(d.get("testa") == "valuea" and d.get("testb") == "123", "process.env", d)
    t.ok(d.get("args") == "arg0 arg1", "process.args", d)


@test
def process_cwd_created(rt, t):
    """runc creates a missing cwd; runtime-tools' process test uses a cwd
    ("/aa") not in its rootfs, so this is required for it to pass there."""
    cfg = default_config(sh("pwd"))
    cfg["process"]["cwd"] = "/aa/bb"
    out, _ = lifecycle_inside(rt, t, cfg, "cwd")
    t.ok(out is not None and out.strip() == "/aa/bb", "process.cwd that does not exist in the rootfs", out)


@test
def process_capabilities(rt, t):
    keep = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    cfg = default_config(sh("grep ^Cap /proc/$$/status | sed 's/:\t*/=/'"))
    cfg["process"]["capabilities"] = {"bounding": keep, "effective": keep, "permitted": keep,
                                      "inheritable": keep, "ambient": ["CAP_KILL"]}
    out, _ = lifecycle_inside(rt, t, cfg, "caps")
    d = kv(out)
    for key, setname, names in (("CapBnd", "bounding", keep), ("CapEff", "effective", keep),
                                ("CapPrm", "permitted", keep), ("CapInh", "inheritable", keep),
                                ("CapAmb", "ambient", ["CAP_KILL"])):
        got = int(d[key], 16) if d.get(key) else None
        t.ok(got == capmask(names), "process.capabilities.%s" % setname,
             {"got": hex(got) if got is not None else None, "want": hex(capmask(names))})
    # non-root user keeps the configured caps too (via ambient)
    cfg = default_config(sh("grep ^Cap /proc/$$/status | sed 's/:\t*/=/'"))
    cfg["process"]["user"] = {"uid": 1000, "gid": 1000}
    keep2 = ["CAP_NET_BIND_SERVICE"]
    cfg["process"]["capabilities"] = {"bounding": keep2, "effective": keep2, "permitted": keep2,
                                      "inheritable": keep2, "ambient": keep2}
    out, _ = lifecycle_inside(rt, t, cfg, "caps-nonroot")
    d = kv(out)
    for key in ("CapBnd", "CapEff", "CapPrm", "CapAmb"):
        got = int(d[key], 16) if d.get(key) else None
        t.ok(got == capmask(keep2), "non-root user: %s" % key,
             {"got": hex(got) if got is not None else None, "want": hex(capmask(keep2))})


@test
def process_capabilities_fail(rt, t):
    cfg = default_config(["true"])
    cfg["process"]["capabilities"]["bounding"] = ["CAP_TEST"]
    bundle = prepare_bundle("caps_fail", cfg)
    cid = new_id()
    try:
        r1 = rt.create(cid, bundle)
        r2 = rt.start(cid) if r1.ok else r1
        t.ok(not r1.ok or not r2.ok, "an unknown capability MUST generate an error", {"create": r1.diag(), "start": r2.diag()})
    finally:
        rt.cleanup(cid)


@test
def process_rlimits(rt, t):
    cfg = default_config(sh("grep -E 'Max (open files|core file size|processes)' /proc/$$/limits"))
    cfg["process"]["rlimits"] = [
        {"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1024},
        {"type": "RLIMIT_CORE", "soft": 4096, "hard": 8192},
        {"type": "RLIMIT_NPROC", "soft": 1000, "hard": 2000},
    ]
    out, _ = lifecycle_inside(rt, t, cfg, "rlimits")
    lim = {}
    for line in (out or "").splitlines():
        p = line.split()
        lim[" ".join(p[:-3]) if p[-1] in ("files", "bytes", "processes") else line] = p[-3:-1]
    t.ok(lim.get("Max open files") == ["512", "1024"], "RLIMIT_NOFILE soft/hard", out)
    t.ok(lim.get("Max core file size") == ["4096", "8192"], "RLIMIT_CORE soft/hard", out)
    t.ok(lim.get("Max processes") == ["1000", "2000"], "RLIMIT_NPROC soft/hard", out)


@test
def process_rlimits_fail(rt, t):
    cfg = default_config(["true"])
    cfg["process"]["rlimits"] = [{"type": "RLIMIT_TEST", "soft": 1, "hard": 1}]
    bundle = prepare_bundle("rlimits_fail", cfg)
    cid = new_id()
    try:
        r1 = rt.create(cid, bundle)
        r2 = rt.start(cid) if r1.ok else r1
        t.ok(not r1.ok or not r2.ok, "an unknown rlimit type MUST generate an error", {"create": r1.diag(), "start": r2.diag()})
    finally:
        rt.cleanup(cid)


@test
def process_oom_score_adj(rt, t):
    cfg = default_config(sh("cat /proc/$$/oom_score_adj"))
    cfg["process"]["oomScoreAdj"] = 500
    out, _ = lifecycle_inside(rt, t, cfg, "oom")
    t.ok(out is not None and out.strip() == "500", "process.oomScoreAdj", out)


@test
def process_no_new_privileges(rt, t):
    for v in (True, False):
        cfg = default_config(sh("grep NoNewPrivs /proc/$$/status"))
        cfg["process"]["noNewPrivileges"] = v
        out, _ = lifecycle_inside(rt, t, cfg, "nnp")
        got = (out or "").split()[-1:] or [""]
        t.ok(got[0] == ("1" if v else "0"), "process.noNewPrivileges=%s" % v, out)


@test
def root_readonly(rt, t):
    cfg = default_config(sh("touch /newfile 2>&1; awk '$5==\"/\" {print $6}' /proc/$$/mountinfo"))
    cfg["root"]["readonly"] = True
    out, _ = lifecycle_inside(rt, t, cfg, "root_ro")
    t.ok(out is not None and "Read-only file system" in out, "root.readonly: writing to / fails with EROFS", out)
    t.ok(out is not None and out.strip().splitlines()[-1].split(",")[0] == "ro", "root.readonly: / mounted ro", out)


NS = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts", "mount": "mnt", "cgroup": "cgroup"}


def ns_of(pid, name):
    try:
        return os.readlink("/proc/%s/ns/%s" % (pid, name))
    except OSError as e:
        return "ERR %s" % e


@test
def linux_ns_itype(rt, t):
    cfg = default_config(["sleep", "30"])
    cfg["linux"]["namespaces"] = [{"type": k} for k in NS]
    bundle = prepare_bundle("ns_itype", cfg)
    cid = new_id()
    try:
        r = rt.create(cid, bundle)
        t.ok(r.ok, "create with pid,network,ipc,uts,mount,cgroup namespaces", r.diag())
        pid = (rt.state(cid).json or {}).get("pid")
        for k, n in NS.items():
            c, h = ns_of(pid, n), ns_of("self", n)
            t.ok(pid and not c.startswith("ERR") and c != h, "new %s namespace" % k, {"container": c, "host": h})
    finally:
        rt.cleanup(cid)


@test
def linux_ns_nopath(rt, t):
    cfg = default_config(["sleep", "30"])
    cfg["linux"]["namespaces"] = [{"type": "mount"}]
    cfg.pop("hostname", None)  # a hostname needs a UTS namespace
    bundle = prepare_bundle("ns_nopath", cfg)
    cid = new_id()
    try:
        r = rt.create(cid, bundle)
        t.ok(r.ok, "create with only a mount namespace", r.diag())
        pid = (rt.state(cid).json or {}).get("pid")
        for k in ("pid", "network", "ipc", "uts", "cgroup"):
            c, h = ns_of(pid, NS[k]), ns_of("self", NS[k])
            t.ok(pid and c == h, "namespace type not in the config: %s inherited from the runtime" % k,
                 {"container": c, "host": h})
    finally:
        rt.cleanup(cid)


@test
def linux_ns_path(rt, t):
    holder = subprocess.Popen(["unshare", "--net", "--ipc", "--uts", "--cgroup", "sleep", "60"])
    time.sleep(0.3)
    cfg = default_config(["sleep", "30"])
    kinds = ("network", "ipc", "uts", "cgroup")
    cfg["linux"]["namespaces"] = [{"type": "pid"}, {"type": "mount"}] + [
        {"type": k, "path": "/proc/%d/ns/%s" % (holder.pid, NS[k])} for k in kinds]
    bundle = prepare_bundle("ns_path", cfg)
    cid = new_id()
    try:
        r = rt.create(cid, bundle)
        t.ok(r.ok, "create joining existing namespaces by path", r.diag())
        pid = (rt.state(cid).json or {}).get("pid")
        for k in kinds:
            c, h = ns_of(pid, NS[k]), ns_of(holder.pid, NS[k])
            t.ok(pid and c == h, "joined %s namespace by path" % k, {"container": c, "wanted": h})
    finally:
        rt.cleanup(cid)
        holder.kill()
        holder.wait()


@test
def linux_ns_path_type(rt, t):
    cfg = default_config(["true"])
    cfg["linux"]["namespaces"] = [{"type": "mount"}, {"type": "network", "path": "/proc/self/ns/uts"}]
    bundle = prepare_bundle("ns_path_type", cfg)
    cid = new_id()
    try:
        r1 = rt.create(cid, bundle)
        r2 = rt.start(cid) if r1.ok else r1
        t.ok(not r1.ok or not r2.ok, "a namespace path of the wrong type MUST generate an error",
             {"create": r1.diag(), "start": r2.diag()})
    finally:
        rt.cleanup(cid)


@test
def linux_uid_mappings(rt, t):
    cfg = default_config(sh("echo uid_map=$(cat /proc/$$/uid_map); echo gid_map=$(cat /proc/$$/gid_map); "
                            "echo uid=$(id -u); ls /bin/sh >/dev/null && echo rootfs-ok"))
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 200000, "size": 65536}]
    out, bundle = lifecycle_inside(rt, t, cfg, "userns")
    d = kv(out)
    t.ok(" ".join(d.get("uid_map", "").split()) == "0 100000 65536", "linux.uidMappings", d)
    t.ok(" ".join(d.get("gid_map", "").split()) == "0 200000 65536", "linux.gidMappings", d)
    t.ok(d.get("uid") == "0" and "rootfs-ok" in (out or ""), "process runs as mapped root", out)


def cg_lifecycle(rt, t, name, resources, cgpath, checks):
    cfg = default_config(["sleep", "30"])
    cfg["linux"]["resources"].update(resources)
    if cgpath:
        cfg["linux"]["cgroupsPath"] = cgpath
    bundle = prepare_bundle(name, cfg)
    cid = new_id()
    try:
        r = rt.create(cid, bundle)
        t.ok(r.ok, "create (%s, cgroupsPath=%s)" % (name, cgpath), r.diag())
        if not r.ok:
            return
        pid = (rt.state(cid).json or {}).get("pid")
        paths = cgroup_paths(pid)
        if cgpath:
            want = cgpath if cgpath.startswith("/") else None
            for ctrl in {c[0] for c in checks}:
                p = paths.get(ctrl)
                if want:
                    t.ok(p == want, "absolute cgroupsPath used as-is (%s)" % ctrl, {"got": p, "want": want})
                else:
                    t.ok(p is not None and p.endswith("/" + cgpath), "relative cgroupsPath (%s)" % ctrl,
                         {"got": p, "cgroupsPath": cgpath})
        for ctrl, fname, want, desc in checks:
            f = os.path.join(cgdir(ctrl, paths.get(ctrl, "/nonexistent")), fname)
            try:
                got = open(f).read().strip()
            except OSError as e:
                got = "ERR %s" % e
            ok = want(got) if callable(want) else got == want
            t.ok(ok, desc, {"file": f, "got": got, "want": want if not callable(want) else "(predicate)"})
    finally:
        rt.cleanup(cid)


@test
def linux_cgroups_memory(rt, t):
    res = {"memory": {"limit": 50 * 1024 * 1024, "reservation": 25 * 1024 * 1024, "swappiness": 50,
                      "disableOOMKiller": True}}
    checks = [("memory", "memory.limit_in_bytes", str(50 * 1024 * 1024), "memory.limit"),
              ("memory", "memory.soft_limit_in_bytes", str(25 * 1024 * 1024), "memory.reservation"),
              ("memory", "memory.swappiness", "50", "memory.swappiness"),
              ("memory", "memory.oom_control", lambda s: "oom_kill_disable 1" in s, "memory.disableOOMKiller")]
    cg_lifecycle(rt, t, "cg_memory", res, "/conformance-cg-%s" % uuid.uuid4().hex[:6], checks)


@test
def linux_cgroups_relative_memory(rt, t):
    res = {"memory": {"limit": 30 * 1024 * 1024}}
    checks = [("memory", "memory.limit_in_bytes", str(30 * 1024 * 1024), "memory.limit")]
    cg_lifecycle(rt, t, "cg_rel_memory", res, "conformance-rel/cg-%s" % uuid.uuid4().hex[:6], checks)


@test
def linux_cgroups_pids(rt, t):
    checks = [("pids", "pids.max", "1000", "pids.limit")]
    cg_lifecycle(rt, t, "cg_pids", {"pids": {"limit": 1000}}, "/conformance-cg-%s" % uuid.uuid4().hex[:6], checks)


@test
def linux_cgroups_cpus(rt, t):
    res = {"cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"}}
    checks = [("cpu", "cpu.shares", "1024", "cpu.shares"),
              ("cpu", "cpu.cfs_quota_us", "50000", "cpu.quota"),
              ("cpu", "cpu.cfs_period_us", "100000", "cpu.period"),
              ("cpuset", "cpuset.cpus", "0", "cpu.cpus"),
              ("cpuset", "cpuset.mems", "0", "cpu.mems")]
    cg_lifecycle(rt, t, "cg_cpus", res, "/conformance-cg-%s" % uuid.uuid4().hex[:6], checks)


@test
def linux_cgroups_devices(rt, t):
    res = {"devices": [{"allow": False, "access": "rwm"},
                       {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"},
                       {"allow": True, "type": "b", "major": 8, "minor": 0, "access": "r"}]}
    checks = [("devices", "devices.list", lambda s: "c 10:229 rw" in s.splitlines(), "allow c 10:229 rw"),
              ("devices", "devices.list", lambda s: "b 8:0 r" in s.splitlines(), "allow b 8:0 r"),
              ("devices", "devices.list", lambda s: "a *:* rwm" not in s, "deny all in effect")]
    cg_lifecycle(rt, t, "cg_devices", res, "/conformance-cg-%s" % uuid.uuid4().hex[:6], checks)


@test
def linux_seccomp(rt, t):
    for errno_ret, msg in ((None, "Operation not permitted"), (13, "Permission denied")):
        cfg = default_config(sh("mkdir /tmp/newdir 2>&1; grep Seccomp: /proc/$$/status; "
                                "touch /tmp/f && echo touch-ok"))
        rule = {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}
        if errno_ret:
            rule["errnoRet"] = errno_ret
        cfg["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW",
                                   "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                                   "syscalls": [rule]}
        out, _ = lifecycle_inside(rt, t, cfg, "seccomp")
        t.ok(out is not None and msg in out, "SCMP_ACT_ERRNO (errnoRet=%s) -> mkdir fails with %r" % (errno_ret, msg), out)
        t.ok(out is not None and "touch-ok" in out, "defaultAction SCMP_ACT_ALLOW lets other syscalls through", out)


@test
def invalid_input(rt, t):
    """Errors on bad input (runtime.md: create MUST generate an error ...)."""
    def expect_fail(desc, bundle, cid=None):
        cid = cid or new_id()
        try:
            r1 = rt.create(cid, bundle)
            r2 = rt.start(cid) if r1.ok else r1
            t.ok(not r1.ok, desc, {"create": r1.diag(), "start": r2.diag() if r2 is not r1 else ""})
        finally:
            rt.cleanup(cid)

    b = prepare_bundle("noconfig")
    expect_fail("create with a bundle that has no config.json generates an error", b)
    b = prepare_bundle("badjson")
    open(os.path.join(b, "config.json"), "w").write("{ not json")
    expect_fail("create with a malformed config.json generates an error", b)
    expect_fail("create with a bundle directory that does not exist generates an error",
                os.path.join(WORK, "does-not-exist-%s" % uuid.uuid4().hex[:6]))
    cfg = default_config(["true"])
    cfg["root"]["path"] = "no-such-rootfs"
    expect_fail("create with a root.path that does not exist generates an error", prepare_bundle("noroot", cfg))
    cfg = default_config([])
    expect_fail("create with empty process.args generates an error", prepare_bundle("noargs", cfg))
    cfg = default_config(["true"])
    cfg["process"]["cwd"] = "relative/cwd"
    expect_fail("create with a relative process.cwd generates an error", prepare_bundle("relcwd", cfg))
    cfg = default_config(["true"])
    cfg["linux"]["namespaces"].append({"type": "bogus"})
    expect_fail("create with an unknown namespace type generates an error", prepare_bundle("badns", cfg))
    b = prepare_bundle("badid", default_config(["true"]))
    expect_fail("create with an ID containing '/' generates an error", b, cid="../escape")


@test
def start_process_not_found(rt, t):
    cfg = default_config(["/no/such/binary"])
    bundle = prepare_bundle("noexe", cfg)
    cid = new_id()
    try:
        r1 = rt.create(cid, bundle)
        r2 = rt.start(cid) if r1.ok else r1
        t.ok(not r1.ok or not r2.ok, "a process.args[0] that does not exist generates an error at create or start",
             {"create": r1.diag(), "start": r2.diag()})
    finally:
        rt.cleanup(cid)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runtime")
    ap.add_argument("--root")
    ap.add_argument("--only")
    ap.add_argument("--json")
    ap.add_argument("--modern-seccomp", action="store_true",
                    help="add openat2, faccessat2 and close_range (allowed by today's docker/podman "
                         "profiles) to the default seccomp allowlist; runtime-tools' generate profile predates them")
    a = ap.parse_args()
    if a.modern_seccomp:
        DEFAULT_CONFIG["linux"]["seccomp"]["syscalls"][0]["names"] += ["openat2", "faccessat2", "close_range"]
    runtime = os.path.abspath(a.runtime) if os.path.exists(a.runtime) else a.runtime
    root = a.root or "/run/conformance-%s" % os.path.basename(runtime)
    os.makedirs(root, exist_ok=True)
    os.makedirs(WORK, exist_ok=True)
    rt = Runtime(runtime, root)
    names = a.only.split(",") if a.only else list(TESTS)
    results = {}
    for n in names:
        t = T(n)
        t0 = time.time()
        try:
            TESTS[n](rt, t)
        except Exception as e:  # a crash in the harness is a failure of that test
            import traceback
            t.ok(False, "test raised %s" % type(e).__name__, traceback.format_exc())
        print(t.tap())
        print("# %s: %s (%.1fs)\n" % (n, t.verdict, time.time() - t0), flush=True)
        results[n] = {"verdict": t.verdict,
                      "passed": sum(1 for c in t.cases if c[0]),
                      "total": len(t.cases),
                      "failed": [c[1] for c in t.cases if not c[0]]}
    if a.json:
        json.dump(results, open(a.json, "w"), indent=1)
    p = sum(1 for r in results.values() if r["verdict"] == "PASS")
    f = sum(1 for r in results.values() if r["verdict"] == "FAIL")
    print("%d passed, %d failed" % (p, f))
    return 0 if f == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
