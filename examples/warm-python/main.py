"""The warm-start showcase: a function whose initialisation is the expensive part.

Its module-level code imports a dozen standard modules, fills 50 MB of memory
and builds a SQLite table; handle() then answers in microseconds. Deployed
warm, that initialisation runs once, in the template, and every request is
served by a fresh copy of the initialised process:

    alcove fn deploy warm-python --code examples/warm-python --runtime python --entry main.py --warm
    alcove fn invoke warm-python --data 'hello'

The response tells a warm copy and a cold run apart only where it must:
`sha256`, `data_bytes` and `query` are the same either way, `random` and
`uuid` differ from copy to copy (the runtime re-seeds them), and `calls` is 1
in every copy, since nothing a request changes reaches the next one.
"""
import argparse  # noqa: F401  the imports are part of the initialisation being measured
import csv  # noqa: F401
import decimal  # noqa: F401
import email.parser  # noqa: F401
import fractions  # noqa: F401
import hashlib
import http.client  # noqa: F401
import json
import os
import random
import sqlite3
import statistics  # noqa: F401
import unittest  # noqa: F401
import uuid
import xml.etree.ElementTree  # noqa: F401
import zipfile  # noqa: F401

PAGE = 4096
DATA = bytearray(50 * 1024 * 1024)
# bytearray() is calloc'd: untouched pages are not memory yet. One byte a page
# makes all 50 MB the template's own, which is what each copy then shares.
DATA[::PAGE] = bytes(i % 251 + 1 for i in range(len(DATA) // PAGE))

DB = sqlite3.connect(":memory:")
DB.execute("CREATE TABLE squares (n INTEGER PRIMARY KEY, square INTEGER)")
DB.executemany("INSERT INTO squares VALUES (?, ?)", ((n, n * n) for n in range(10_000)))
DB.commit()

calls = 0


def handle(body: bytes) -> str:
    global calls
    calls += 1
    (total,) = DB.execute("SELECT sum(square) FROM squares WHERE n % 7 = 0").fetchone()
    return json.dumps({
        "sha256": hashlib.sha256(body).hexdigest(),
        "data_bytes": len(DATA),
        "query": total,
        "random": random.random(),
        "uuid": str(uuid.uuid4()),
        "pid": os.getpid(),
        "calls": calls,
    }) + "\n"
