/*
 * alcove_warm.h: the C runtime side of alcove's warm starts (docs/warm-protocol.md, version 1).
 *
 * One header, static functions only, C99 plus Linux and POSIX headers. Include it FIRST in the one
 * .c file that has main() (it defines _GNU_SOURCE; or compile with -D_GNU_SOURCE):
 *
 *     #include "alcove_warm.h"
 *     static int handle(void) { ... read stdin, write stdout; return the exit code ... }
 *     int main(void) {
 *         ... initialisation: load tables, open read-only files ...
 *         return alcove_serve(handle);
 *     }
 *
 * int alcove_serve(int (*handle)(void))
 *   Cold run (ALCOVE_WARM absent from the environment): calls handle() once and returns its
 *   result, so the same program serves one request on stdin/stdout as an ordinary function.
 *   Warm run: the process is the template. It checks that it is one thread (else a message on
 *   stderr and exit 3), flushes stdio, says `ready`, sets SIGCHLD to SIG_IGN and forks one copy
 *   per `fork` it is sent; it exits 0 when alcove closes the control socket and never returns.
 *   Each copy sets itself up as the protocol says, connects to alcove, waits for its request,
 *   takes the request's stdin/stdout/stderr and environment, calls the reseed hook (below) and
 *   handle(), flushes stdio (fflush(NULL)), reports `exit CODE START_NS END_NS` and _exit()s
 *   with CODE (handle()'s result & 0xff). A handler may also end with exit(CODE): the report is
 *   then sent from an on_exit() handler (not so with _exit() or a signal, which alcove reports
 *   as a copy killed by a signal).
 *
 * void alcove_reseed_hook(void (*fn)(void))
 *   Set before alcove_serve(): fn is called in each copy after its request's environment is in
 *   place and just before handle(), to re-seed anything that must differ between copies (a PRNG
 *   seeded at initialisation would otherwise give every copy the same numbers).
 *
 * What the template may keep for its copies: memory, and descriptors open read-only (files,
 * directories) or on character devices. A pipe, a socket, an eventfd, an epoll or a file opened
 * for writing left open at init is shared by every copy, and alcove refuses such copies. The
 * copy closes only the control socket; everything else the program opened stays open for the
 * handler to use. Do not start threads before alcove_serve() (or stop them first).
 *
 * What the template's sandbox must give (alcove's does, for a function not run as uid 0): a
 * writable /proc (step 2 writes /proc/self/uid_map) with nothing mounted over its files or
 * non-empty directories (a masked /proc/kcore or a read-only /proc/sys makes the kernel refuse
 * the copy's own proc in step 7, EPERM), and the two ALCOVE_COPY_* paths outside /tmp, /dev/shm
 * and /dev/pts, which the copy covers with fresh mounts before it uses them.
 *
 * A copy that fails a setup step writes why to stderr (while stderr is still the template's) and
 * exits 100 + the step number of docs/warm-protocol.md ("Making a copy"); from step 8 on stderr is
 * /dev/null, so the exit status is the only trace. The template never dies of a copy's failure.
 * Template exit statuses: 0 control socket closed, 1 control socket error, 2 bad ALCOVE_*
 * environment, 3 not single-threaded at `ready`.
 */
#ifndef ALCOVE_WARM_H
#define ALCOVE_WARM_H

#ifndef _GNU_SOURCE
#ifdef _FEATURES_H
#error "alcove_warm.h: include it before any system header, or compile with -D_GNU_SOURCE"
#endif
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#define ALCOVE__FN static inline
#define ALCOVE__NORETURN static inline __attribute__((noreturn))

#ifndef MS_NOSYMFOLLOW
#define MS_NOSYMFOLLOW 256
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef __NR_mount_setattr
#define __NR_mount_setattr 442 /* the same number on every architecture */
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

#define ALCOVE__REQUEST_MAX (1u << 20)      /* the request's environment payload */
#define ALCOVE__MOUNTINFO_MAX (16u << 20)   /* /proc/self/mountinfo */
#define ALCOVE__FILTER_MAX (BPF_MAXINSNS * sizeof(struct sock_filter))
#define ALCOVE__SHARED_MAX 256              /* ALCOVE_SHARED_RW entries */

/* mount_setattr(2)'s argument (its own definition: <linux/mount.h> clashes with <sys/mount.h>
 * in some glibc versions). */
struct alcove__mount_attr {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};
#define ALCOVE__MOUNT_ATTR_RDONLY 0x1ULL

