/* A warm alcove function in C. Initialisation (a sieve of the primes below 5,000,000, ~20 ms)
 * runs once in the template; each request is served by a fresh copy of the initialised process.
 * The handler reads the body on stdin and writes one line: the body's length, the number of
 * primes (from the table), a per-copy random number and how many calls this process has served
 * (always 1: a copy serves one request and exits; the template never calls the handler).
 *
 *     cc -std=c11 -O2 -Wall -Wextra -I runtimes/c -o examples/warm-c/warm examples/warm-c/main.c
 *     echo hello | ./examples/warm-c/warm      (cold: one request on stdin/stdout)
 */
#include "alcove_warm.h" /* first: it sets the feature macros */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>

#define LIMIT 5000000

static unsigned char *composite; /* composite[n] != 0: n is not prime; built at init */
static long prime_count;
static unsigned long calls;
static uint64_t prng_state; /* seeded at init, re-seeded in every copy by reseed() */

static void seed(void)
{
    uint64_t s = 0;
    ssize_t n;
    do
        n = getrandom(&s, sizeof s, 0);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof s) {
        perror("getrandom");
        exit(1);
    }
    prng_state = s | 1; /* xorshift64 needs a non-zero state */
}

static void reseed(void) { seed(); }

static uint64_t next_random(void)
{
    prng_state ^= prng_state << 13;
    prng_state ^= prng_state >> 7;
    prng_state ^= prng_state << 17;
    return prng_state;
}

static int handle(void)
{
    char buf[65536];
    unsigned long long body = 0;
    size_t n;
    calls++;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0)
        body += n;
    if (ferror(stdin)) {
        perror("read the body");
        return 1;
    }
    if (printf("body_bytes=%llu primes_below_%d=%ld random=%016llx calls=%lu\n", body, LIMIT,
               prime_count, (unsigned long long)next_random(), calls) < 0) {
        perror("write the answer");
        return 1;
    }
    return 0;
}

int main(void)
{
    long i, j;
    composite = calloc(LIMIT, 1);
    if (!composite) {
        perror("calloc");
        return 1;
    }
    for (i = 2; i * i < LIMIT; i++)
        if (!composite[i])
            for (j = i * i; j < LIMIT; j += i)
                composite[j] = 1;
    for (i = 2; i < LIMIT; i++)
        prime_count += !composite[i];
    seed();
    alcove_reseed_hook(reseed);
    return alcove_serve(handle);
}
