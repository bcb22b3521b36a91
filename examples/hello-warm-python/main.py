"""A warm Python function: the slow part runs once, each request is a fresh copy.

    alcove fn deploy hello --code examples/hello-warm-python --runtime python --entry main.py --warm
    alcove fn invoke hello --data Ada          # hello, Ada (there are 78498 primes below 1000000)
"""
LIMIT = 1_000_000

# The "expensive" initialisation: a sieve, computed once in the template.
sieve = bytearray([1]) * LIMIT
sieve[0:2] = b"\0\0"
for n in range(2, int(LIMIT ** 0.5) + 1):
    if sieve[n]:
        sieve[n * n::n] = bytes(len(range(n * n, LIMIT, n)))
PRIMES = sieve.count(1)


def handle(body: bytes) -> str:
    name = body.decode("utf-8", "replace").strip() or "world"
    return f"hello, {name} (there are {PRIMES} primes below {LIMIT})\n"