/* What the template reads from its environment once, for every copy. */
static struct {
    int ctl_fd;
    unsigned long unshare_flags;
    char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    char filter_path[PATH_MAX];
    char tmpfs_opts[96];
    char shared_buf[16384];
    const char *shared[ALCOVE__SHARED_MAX];
    int n_shared;
    char shared_was_rw[ALCOVE__SHARED_MAX]; /* filled in by each copy, in step 4 */
} alcove__cfg;

static void (*alcove__reseed_fn)(void);

ALCOVE__FN void alcove_reseed_hook(void (*fn)(void)) { alcove__reseed_fn = fn; }

/* ---- small helpers ------------------------------------------------------------------------ */

/* Write a line to stderr; a failing write to stderr leaves nothing else to do. */
ALCOVE__FN void alcove__say(const char *who, const char *what, int err)
{
    char msg[768];
    int n;
    if (err)
        n = snprintf(msg, sizeof msg, "alcove_warm: %s: %s: %s\n", who, what, strerror(err));
    else
        n = snprintf(msg, sizeof msg, "alcove_warm: %s: %s\n", who, what);
    if (n <= 0)
        return;
    if ((size_t)n >= sizeof msg) {
        n = (int)sizeof msg - 1;
        msg[n - 1] = '\n';
    }
    if (write(2, msg, (size_t)n) < 0) {
        /* nowhere left to report it */
    }
}

/* A copy's setup step failed: say why and exit 100 + step. */
ALCOVE__NORETURN void alcove__copy_fail(int step, const char *what, int err)
{
    char buf[600];
    int n = snprintf(buf, sizeof buf, "step %d, %s", step, what);
    alcove__say("copy", n > 0 ? buf : what, err);
    _exit(100 + step);
}

ALCOVE__FN int64_t alcove__now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return -1;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Write all of s to path (a /proc file): 0, or -1 with errno set. */
ALCOVE__FN int alcove__write_file(const char *path, const char *s)
{
    size_t len = strlen(s);
    ssize_t n;
    int err;
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    n = write(fd, s, len);
    err = errno;
    if (close(fd) != 0 && n == (ssize_t)len)
        return -1;
    if (n < 0) {
        errno = err;
        return -1;
    }
    if ((size_t)n != len) {
        errno = EIO;
        return -1;
    }
    return 0;
}

/* Read the whole file at path into buf (at most cap - 1 bytes, NUL-terminated): its length, or
 * -1 with errno set (EFBIG when it does not fit). */
