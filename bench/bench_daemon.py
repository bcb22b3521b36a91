"""A daemon of a given alcove build for the bench scripts that compare builds or time one
call: its own data directory under /var/tmp, its own token, loopback on a free port; and its
removal, with the sandbox homes it mounted (those outlive a daemon by design)."""
import os
import re
import subprocess
import tempfile
import time


class Daemon:
    def __init__(self, binary, tag, *args):
        self.binary = binary
        self.home = tempfile.mkdtemp(prefix=f"alcove-{tag}-", dir="/var/tmp")
        token_file = os.path.join(self.home, "token")
        with open(token_file, "w") as f:
            f.write(f"{tag}-" + os.urandom(8).hex() + "\n")
        os.chmod(token_file, 0o600)
        log = os.path.join(self.home, "log")
        try:
            with open(log, "w") as out:
                self.proc = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0",
                                              "--data-dir", f"{self.home}/data",
                                              "--token-file", token_file, *args], stderr=out)
        except OSError as e:
            subprocess.run(["rm", "-rf", self.home], check=False)
            raise SystemExit(f"{binary}: {e}") from None
        for _ in range(200):
            found = re.search(r"serving http://(\S+)", open(log).read())
            if found or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if not found:
            text = open(log).read()
            self.stop()
            raise SystemExit(f"{binary} did not start: {text}")
        self.addr = found.group(1)
        self.token = open(token_file).read().strip()

    def server(self):
        """Keyword arguments for the SDK's Sandbox.create."""
        return {"server": "http://" + self.addr, "token": self.token}

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        prefix = self.home + "/"
        mounts = [line.split()[4] for line in open("/proc/self/mountinfo")
                  if line.split()[4].startswith(prefix)]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        subprocess.run(["rm", "-rf", self.home], check=False)
