/* SPDX-License-Identifier: MIT */
/*
 * Small helpers for apisim: allocation, a string buffer with JSON escaping,
 * time formatting and parsing, a seedable random generator and file I/O.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sim.h"

static void util_oom(size_t n)
{
        /* apisim is a test tool: running out of memory is fatal and loud. */
        fprintf(stderr, "apisim: out of memory allocating %zu bytes\n", n);
        abort();
}

void *xmalloc(size_t n)
{
        void *p = malloc(n ? n : 1);

        if (!p)
                util_oom(n);
        return p;
}

void *xcalloc(size_t n, size_t size)
{
        void *p = calloc(n ? n : 1, size ? size : 1);

        if (!p)
                util_oom(n * size);
        return p;
}

void *xrealloc(void *p, size_t n)
{
        void *q = realloc(p, n ? n : 1);

        if (!q)
                util_oom(n);
        return q;
}

char *xstrdup(const char *s)
{
        size_t n = strlen(s) + 1;
        char *p = xmalloc(n);

        memcpy(p, s, n);
        return p;
}

void sbuf_init(struct sbuf *b, size_t cap)
{
        if (cap < 64)
                cap = 64;
        b->buf = xmalloc(cap);
        b->buf[0] = '\0';
        b->len = 0;
        b->cap = cap;
}

void sbuf_done(struct sbuf *b)
{
        free(b->buf);
        b->buf = NULL;
        b->len = b->cap = 0;
}

void sbuf_reserve(struct sbuf *b, size_t extra)
{
        size_t need = b->len + extra + 1;

        if (need <= b->cap)
                return;
        while (b->cap < need)
                b->cap *= 2;
        b->buf = xrealloc(b->buf, b->cap);
}

void sbuf_put(struct sbuf *b, const char *s, size_t n)
{
        sbuf_reserve(b, n);
        memcpy(b->buf + b->len, s, n);
        b->len += n;
        b->buf[b->len] = '\0';
}

void sbuf_puts(struct sbuf *b, const char *s)
{
        sbuf_put(b, s, strlen(s));
}

void sbuf_putc(struct sbuf *b, char c)
{
        sbuf_reserve(b, 1);
        b->buf[b->len++] = c;
        b->buf[b->len] = '\0';
}

void sbuf_printf(struct sbuf *b, const char *fmt, ...)
{
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0)
                return;
        if ((size_t)n >= b->cap - b->len) {
                sbuf_reserve(b, (size_t)n);
                va_start(ap, fmt);
                vsnprintf(b->buf + b->len, b->cap - b->len, fmt, ap);
                va_end(ap);
        }
        b->len += (size_t)n;
}

/*
 * Writes s as a quoted JSON string. Runs of plain characters are copied in
 * one go because almost every string apisim serves needs no escaping, and
 * this sits on the hot path of every response.
 */