ALCOVE__FN ssize_t alcove__read_file(const char *path, char *buf, size_t cap)
{
    size_t len = 0;
    int err = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    for (;;) {
        ssize_t n;
        if (len + 1 >= cap) {
            err = EFBIG;
            break;
        }
        n = read(fd, buf + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            err = errno;
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (close(fd) != 0 && !err)
        err = errno;
    if (err) {
        errno = err;
        return -1;
    }
    buf[len] = '\0';
    return (ssize_t)len;
}

/* Read a whole file into a growing malloc'd buffer of at most max bytes (NUL-terminated). */
ALCOVE__FN char *alcove__slurp(const char *path, size_t max, size_t *out_len)
{
    size_t cap = 16384, len = 0;
    char *buf = malloc(cap);
    int fd, err = 0;
    if (!buf)
        return NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        err = errno;
        free(buf);
        errno = err;
        return NULL;
    }
    for (;;) {
        ssize_t n;
        if (len + 1 >= cap) {
            char *bigger;
            if (cap >= max) {
                err = EFBIG;
                break;
            }
            cap = cap * 2 > max ? max : cap * 2;
            bigger = realloc(buf, cap);
            if (!bigger) {
                err = ENOMEM;
                break;
            }
            buf = bigger;
        }
        n = read(fd, buf + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            err = errno;
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (close(fd) != 0 && !err)
        err = errno;
    if (err) {
        free(buf);
        errno = err;
        return NULL;
    }
    buf[len] = '\0';
    *out_len = len;
    return buf;
}

/* A decimal number that is all of s: 0, or -1. */
ALCOVE__FN int alcove__parse_ulong(const char *s, unsigned long *out)
{
    char *end;
    unsigned long v;
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

/* mountinfo escapes space, tab, newline and backslash as \ooo: undo it in place. */
ALCOVE__FN void alcove__unescape(char *s)
{
    char *w = s;
    while (*s) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
            s[3] >= '0' && s[3] <= '7') {
            *w++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
            s += 4;
        } else {
            *w++ = *s++;
        }
    }
    *w = '\0';
}

/* ---- the copy's mounts ------------------------------------------------------------------- */

struct alcove__mnt {
    unsigned long id, parent;
    char *point;        /* unescaped mount point */
    int rw;              /* per-mount rw (not the superblock's) */
    unsigned long keep;  /* MS_NOSUID MS_NODEV MS_NOEXEC MS_NOSYMFOLLOW as the mount has them */
    unsigned long atime; /* its atime mode, as MS_* flags */
};

/* Parse one mountinfo line in place; 0, or -1 when it is malformed. */
ALCOVE__FN int alcove__parse_mount(char *line, struct alcove__mnt *m)
{
    char *field[6], *p = line, *opt, *save = NULL;
    int i, atime = 0;
    for (i = 0; i < 6; i++) {
        field[i] = p;
        p = strchr(p, ' ');
        if (!p)
            return -1; /* the options are always followed by " - fstype ..." */
        *p++ = '\0';
    }
    if (alcove__parse_ulong(field[0], &m->id) != 0 || alcove__parse_ulong(field[1], &m->parent) != 0)
        return -1;
    alcove__unescape(field[4]);
    m->point = field[4];
    m->rw = 0;
    m->keep = 0;
    m->atime = 0;
    for (opt = strtok_r(field[5], ",", &save); opt; opt = strtok_r(NULL, ",", &save)) {
        if (!strcmp(opt, "rw"))
            m->rw = 1;
        else if (!strcmp(opt, "nosuid"))
            m->keep |= MS_NOSUID;
        else if (!strcmp(opt, "nodev"))
            m->keep |= MS_NODEV;
        else if (!strcmp(opt, "noexec"))
            m->keep |= MS_NOEXEC;
        else if (!strcmp(opt, "nosymfollow"))
            m->keep |= MS_NOSYMFOLLOW;
        else if (!strcmp(opt, "nodiratime"))
            m->atime |= MS_NODIRATIME;
        else if (!strcmp(opt, "noatime")) {
            m->atime |= MS_NOATIME;
            atime = 1;
        } else if (!strcmp(opt, "relatime")) {
            m->atime |= MS_RELATIME;
            atime = 1;
        }
    }
    if (!atime)
        m->atime |= MS_STRICTATIME;
    return 0;
}

/* The owner's --bind DIR:rw mounts stay writable. (The template's /proc does not: the copy's own
 * proc goes over it at step 7, and alcove refuses a copy with the template's proc writable.) */
ALCOVE__FN int alcove__keep_writable(const char *point)
{
    int i;
    for (i = 0; i < alcove__cfg.n_shared; i++)
        if (!strcmp(point, alcove__cfg.shared[i]))
            return 1;
    return 0;
}

/* Read and parse /proc/self/mountinfo: a malloc'd array of *count mounts pointing into *text
 * (free both). Fails the copy (step 4) on error. */
ALCOVE__FN struct alcove__mnt *alcove__mounts(char **text, size_t *count)
{
    size_t len, n = 0, lines = 1;
    char *buf, *line, *end, *c;
    struct alcove__mnt *mnts;
    buf = alcove__slurp("/proc/self/mountinfo", ALCOVE__MOUNTINFO_MAX, &len);
    if (!buf)
        alcove__copy_fail(4, "read /proc/self/mountinfo", errno);
    for (c = buf; (c = memchr(c, '\n', (size_t)(buf + len - c))) != NULL; c++)
        lines++;
    mnts = malloc(lines * sizeof *mnts);
    if (!mnts)
        alcove__copy_fail(4, "read /proc/self/mountinfo", ENOMEM);
    end = buf + len;
    for (line = buf; line < end;) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        if (!nl)
            nl = end;
        *nl = '\0';
        if (*line) {
            if (n == lines || alcove__parse_mount(line, &mnts[n]) != 0)
                alcove__copy_fail(4, "malformed line in /proc/self/mountinfo", 0);
            n++;
        }
        line = nl + 1;
    }
    *text = buf;
    *count = n;
    return mnts;
}

/* Step 4's remount. Every writable mount but the owner's rw binds is remounted
 * read-only by its mount point, keeping the flags a user namespace may not clear, as the protocol
 * says (nosuid, nodev, noexec, and nosymfollow, which it could clear; without an atime flag a
 * remount keeps the atime mode, also locked). A mount hidden under another one mounted on top of it (or of a mount above it) cannot be
 * reached by its path, so when one mount covers another the whole tree is made read-only at once
 * with mount_setattr(AT_RECURSIVE) (which keeps every other flag), the owner's rw binds
 * are given their write access back (they were writable, so it is not locked), and mountinfo is
 * read again to make sure nothing else is left writable. *proc_flags: the flags the mount at
 * /proc had before (read-only only if it was so from the start, which the kernel then locks),
 * which the copy's new proc must keep (step 7). */
ALCOVE__FN void alcove__remount_read_only(unsigned long *proc_flags)
{
    char *text;
    size_t n, i, j;
    int covered = 0;
    struct alcove__mnt *m = alcove__mounts(&text, &n);

    for (i = 0; i < n; i++) {
        if (!strcmp(m[i].point, "/proc")) {
            *proc_flags = m[i].keep | m[i].atime | (m[i].rw ? 0 : MS_RDONLY);
        }
        for (j = 0; j < n && !covered; j++)
            if (m[j].parent == m[i].id && j != i && !strcmp(m[j].point, m[i].point))
                covered = 1;
        if (!m[i].rw)
            continue;
        if (alcove__keep_writable(m[i].point)) {
            for (j = 0; j < (size_t)alcove__cfg.n_shared; j++)
                if (!strcmp(m[i].point, alcove__cfg.shared[j]))
                    alcove__cfg.shared_was_rw[j] = 1;
            continue;
        }
        /* no atime flag: a remount keeps the mount's atime mode (which is locked too) */
        if (mount(NULL, m[i].point, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | m[i].keep, NULL) != 0) {
            char what[PATH_MAX + 64];
            snprintf(what, sizeof what, "remount %s read-only", m[i].point);
            alcove__copy_fail(4, what, errno);
        }
    }
    free(m);
    free(text);
    if (!covered)
        return;

    {
        struct alcove__mount_attr attr;
        int k;
        memset(&attr, 0, sizeof attr);
        attr.attr_set = ALCOVE__MOUNT_ATTR_RDONLY;
        if (syscall(__NR_mount_setattr, AT_FDCWD, "/", AT_RECURSIVE, &attr, sizeof attr) != 0)
            alcove__copy_fail(4, "a mount covers another; mount_setattr(/, AT_RECURSIVE, RDONLY)",
                              errno);
        memset(&attr, 0, sizeof attr);
        attr.attr_clr = ALCOVE__MOUNT_ATTR_RDONLY;
        for (k = 0; k < alcove__cfg.n_shared; k++) {
            if (alcove__cfg.shared_was_rw[k] &&
                syscall(__NR_mount_setattr, AT_FDCWD, alcove__cfg.shared[k], 0, &attr,
                        sizeof attr) != 0) {
                char what[PATH_MAX + 64];
                snprintf(what, sizeof what, "make %s writable again", alcove__cfg.shared[k]);
                alcove__copy_fail(4, what, errno);
            }
        }
    }
    m = alcove__mounts(&text, &n);
    for (i = 0; i < n; i++) {
        if (m[i].rw && !alcove__keep_writable(m[i].point)) {
            char what[PATH_MAX + 64];
            snprintf(what, sizeof what, "%s is still writable", m[i].point);
            alcove__copy_fail(4, what, 0);
        }
    }
    free(m);
    free(text);
}

ALCOVE__FN int alcove__is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* ---- the copy ----------------------------------------------------------------------------- */

/* Steps 9 and 10 and 11: drop capabilities, install the filter, connect and say `copy`.
 * Returns the connected socket. */
ALCOVE__FN int alcove__lock_down_and_connect(void)
{
    char num[32];
    unsigned long last_cap, c;
    struct __user_cap_header_struct hdr;
    struct __user_cap_data_struct data[2];
    static struct sock_filter filter[BPF_MAXINSNS + 1];
    struct sock_fprog prog;
    struct sockaddr_un addr;
    ssize_t n;
    int sock;

    /* 9. every capability, for good */
    if (alcove__read_file("/proc/sys/kernel/cap_last_cap", num, sizeof num) < 0)
        alcove__copy_fail(9, "read /proc/sys/kernel/cap_last_cap", errno);
    num[strcspn(num, "\n")] = '\0';
    if (alcove__parse_ulong(num, &last_cap) != 0 || last_cap > 1023)
        alcove__copy_fail(9, "bad /proc/sys/kernel/cap_last_cap", 0);
    for (c = 0; c <= last_cap; c++)
        if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0)
            alcove__copy_fail(9, "PR_CAPBSET_DROP", errno);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        alcove__copy_fail(9, "PR_CAP_AMBIENT_CLEAR_ALL", errno);
    memset(&hdr, 0, sizeof hdr);
    memset(data, 0, sizeof data);
    hdr.version = _LINUX_CAPABILITY_VERSION_3;
    hdr.pid = 0;
    if (syscall(SYS_capset, &hdr, data) != 0)
        alcove__copy_fail(9, "capset", errno);

    /* 10. the copy's seccomp filter */
    n = alcove__read_file(alcove__cfg.filter_path, (char *)filter, sizeof filter);
    if (n < 0)
        alcove__copy_fail(10, "read ALCOVE_COPY_FILTER", errno);
    if (n == 0 || (size_t)n % sizeof(struct sock_filter) != 0 || (size_t)n > ALCOVE__FILTER_MAX)
        alcove__copy_fail(10, "ALCOVE_COPY_FILTER is not an array of struct sock_filter", 0);
    prog.len = (unsigned short)((size_t)n / sizeof(struct sock_filter));
    prog.filter = filter;
    /* Already set by alcove for the whole sandbox; setting it again changes nothing. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        alcove__copy_fail(10, "PR_SET_NO_NEW_PRIVS", errno);
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0)
        alcove__copy_fail(10, "PR_SET_SECCOMP", errno);

    /* 11. connect, say `copy` */
    sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (sock < 0)
        alcove__copy_fail(11, "socket", errno);
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, alcove__cfg.sock_path, strlen(alcove__cfg.sock_path) + 1);
    while (connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0)
        if (errno != EINTR)
            alcove__copy_fail(11, "connect to ALCOVE_COPY_SOCKET", errno);
    while (send(sock, "copy", 4, MSG_NOSIGNAL) != 4)
        if (errno != EINTR)
            alcove__copy_fail(11, "send copy", errno);
    return sock;
}

