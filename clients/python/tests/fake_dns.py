"""A tiny authoritative DNS server for tests: answers A queries for the names
given on the command line (NAME=ADDR), NXDOMAIN for the rest, and logs each
question to stdout. Stdlib only; UDP only.

    python3 fake_dns.py 10.77.0.2 53 allowed.test=10.77.0.2 blocked.test=10.77.0.3
"""

import socket
import struct
import sys


def parse_question(msg):
    """Returns (name, qtype, end) of the first question."""
    at, labels = 12, []
    while msg[at]:
        n = msg[at]
        labels.append(msg[at + 1:at + 1 + n].decode("ascii").lower())
        at += 1 + n
    qtype = struct.unpack("!H", msg[at + 1:at + 3])[0]
    return ".".join(labels), qtype, at + 5


def answer(msg, table):
    name, qtype, end = parse_question(msg)
    addr = table.get(name)
    flags = 0x8400 | (0x0100 & struct.unpack("!H", msg[2:4])[0])  # response, authoritative, RD copied
    if addr is None:
        header = struct.pack("!HHHHHH", struct.unpack("!H", msg[:2])[0], flags | 3, 1, 0, 0, 0)
        return name, header + msg[12:end]
    records = b""
    if qtype == 1:
        records = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(addr)
    header = struct.pack("!HHHHHH", struct.unpack("!H", msg[:2])[0], flags, 1,
                         1 if records else 0, 0, 0)
    return name, header + msg[12:end] + records


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    table = dict(arg.split("=", 1) for arg in sys.argv[3:])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    print("ready", flush=True)
    while True:
        msg, peer = sock.recvfrom(4096)
        try:
            name, reply = answer(msg, table)
        except (IndexError, struct.error, UnicodeDecodeError):
            continue
        print("asked", name, flush=True)
        sock.sendto(reply, peer)


if __name__ == "__main__":
    main()