void sbuf_put_json_string(struct sbuf *b, const char *s)
{
        static const char hex[] = "0123456789abcdef";
        const unsigned char *p = (const unsigned char *)s;

        sbuf_putc(b, '"');
        for (;;) {
                const unsigned char *run = p;

                while (*p >= 0x20 && *p != '"' && *p != '\\')
                        p++;
                if (p > run)
                        sbuf_put(b, (const char *)run, (size_t)(p - run));
                if (*p == '\0')
                        break;
                switch (*p) {
                case '"':
                        sbuf_put(b, "\\\"", 2);
                        break;
                case '\\':
                        sbuf_put(b, "\\\\", 2);
                        break;
                case '\n':
                        sbuf_put(b, "\\n", 2);
                        break;
                case '\r':
                        sbuf_put(b, "\\r", 2);
                        break;
                case '\t':
                        sbuf_put(b, "\\t", 2);
                        break;
                default: {
                        char u[6] = {'\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15]};

                        sbuf_put(b, u, sizeof(u));
                        break;
                }
                }
                p++;
        }
        sbuf_putc(b, '"');
}

/* Writes an instant as a JSON number of Unix seconds with all six decimals. */
void sbuf_put_usec(struct sbuf *b, int64_t us)
{
        int64_t sec = us / 1000000, frac = us % 1000000;

        if (frac < 0) {
                frac += 1000000;
                sec -= 1;
        }
        sbuf_printf(b, "%lld.%06lld", (long long)sec, (long long)frac);
}

char *sbuf_steal(struct sbuf *b, size_t *ret_len)
{
        char *p = b->buf;

        if (ret_len)
                *ret_len = b->len;
        b->buf = NULL;
        b->len = b->cap = 0;
        return p;
}

static int64_t simtime_start_real;
static int64_t simtime_start_mono;

static int64_t simtime_clock_us(clockid_t id)
{
        struct timespec ts;

        clock_gettime(id, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/*
 * The simulator's clock is the wall clock at start plus monotonic time since,
 * so a wall-clock step during a test cannot reorder session timelines.
 */
void simtime_init(void)
{
        simtime_start_real = simtime_clock_us(CLOCK_REALTIME);
        simtime_start_mono = simtime_clock_us(CLOCK_MONOTONIC);
}

int64_t simtime_start_us(void)
{
        return simtime_start_real;
}

int64_t simtime_mono_us(void)
{
        return simtime_clock_us(CLOCK_MONOTONIC);
}

int64_t simtime_now_us(void)
{
        return simtime_start_real + (simtime_clock_us(CLOCK_MONOTONIC) - simtime_start_mono);
}

static void simtime_split(int64_t us, struct tm *tm, long *ret_frac)
{
        time_t sec = (time_t)(us / 1000000);
        long frac = (long)(us % 1000000);

        if (frac < 0) {
                frac += 1000000;
                sec -= 1;
        }
        gmtime_r(&sec, tm);
        *ret_frac = frac;
}

/* Airplane's own timestamp format: "2022-01-11 22:32:45.601486+00". */
size_t simtime_format_airplane(int64_t us, char buf[static SIMTIME_AIRPLANE_MAX])
{
        struct tm tm;
        long frac;
        int n;

        simtime_split(us, &tm, &frac);
        n = snprintf(buf, SIMTIME_AIRPLANE_MAX, "%04d-%02d-%02d %02d:%02d:%02d.%06ld+00", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
        return n < 0 ? 0 : (size_t)n;
}

/* The UTC date as yyyymmdd, as Airplane embeds it in its object IDs. */
void simtime_format_date(int64_t us, char buf[static 9])
{
        struct tm tm;
        long frac;

        simtime_split(us, &tm, &frac);
        snprintf(buf, 9, "%04u%02u%02u", (unsigned)(tm.tm_year + 1900) % 10000u,
                 (unsigned)(tm.tm_mon + 1) % 100u, (unsigned)tm.tm_mday % 100u);
}

static int simtime_digits(const char **p, int n, int *ret)
{
        int v = 0;

        for (int i = 0; i < n; i++) {
                if ((*p)[i] < '0' || (*p)[i] > '9')
                        return -EINVAL;
                v = v * 10 + ((*p)[i] - '0');
        }
        *p += n;
        *ret = v;
        return 0;
}

/*
 * Parses an RFC 3339 date-time such as 2022-01-01T12:00:00.5-07:00. A space
 * is accepted where the offset's '+' belongs, because a client that forgets
 * to percent-encode '+' in a query string gets it decoded to a space by
 * form-encoding rules; the separator may be 'T', 't' or a space.
 */
int simtime_parse_rfc3339(const char *s, int64_t *ret_us)
{
        static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
        int year, mon, day, hour, min, sec, oh = 0, om = 0, sign = 0;
        int64_t frac = 0, scale = 1000000;
        const char *p = s;
        struct tm tm = {0};
        time_t t;

        if (simtime_digits(&p, 4, &year) < 0 || *p++ != '-' || simtime_digits(&p, 2, &mon) < 0 ||
            *p++ != '-' || simtime_digits(&p, 2, &day) < 0)
                return -EINVAL;
        if (*p != 'T' && *p != 't' && *p != ' ')
                return -EINVAL;
        p++;
        if (simtime_digits(&p, 2, &hour) < 0 || *p++ != ':' || simtime_digits(&p, 2, &min) < 0 ||
            *p++ != ':' || simtime_digits(&p, 2, &sec) < 0)
                return -EINVAL;
        if (*p == '.') {
                p++;
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                while (*p >= '0' && *p <= '9') {
                        if (scale > 1) {
                                scale /= 10;
                                frac += (*p - '0') * scale;
                        }
                        p++;
                }
        }
        if (*p == 'Z' || *p == 'z') {
                p++;
        } else if (*p == '+' || *p == '-' || *p == ' ') {
                sign = *p == '-' ? -1 : 1;
                p++;
                if (simtime_digits(&p, 2, &oh) < 0 || *p++ != ':' || simtime_digits(&p, 2, &om) < 0)
                        return -EINVAL;
                if (oh > 23 || om > 59)
                        return -EINVAL;
        } else {
                return -EINVAL;
        }
        if (*p != '\0')
                return -EINVAL;
        if (mon < 1 || mon > 12 || day < 1 || day > mdays[mon - 1] || hour > 23 || min > 59 || sec > 60)
                return -EINVAL;
        if (mon == 2 && day == 29 && !(year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)))
                return -EINVAL;

        tm.tm_year = year - 1900;
        tm.tm_mon = mon - 1;
        tm.tm_mday = day;
        tm.tm_hour = hour;
        tm.tm_min = min;
        tm.tm_sec = sec;
        t = timegm(&tm);
        t -= (time_t)sign * (oh * 3600 + om * 60);
        *ret_us = (int64_t)t * 1000000 + frac;
        return 0;
}

uint64_t rng_mix(uint64_t x)
{
        x ^= x >> 30;
        x *= 0xbf58476d1ce4e5b9ULL;
        x ^= x >> 27;
        x *= 0x94d049bb133111ebULL;
        x ^= x >> 31;
        return x;
}

uint64_t rng_next(uint64_t *state)
{
        *state += 0x9e3779b97f4a7c15ULL;
        return rng_mix(*state);
}

/* A uniform double in [0, 1). */
double rng_unit(uint64_t *state)
{
        return (double)(rng_next(state) >> 11) * 0x1.0p-53;
}

/* FNV-1a, then mixed, so that every bit of the result depends on every byte. */
uint64_t util_hash_string(const char *s)
{
        uint64_t h = 0xcbf29ce484222325ULL;

        for (; *s; s++) {
                h ^= (unsigned char)*s;
                h *= 0x100000001b3ULL;
        }
        return rng_mix(h);
}

int util_write_file_atomic(const char *path, const char *data, size_t len)
{
        char tmp[PATH_MAX];
        int fd, r = 0;

        if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp))
                return -ENAMETOOLONG;
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                return -errno;
        while (len > 0) {
                ssize_t n = write(fd, data, len);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        break;
                }
                data += n;
                len -= (size_t)n;
        }
        if (close(fd) < 0 && r == 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0)
                unlink(tmp);
        return r;
}

int util_read_file(const char *path, size_t max, char **ret_data, size_t *ret_len)
{
        struct sbuf b;
        int fd;

        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        sbuf_init(&b, 4096);
        for (;;) {
                ssize_t n;

                sbuf_reserve(&b, 65536);
                n = read(fd, b.buf + b.len, b.cap - b.len - 1);
                if (n < 0) {
                        int r = -errno;

                        if (r == -EINTR)
                                continue;
                        close(fd);
                        sbuf_done(&b);
                        return r;
                }
                if (n == 0)
                        break;
                b.len += (size_t)n;
                if (b.len > max) {
                        close(fd);
                        sbuf_done(&b);
                        return -EFBIG;
                }
        }
        close(fd);
        b.buf[b.len] = '\0';
        *ret_data = sbuf_steal(&b, ret_len);
        return 0;
}