/* The copy's `exit CODE START_NS END_NS`, sent once: when handle() returns, or from exit() if
 * the handler calls it (on_exit), so that a handler's exit(1) is not taken for a crash. */
static struct {
    int sock, sent;
    int64_t start;
} alcove__done;

ALCOVE__FN void alcove__report_exit(int code)
{
    char line[96];
    int64_t stop = alcove__now_ns();
    int n;
    if (alcove__done.sent)
        return;
    alcove__done.sent = 1;
    if (fflush(NULL) != 0) {
        /* the handler's output is gone (a closed pipe, say); its exit code still stands */
    }
    /* Output ends now, not when the kernel has torn the copy's memory down after _exit. */
    {
        int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (null >= 0) {
            (void)dup2(null, 1);
            (void)dup2(null, 2);
            close(null);
        }
    }
    n = snprintf(line, sizeof line, "exit %d %lld %lld", code, (long long)alcove__done.start,
                 (long long)stop);
    if (n > 0 && (size_t)n < sizeof line) {
        ssize_t sent;
        do
            sent = send(alcove__done.sock, line, (size_t)n, MSG_NOSIGNAL);
        while (sent < 0 && errno == EINTR);
        if (sent != n)
            alcove__say("copy", "send exit", sent < 0 ? errno : EMSGSIZE);
    }
}

ALCOVE__FN void alcove__on_exit(int status, void *arg)
{
    (void)arg;
    alcove__report_exit(status & 0xff);
}

/* Step 12: the request. Never returns. */
ALCOVE__NORETURN void alcove__serve_request(int sock, int (*handle)(void))
{
    union {
        char buf[CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr msg;
    struct iovec iov;
    struct cmsghdr *cm;
    int fds[3], nfds = 0, i, code;
    char *env, *p, *end;
    ssize_t n;
    size_t len;

    env = malloc(ALCOVE__REQUEST_MAX + 1);
    if (!env)
        _exit(100 + 12);
    memset(&msg, 0, sizeof msg);
    iov.iov_base = env;
    iov.iov_len = ALCOVE__REQUEST_MAX;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    do
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        _exit(100 + 12);
    for (cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            size_t k;
            for (k = 0; k < count; k++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cm) + k * sizeof(int), sizeof fd);
                if (nfds < 3)
                    fds[nfds++] = fd;
                else if (close(fd) != 0)
                    _exit(100 + 12);
            }
        }
    }
    /* n == 0 with no descriptors: alcove hung up without a request. */
    if (nfds != 3 || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
        _exit(100 + 12);
    for (i = 0; i < 3; i++)
        if (dup2(fds[i], i) != i)
            _exit(100 + 12);
    for (i = 0; i < 3; i++)
        if (close(fds[i]) != 0)
            alcove__copy_fail(12, "close a received descriptor", errno);
    clearerr(stdin);
    clearerr(stdout);
    clearerr(stderr);

    /* the invocation's whole environment, KEY=VALUE\0 ... */
    if (clearenv() != 0)
        alcove__copy_fail(12, "clearenv", errno);
    len = (size_t)n;
    env[len] = '\0';
    for (p = env, end = env + len; p < end; p += strlen(p) + 1) {
        char *eq = strchr(p, '=');
        if (!eq || eq == p)
            continue; /* not KEY=VALUE: nothing to set */
        if (putenv(p) != 0)
            alcove__copy_fail(12, "putenv", errno);
    }

    if (alcove__reseed_fn)
        alcove__reseed_fn();
    alcove__done.sock = sock;
    if (on_exit(alcove__on_exit, NULL) != 0)
        alcove__copy_fail(12, "on_exit", ENOMEM);
    alcove__done.start = alcove__now_ns();
    code = handle() & 0xff;
    alcove__report_exit(code);
    _exit(code);
}

/* The child of the template's fork(): steps 1 to 12. Never returns. */
ALCOVE__NORETURN void alcove__copy(int (*handle)(void))
{
    char map[64];
    uid_t uid = geteuid();
    gid_t gid = getegid();
    unsigned long proc_flags = 0;
    pid_t pid;
    int fd, sock, n;

    /* 1. fresh namespaces, a user namespace over them */
    if (unshare((int)alcove__cfg.unshare_flags) != 0)
        alcove__copy_fail(1, "unshare(ALCOVE_UNSHARE_FLAGS)", errno);

    /* 2. keep its identity */
    if (alcove__write_file("/proc/self/setgroups", "deny") != 0)
        alcove__copy_fail(2, "write /proc/self/setgroups", errno);
    n = snprintf(map, sizeof map, "%lu %lu 1", (unsigned long)uid, (unsigned long)uid);
    if (n <= 0 || (size_t)n >= sizeof map || alcove__write_file("/proc/self/uid_map", map) != 0)
        alcove__copy_fail(2, "write /proc/self/uid_map", errno);
    n = snprintf(map, sizeof map, "%lu %lu 1", (unsigned long)gid, (unsigned long)gid);
    if (n <= 0 || (size_t)n >= sizeof map || alcove__write_file("/proc/self/gid_map", map) != 0)
        alcove__copy_fail(2, "write /proc/self/gid_map", errno);

    /* 3. its mounts are its own */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        alcove__copy_fail(3, "make / private", errno);

    /* 4. everything it shares read-only, fresh writable places */
    alcove__remount_read_only(&proc_flags);
    if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, alcove__cfg.tmpfs_opts) != 0)
        alcove__copy_fail(4, "mount a tmpfs at /tmp", errno);
    if (alcove__is_dir("/dev/shm") &&
        mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              alcove__cfg.tmpfs_opts) != 0)
        alcove__copy_fail(4, "mount a tmpfs at /dev/shm", errno);
    if (alcove__is_dir("/dev/pts") &&
        mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620") != 0)
        alcove__copy_fail(4, "mount a devpts at /dev/pts", errno);

    /* 5. loopback up */
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        alcove__copy_fail(5, "socket(AF_INET)", errno);
    {
        struct ifreq ifr;
        memset(&ifr, 0, sizeof ifr);
        memcpy(ifr.ifr_name, "lo", 3);
        if (ioctl(fd, SIOCGIFFLAGS, &ifr) != 0)
            alcove__copy_fail(5, "SIOCGIFFLAGS lo", errno);
        ifr.ifr_flags |= IFF_UP;
        if (ioctl(fd, SIOCSIFFLAGS, &ifr) != 0)
            alcove__copy_fail(5, "SIOCSIFFLAGS lo up", errno);
    }
    if (close(fd) != 0)
        alcove__copy_fail(5, "close", errno);

    /* 6. become pid 1 of the new pid namespace */
    pid = fork();
    if (pid < 0)
        alcove__copy_fail(6, "fork", errno);
    if (pid > 0)
        _exit(0);

    /* 7. its own /proc (keeping whatever the old one's mount had that a user namespace may not
     * drop) */
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | proc_flags, NULL) != 0)
        alcove__copy_fail(7, "mount proc at /proc", errno);

    /* 8. nothing of the template's but memory and the program's own read-only descriptors */
    fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        alcove__copy_fail(8, "open /dev/null", errno);
    if (dup2(fd, 0) != 0 || dup2(fd, 1) != 1 || dup2(fd, 2) != 2)
        alcove__copy_fail(8, "dup2 /dev/null", errno);
    /* stderr is /dev/null from here on: failures show only in the exit status */
    if (fd > 2 && close(fd) != 0)
        _exit(100 + 8);
    if (alcove__cfg.ctl_fd > 2 && close(alcove__cfg.ctl_fd) != 0)
        _exit(100 + 8);
    if (signal(SIGCHLD, SIG_DFL) == SIG_ERR)
        _exit(100 + 8);

    sock = alcove__lock_down_and_connect(); /* 9, 10, 11 */
    alcove__serve_request(sock, handle);    /* 12 */
}

/* ---- the template ------------------------------------------------------------------------- */

ALCOVE__FN int alcove__config(void)
{
    const char *v;
    unsigned long num;
    size_t len;
    char *p;
    int flags;

    v = getenv("ALCOVE_CONTROL_FD");
    if (alcove__parse_ulong(v, &num) != 0 || num > INT_MAX) {
        alcove__say("template", "ALCOVE_CONTROL_FD is not a descriptor number", 0);
        return -1;
    }
    alcove__cfg.ctl_fd = (int)num;
    flags = fcntl(alcove__cfg.ctl_fd, F_GETFD);
    if (flags < 0 || fcntl(alcove__cfg.ctl_fd, F_SETFD, flags | FD_CLOEXEC) != 0) {
        alcove__say("template", "ALCOVE_CONTROL_FD", errno);
        return -1;
    }

    v = getenv("ALCOVE_COPY_SOCKET");
    if (!v || !*v || strlen(v) >= sizeof alcove__cfg.sock_path) {
        alcove__say("template", "ALCOVE_COPY_SOCKET is missing or too long for a unix socket", 0);
        return -1;
    }
    memcpy(alcove__cfg.sock_path, v, strlen(v) + 1);

    v = getenv("ALCOVE_COPY_FILTER");
    if (!v || !*v || strlen(v) >= sizeof alcove__cfg.filter_path) {
        alcove__say("template", "ALCOVE_COPY_FILTER is missing or too long", 0);
        return -1;
    }
    memcpy(alcove__cfg.filter_path, v, strlen(v) + 1);

    if (alcove__parse_ulong(getenv("ALCOVE_UNSHARE_FLAGS"), &num) != 0 || num == 0 ||
        num > INT_MAX) {
        alcove__say("template", "ALCOVE_UNSHARE_FLAGS is not a flag set", 0);
        return -1;
    }
    alcove__cfg.unshare_flags = num;

    v = getenv("ALCOVE_TMPFS_SIZE");
    if (alcove__parse_ulong(v, &num) != 0 || num == 0) {
        alcove__say("template", "ALCOVE_TMPFS_SIZE is not a size in bytes", 0);
        return -1;
    }
    if (snprintf(alcove__cfg.tmpfs_opts, sizeof alcove__cfg.tmpfs_opts, "mode=1777,size=%lu",
                 num) <= 0) {
        alcove__say("template", "ALCOVE_TMPFS_SIZE", 0);
        return -1;
    }

    v = getenv("ALCOVE_SHARED_RW");
    if (!v)
        v = "";
    len = strlen(v);
    if (len >= sizeof alcove__cfg.shared_buf) {
        alcove__say("template", "ALCOVE_SHARED_RW is too long", 0);
        return -1;
    }
    memcpy(alcove__cfg.shared_buf, v, len + 1);
    alcove__cfg.n_shared = 0;
    for (p = alcove__cfg.shared_buf; *p;) {
        char *colon = strchr(p, ':');
        size_t plen;
        if (colon)
            *colon = '\0';
        plen = strlen(p);
        while (plen > 1 && p[plen - 1] == '/')
            p[--plen] = '\0'; /* /srv/data/ is /srv/data as mountinfo spells it */
        if (plen) {
            if (alcove__cfg.n_shared == ALCOVE__SHARED_MAX) {
                alcove__say("template", "ALCOVE_SHARED_RW has too many entries", 0);
                return -1;
            }
            alcove__cfg.shared[alcove__cfg.n_shared++] = p;
        }
        if (!colon)
            break;
        p = colon + 1;
    }
    return 0;
}

/* The kernel's own count of this process's threads, or -1. */
ALCOVE__FN long alcove__threads(void)
{
    static char status[65536];
    char *t;
    unsigned long n;
    if (alcove__read_file("/proc/self/status", status, sizeof status) < 0)
        return -1;
    t = strstr(status, "\nThreads:");
    if (!t)
        return -1;
    t += strlen("\nThreads:");
    while (*t == ' ' || *t == '\t')
        t++;
    t[strcspn(t, "\n")] = '\0';
    if (alcove__parse_ulong(t, &n) != 0)
        return -1;
    return (long)n;
}

/* Back the large anonymous regions init filled with huge pages (MADV_COLLAPSE, Linux 6.1+):
 * each fork then copies one page-table entry per 2 MiB instead of 512. A copy that writes there
 * still copies only the 4 KiB page it writes. Best effort: errors are ignored.
 *
 * A collapse gives every page of the huge page memory of its own, so only a huge page 7/8 of
 * whose pages are present and this process's alone (/proc/self/pagemap: bit 63 present, bit 56
 * mapped only here) is collapsed: not a sparse buffer, nor memory only read (the zero page),
 * which would grow. Without the pagemap, nothing is collapsed. */
ALCOVE__FN void alcove__collapse_large_regions(void)
{
    char line[512];
    const unsigned long huge = 2UL << 20;
    uint64_t entries[512];
    long page = sysconf(_SC_PAGESIZE);
    unsigned long pages;
    int pagemap;
    FILE *maps;
    if (page <= 0 || huge % (unsigned long)page != 0 || huge / (unsigned long)page > 512)
        return;
    pages = huge / (unsigned long)page;
    pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pagemap < 0)
        return;
    maps = fopen("/proc/self/maps", "re");
    if (!maps) {
        close(pagemap);
        return;
    }
    while (fgets(line, sizeof line, maps)) {
        unsigned long lo, hi, start, end, offset, inode, at;
        char perms[5], dev[16];
        int consumed = 0;
        if (sscanf(line, "%lx-%lx %4s %lx %15s %lu%n", &lo, &hi, perms, &offset, dev, &inode,
                   &consumed) != 6)
            continue;
        while (line[consumed] == ' ')
            consumed++;
        /* private, writable, anonymous (no path) */
        if (perms[0] != 'r' || perms[1] != 'w' || perms[3] != 'p' || inode != 0 ||
            (line[consumed] != '\n' && line[consumed] != '\0'))
            continue;
        start = (lo + huge - 1) & ~(huge - 1);
        end = hi & ~(huge - 1);
        if (end <= start || end - start < 2 * huge)
            continue;
        for (at = start; at < end; at += huge) {
            unsigned long own = 0, i;
            ssize_t got = pread(pagemap, entries, pages * sizeof entries[0],
                                (off_t)(at / (unsigned long)page * sizeof entries[0]));
            if (got != (ssize_t)(pages * sizeof entries[0]))
                break;
            for (i = 0; i < pages; i++)
                own += (entries[i] >> 56 & 0x81) == 0x81;
            if (own * 8 < pages * 7)
                continue;
            if (madvise((void *)at, huge, 25 /* MADV_COLLAPSE */) != 0)
                break; /* a kernel without it, or no huge page to be had: the next region */
        }
    }
    fclose(maps);
    close(pagemap);
}

ALCOVE__FN int alcove_serve(int (*handle)(void))
{
    char msg[64];
    long threads;

    if (!getenv("ALCOVE_WARM"))
        return handle(); /* cold: one request on stdin/stdout */

    if (alcove__config() != 0)
        exit(2);
    threads = alcove__threads();
    if (threads != 1) {
        char what[160];
        if (threads < 0)
            snprintf(what, sizeof what, "cannot read the thread count from /proc/self/status");
        else
            snprintf(what, sizeof what,
                     "%ld threads at ready; the template must be one thread (fork copies only "
                     "the calling thread)",
                     threads);
        alcove__say("template", what, 0);
        exit(3);
    }
    /* Nothing buffered at init may be written again by every copy. */
    if (fflush(NULL) != 0)
        alcove__say("template", "fflush", errno);
    alcove__collapse_large_regions();
    while (send(alcove__cfg.ctl_fd, "ready", 5, MSG_NOSIGNAL) != 5) {
        if (errno != EINTR) {
            alcove__say("template", "send ready", errno);
            exit(1);
        }
    }
    /* The kernel reaps the copies (and the orphans that come back to pid 1). */
    if (signal(SIGCHLD, SIG_IGN) == SIG_ERR) {
        alcove__say("template", "ignore SIGCHLD", errno);
        exit(1);
    }
    while (waitpid(-1, NULL, WNOHANG) > 0) {
        /* children that ended during init */
    }

    for (;;) {
        ssize_t n = recv(alcove__cfg.ctl_fd, msg, sizeof msg, 0);
        pid_t pid;
        if (n == 0)
            exit(0); /* alcove is done with this template */
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ECONNRESET)
                exit(0);
            alcove__say("template", "recv on the control socket", errno);
            exit(1);
        }
        if (n != 4 || memcmp(msg, "fork", 4) != 0) {
            alcove__say("template", "unknown message on the control socket (ignored)", 0);
            continue;
        }
        if (fflush(NULL) != 0)
            alcove__say("template", "fflush", errno);
        pid = fork();
        if (pid == 0)
            alcove__copy(handle);
        if (pid < 0)
            alcove__say("template", "fork a copy", errno); /* alcove sees no copy come */
    }
}

#endif /* ALCOVE_WARM_H */
