/* Durable state: an append-only log of checksummed text records, rewritten
 * (compacted) from the daemon's table when it grows, with every blocking
 * syscall in libuv's threadpool. See state.h for the format.
 *
 * Why a log and not a rewrite of the whole file on every change: with
 * 100,000 sessions a snapshot is ~5.5 MB, while a transition is one ~55 byte
 * line. Appending costs the loop a few hundred nanoseconds per change and the
 * disk one write per loop turn; the rewrite happens only when the log has
 * doubled, with the serialization cut into bounded chunks and the file
 * written chunk by chunk so memory stays small even at 1,000,000 sessions.
 *
 * Crash safety: appends only ever add lines at the end, so a crash leaves
 * the old content plus at most a torn last line (dropped on load). A rewrite
 * goes to `state.tmp`, is fsynced, renamed over `state` and the folder
 * fsynced: until the rename the old file is complete (records are appended
 * to it during the rewrite too), after it the new one is.
 *
 * Threading: one Job at a time is in the threadpool. The job owns its
 * inputs (a buffer, file descriptors) while it runs; the loop thread does
 * not touch them until the job's results are applied, either in the
 * after-work callback or, at a clean stop, in state_flush_sync() after
 * waiting for the worker on a condition variable. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "durable.h"
#include "log.h"
#include "state.h"

#define STATE_FILE "state"
#define STATE_TMP "state.tmp"
#define HEADER_MAGIC "sessionwatch-state "
#define HEADER_PAYLOAD "sessionwatch-state 2"

#define DEFAULT_SYNC_INTERVAL_MS 1000
#define DEFAULT_COMPACT_MIN_BYTES (1024 * 1024)
#define DEFAULT_CHUNK_RECORDS 20000
#define DEFAULT_RETRY_MIN_MS 2000
#define DEFAULT_RETRY_MAX_MS 60000

/* A serialization turn also ends after this long, whatever the record count,
 * so a slow machine does not stall the loop. */
#define CHUNK_MAX_US 5000
/* Serialization pauses while this much snapshot waits for the disk. */
#define SNAP_HIGH_WATER (4u * 1024 * 1024)
/* Past this much unwritten backlog (a disk that hangs rather than fails) the
 * module gives up on the backlog and rewrites the file later: memory stays
 * bounded whatever the disk does. */
#define PENDING_MAX (64u * 1024 * 1024)
/* A buffer larger than this is freed after use instead of kept. */
#define BUF_KEEP_MAX (8u * 1024 * 1024)

/* ---- CRC-32C (Castagnoli, reflected polynomial 0x82f63b78), slicing-by-8 ---- */

static uint32_t crc_table[8][256];
static uv_once_t crc_once = UV_ONCE_INIT;

static void crc_init(void)
{
        for (uint32_t n = 0; n < 256; n++) {
                uint32_t c = n;

                for (int k = 0; k < 8; k++)
                        c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
                crc_table[0][n] = c;
        }
        for (uint32_t n = 0; n < 256; n++)
                for (int t = 1; t < 8; t++)
                        crc_table[t][n] =
                            (crc_table[t - 1][n] >> 8) ^ crc_table[0][crc_table[t - 1][n] & 0xff];
}

uint32_t state_crc32c(uint32_t crc, const void *data, size_t len)
{
        const unsigned char *p = data;

        uv_once(&crc_once, crc_init);
        crc = ~crc;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        /* Eight bytes per step: each table folds one byte of the word in
         * at its distance from the end. */
        while (len >= 8) {
                uint64_t w;

                memcpy(&w, p, 8);
                w ^= crc;
                crc = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^
                      crc_table[5][(w >> 16) & 0xff] ^ crc_table[4][(w >> 24) & 0xff] ^
                      crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
                      crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
                p += 8;
                len -= 8;
        }
#endif
        while (len--)
                crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        return ~crc;
}

/* ---- Record format ---- */

static const char hex_lower[] = "0123456789abcdef";
static const char hex_upper[] = "0123456789ABCDEF";

static bool is_plain(unsigned char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static bool id_valid(const char *id, size_t len)
{
        if (!id || len == 0 || len > STATE_ID_MAX)
                return false;
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)id[i];

                if (!is_plain(c) && c != '_' && c != '-')
                        return false;
        }
        return true;
}

static int hex_value(unsigned char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* Writes the checksum and separator in front of the payload that starts at
 * buf + 9 and ends at `end`, and the newline after it. */
static size_t seal_line(char *buf, char *end)
{
        uint32_t crc = state_crc32c(0, buf + 9, (size_t)(end - (buf + 9)));

        for (int i = 7; i >= 0; i--) {
                buf[i] = hex_lower[crc & 0xf];
                crc >>= 4;
        }
        buf[8] = ' ';
        *end++ = '\n';
        return (size_t)(end - buf);
}

static char *format_i64(char *p, int64_t v)
{
        char tmp[20];
        uint64_t u;
        int n = 0;

        if (v < 0) {
                *p++ = '-';
                u = (uint64_t)0 - (uint64_t)v;
        } else
                u = (uint64_t)v;
        do {
                tmp[n++] = (char)('0' + u % 10);
                u /= 10;
        } while (u);
        while (n)
                *p++ = tmp[--n];
        return p;
}

ssize_t state_format_session(char *buf, size_t size, const StateSession *ss)
{
        size_t worst;
        char *p;

        if (!ss || !id_valid(ss->id, ss->id_len) || (ss->status && ss->status_len > STATE_STATUS_MAX) ||
            (ss->flags & ~(unsigned)(STATE_SESSION_DYNAMIC | STATE_SESSION_GONE | STATE_SESSION_STALLED)))
                return -EINVAL;
        /* crc, space, "S ", id, space, status, space, number, space, flags, newline */
        worst = 9 + 2 + ss->id_len + 1 + (ss->status ? 3 * ss->status_len + 1 : 1) + 1 + 20 + 1 + 3 + 1;
        if (size < worst)
                return -ENOBUFS;

        p = buf + 9;
        *p++ = 'S';
        *p++ = ' ';
        memcpy(p, ss->id, ss->id_len);
        p += ss->id_len;
        *p++ = ' ';
        if (!ss->status)
                *p++ = '-';
        else if (ss->status_len == 0)
                *p++ = '=';
        else
                for (size_t i = 0; i < ss->status_len; i++) {
                        unsigned char c = (unsigned char)ss->status[i];

                        if (is_plain(c))
                                *p++ = (char)c;
                        else {
                                *p++ = '%';
                                *p++ = hex_upper[c >> 4];
                                *p++ = hex_upper[c & 0xf];
                        }
                }
        *p++ = ' ';
        p = format_i64(p, ss->updated_at_us);
        *p++ = ' ';
        if (ss->flags & STATE_SESSION_DYNAMIC)
                *p++ = 'd';
        if (ss->flags & STATE_SESSION_GONE)
                *p++ = 'g';
        if (ss->flags & STATE_SESSION_STALLED)
                *p++ = 's';
        if (!(ss->flags & (STATE_SESSION_DYNAMIC | STATE_SESSION_GONE | STATE_SESSION_STALLED)))
                *p++ = '-';
        return (ssize_t)seal_line(buf, p);
}

ssize_t state_format_removed(char *buf, size_t size, const char *id, size_t len)
{
        char *p;

        if (!id_valid(id, len))
                return -EINVAL;
        if (size < 9 + 2 + len + 1)
                return -ENOBUFS;
        p = buf + 9;
        *p++ = 'U';
        *p++ = ' ';
        memcpy(p, id, len);
        p += len;
        return (ssize_t)seal_line(buf, p);
}

/* A watermark's key: a runbook id, or "*" for every session the key sees. */
static bool watermark_key_valid(const char *key, size_t len)
{
        return (len == 1 && key && key[0] == '*') || id_valid(key, len);
}

ssize_t state_format_watermark(char *buf, size_t size, const char *key, size_t len, int64_t newest_us)
{
        char *p;

        if (!watermark_key_valid(key, len))
                return -EINVAL;
        if (size < 9 + 2 + len + 1 + 20 + 1)
                return -ENOBUFS;
        p = buf + 9;
        *p++ = 'W';
        *p++ = ' ';
        memcpy(p, key, len);
        p += len;
        *p++ = ' ';
        p = format_i64(p, newest_us);
        return (ssize_t)seal_line(buf, p);
}

ssize_t state_format_header(char *buf, size_t size)
{
        size_t n = sizeof(HEADER_PAYLOAD) - 1;

        if (size < 9 + n + 1)
                return -ENOBUFS;
        memcpy(buf + 9, HEADER_PAYLOAD, n);
        return (ssize_t)seal_line(buf, buf + 9 + n);
}

/* Splits the payload at single spaces into at most `max` non-empty fields.
 * Returns the number of fields, or -1 for an empty field or too many. */
static int split_fields(const char *p, size_t n, const char **f, size_t *fl, int max)
{
        const char *end = p + n;
        int k = 0;

        for (;;) {
                const char *sp = memchr(p, ' ', (size_t)(end - p));
                const char *e = sp ? sp : end;

                if (e == p || k == max)
                        return -1;
                f[k] = p;
                fl[k] = (size_t)(e - p);
                k++;
                if (!sp)
                        return k;
                p = sp + 1;
        }
}

static int parse_i64(const char *p, size_t n, int64_t *ret)
{
        bool neg = false;
        uint64_t u = 0;

        if (n > 0 && p[0] == '-') {
                neg = true;
                p++;
                n--;
        }
        if (n == 0 || n > 19)
                return -EINVAL;
        for (size_t i = 0; i < n; i++) {
                if (p[i] < '0' || p[i] > '9')
                        return -EINVAL;
                u = u * 10 + (uint64_t)(p[i] - '0');
        }
        if (u > (uint64_t)INT64_MAX)
                return -EINVAL;
        *ret = neg ? -(int64_t)u : (int64_t)u;
        return 0;
}

static int parse_status(const char *p, size_t n, StateRecord *rec)
{
        size_t k = 0;

        if (n == 1 && p[0] == '-') {
                rec->session.status = NULL;
                rec->session.status_len = 0;
                return 0;
        }
        if (n == 1 && p[0] == '=') {
                rec->status[0] = '\0';
                rec->session.status = rec->status;
                rec->session.status_len = 0;
                return 0;
        }
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)p[i];

                if (k >= STATE_STATUS_MAX)
                        return -EINVAL;
                if (c == '%') {
                        int hi, lo;

                        if (i + 2 >= n)
                                return -EINVAL;
                        hi = hex_value((unsigned char)p[i + 1]);
                        lo = hex_value((unsigned char)p[i + 2]);
                        if (hi < 0 || lo < 0)
                                return -EINVAL;
                        rec->status[k++] = (char)(hi << 4 | lo);
                        i += 2;
                } else if (is_plain(c))
                        rec->status[k++] = (char)c;
                else
                        return -EINVAL;
        }
        rec->status[k] = '\0';
        rec->session.status = rec->status;
        rec->session.status_len = k;
        return 0;
}

static int parse_flags(const char *p, size_t n, unsigned *ret)
{
        unsigned flags = 0;

        if (n == 1 && p[0] == '-') {
                *ret = 0;
                return 0;
        }
        for (size_t i = 0; i < n; i++) {
                unsigned f = p[i] == 'd'   ? STATE_SESSION_DYNAMIC
                             : p[i] == 'g' ? STATE_SESSION_GONE
                             : p[i] == 's' ? STATE_SESSION_STALLED
                                           : 0;

                /* An unknown letter, or one twice: a writer of this version
                 * never produces it, so the line is not ours. */
                if (f == 0 || (flags & f))
                        return -EINVAL;
                flags |= f;
        }
        *ret = flags;
        return 0;
}

static int parse_id(const char *p, size_t n, StateRecord *rec)
{
        if (!id_valid(p, n))
                return -EINVAL;
        memcpy(rec->id, p, n);
        rec->id[n] = '\0';
        rec->session.id = rec->id;
        rec->session.id_len = n;
        return 0;
}

static int parse_payload(const char *p, size_t n, StateRecord *rec)
{
        const char *f[5];
        size_t fl[5];
        int nf, r;

        if (n >= sizeof(HEADER_MAGIC) - 1 && memcmp(p, HEADER_MAGIC, sizeof(HEADER_MAGIC) - 1) == 0) {
                int64_t v;

                r = parse_i64(p + sizeof(HEADER_MAGIC) - 1, n - (sizeof(HEADER_MAGIC) - 1), &v);
                if (r < 0 || v <= 0 || v > UINT32_MAX)
                        return -EINVAL;
                rec->type = STATE_RECORD_HEADER;
                rec->version = (unsigned)v;
                /* Every version is read by the builds that came after it:
                 * each one only added record types and flags. */
                return v <= STATE_FORMAT_VERSION ? 0 : -EPROTONOSUPPORT;
        }

        nf = split_fields(p, n, f, fl, 5);
        if (nf < 1 || fl[0] != 1)
                return -EINVAL;
        /* One case per record type: a new type is one more case here, one
         * more callback in StateCallbacks and one more formatter. */
        switch (f[0][0]) {
        case 'S':
                if (nf != 5)
                        return -EINVAL;
                rec->type = STATE_RECORD_SESSION;
                r = parse_id(f[1], fl[1], rec);
                if (r < 0)
                        return r;
                r = parse_status(f[2], fl[2], rec);
                if (r < 0)
                        return r;
                r = parse_i64(f[3], fl[3], &rec->session.updated_at_us);
                if (r < 0)
                        return r;
                return parse_flags(f[4], fl[4], &rec->session.flags);
        case 'W':
                if (nf != 3 || !watermark_key_valid(f[1], fl[1]))
                        return -EINVAL;
                rec->type = STATE_RECORD_WATERMARK;
                memcpy(rec->id, f[1], fl[1]);
                rec->id[fl[1]] = '\0';
                rec->session = (StateSession){.id = rec->id, .id_len = fl[1]};
                return parse_i64(f[2], fl[2], &rec->watermark_us);
        case 'U':
                if (nf != 2)
                        return -EINVAL;
                rec->type = STATE_RECORD_REMOVED;
                rec->session.status = NULL;
                rec->session.status_len = 0;
                rec->session.updated_at_us = 0;
                rec->session.flags = 0;
                return parse_id(f[1], fl[1], rec);
        default:
                return -EINVAL;
        }
}

static int parse_line(const char *line, size_t len, bool check_crc, StateRecord *rec)
{
        uint32_t want = 0;

        if (len < 10 || len >= STATE_LINE_MAX || line[8] != ' ')
                return -EBADMSG;
        for (int i = 0; i < 8; i++) {
                unsigned char c = (unsigned char)line[i];
                /* Lower case only, as written: anything else is not our line. */
                int v = (c >= 'A' && c <= 'F') ? -1 : hex_value(c);

                if (v < 0)
                        return -EBADMSG;
                want = want << 4 | (uint32_t)v;
        }
        if (check_crc && state_crc32c(0, line + 9, len - 9) != want)
                return -EBADMSG;
        return parse_payload(line + 9, len - 9, rec);
}

int state_parse_line(const char *line, size_t len, StateRecord *ret)
{
        return parse_line(line, len, true, ret);
}

/* ---- The test hook ---- */

static int (*fault_hook)(const char *op);

void state_set_fault_hook(int (*hook)(const char *op))
{
        __atomic_store_n(&fault_hook, hook, __ATOMIC_SEQ_CST);
}

static int fault(const char *op)
{
        int (*hook)(const char *) = __atomic_load_n(&fault_hook, __ATOMIC_SEQ_CST);

        return hook ? hook(op) : 0;
}

/* ---- The module ---- */

typedef struct Buf {
        char *data;
        size_t len, cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra)
{
        size_t cap;
        char *p;

        if (b->cap - b->len >= extra)
                return 0;
        cap = b->cap ? b->cap : 4096;
        while (cap - b->len < extra)
                cap *= 2;
        p = realloc(b->data, cap);
        if (!p)
                return -ENOMEM;
        b->data = p;
        b->cap = cap;
        return 0;
}

static int buf_append(Buf *b, const char *p, size_t n)
{
        if (buf_reserve(b, n) < 0)
                return -ENOMEM;
        memcpy(b->data + b->len, p, n);
        b->len += n;
        return 0;
}

/* Forgets the contents; keeps the memory unless it is large. */
static void buf_reset(Buf *b)
{
        b->len = 0;
        if (b->cap > BUF_KEEP_MAX) {
                free(b->data);
                *b = (Buf){};
        }
}

static void buf_free(Buf *b)
{
        free(b->data);
        *b = (Buf){};
}

static void buf_swap(Buf *a, Buf *b)
{
        Buf t = *a;

        *a = *b;
        *b = t;
}

typedef struct StateWatermark {
        char key[STATE_ID_MAX + 1];
        size_t len;
        int64_t newest_us;
} StateWatermark;

typedef enum Phase {
        PHASE_NONE,
        PHASE_SERIALIZING, /* chunks of the snapshot are being formatted and written to state.tmp */
        PHASE_FINISHING,   /* the job that completes state.tmp and renames it is in flight */
} Phase;

typedef enum JobKind {
        JOB_APPEND,         /* buf to the state file, then maybe fdatasync */
        JOB_COMPACT_WRITE,  /* buf to state.tmp, creating it (and the folder) first when fd < 0 */
        JOB_COMPACT_FINISH, /* buf to state.tmp, fsync, move a corrupt file aside, rename, fsync the folder
                             */
        JOB_COMPACT_ABORT,  /* close and remove an abandoned state.tmp */
} JobKind;

typedef struct Job {
        JobKind kind;
        Buf buf;
        uint64_t records;
        int fd;
        int old_fd;
        int dir_fd;
        bool sync;
        bool move_aside;

        /* Results, written by the worker. */
        int error;
        const char *what;
        size_t written;
        int new_fd;
        int new_dir_fd;
        bool renamed;
        bool moved_aside;
        char aside_name[64];

        bool applied; /* the results were taken in (loop thread) */
        /* How long the worker spent on it (for the metrics). */
        uint64_t run_us;
} Job;

struct State {
        uv_loop_t *loop;
        StateCallbacks cb;
        void *userdata;
        char *path;      /* the folder */
        char *file_path; /* the state file, for messages */
        uint64_t sync_interval_ms;
        uint64_t compact_min_bytes;
        size_t chunk_records;
        uint64_t retry_min_ms, retry_max_ms;

        int dir_fd;      /* -1 while the folder could not be opened */
        int fd;          /* the state file, open for appending; -1 when none */
        bool stale;      /* the file lacks changes: no appends until a rewrite succeeds */
        bool move_aside; /* an unreadable file still sits at `state`: move it before replacing it */
        uint64_t file_bytes;
        uint64_t snapshot_bytes;

        Buf pending; /* records for the file, not yet handed to a job */
        uint64_t pending_records;
        bool unsynced; /* written but not yet fdatasync'ed */
        uint64_t last_sync_ms;

        Phase phase;
        size_t cursor;
        bool iter_done;
        Buf snap; /* the next snapshot chunk for state.tmp */
        uint64_t snap_records;
        Buf post; /* records put since the rewrite started: they go after the snapshot */
        uint64_t post_records;
        int tmp_fd;
        uint64_t compact_bytes;
        uint64_t compact_records;
        uint64_t compact_start_ns;

        Job job;
        DurableQueue queue; /* runs `job` */

        uv_idle_t idle;
        uv_timer_t sync_timer;
        uv_timer_t retry_timer;
        uint64_t retry_ms;
        LogRateLimit ratelimit;

        bool handles_ready;
        DurableTeardown teardown;

        /* Health. */
        int last_error;
        const char *last_error_what;
        uint64_t records_appended;
        uint64_t records_dropped;
        uint64_t write_errors;
        uint64_t compactions;
        uint64_t last_compaction_us;
        uint64_t last_compaction_records;
        uint64_t longest_chunk_us;
        int64_t last_write_realtime_us;
        uint64_t write_jobs;     /* jobs taken in from the threadpool */
        uint64_t write_us_total; /* their summed durations */

        char corrupt_path[PATH_MAX];
        char corrupt_reason[128];

        /* The last watermark per key, rewritten at the head of every
         * compaction: a handful of entries (one per discovery scope). */
        StateWatermark *marks;
        size_t n_marks;
        unsigned file_version; /* of the file as loaded; 0 when none was */
};

static void start_job(State *s);
static void close_finish(State *s);
static void on_idle_run(uv_idle_t *h);
static void on_sync_timer_fire(uv_timer_t *t);
static void on_retry_timer_fire(uv_timer_t *t);

static int64_t realtime_us(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static bool serializing_can_continue(const State *s)
{
        return s->phase == PHASE_SERIALIZING && !s->iter_done && s->snap.len < SNAP_HIGH_WATER;
}

/* Makes the loop run the state machine at its next idle phase (or now, in
 * this iteration's idle phase when we are in a timer callback). Cheap and
 * syscall-free: it links the handle into a list. */
static void kick(State *s)
{
        if (s->handles_ready && !s->teardown.closing)
                uv_idle_start(&s->idle, on_idle_run);
}

static void arm_retry(State *s)
{
        if (!s->handles_ready || s->teardown.closing || uv_is_active((uv_handle_t *)&s->retry_timer))
                return;
        s->retry_ms = s->retry_ms ? s->retry_ms * 2 : s->retry_min_ms;
        if (s->retry_ms > s->retry_max_ms)
                s->retry_ms = s->retry_max_ms;
        uv_timer_start(&s->retry_timer, on_retry_timer_fire, s->retry_ms, 0);
}

/* A write, sync or rename failed: the file no longer matches memory. Drop
 * the backlog (the daemon's table is the truth) and rewrite the whole file
 * later, with backoff. */
static void fail(State *s, int error, const char *what)
{
        bool was_stale = s->stale;

        s->write_errors++;
        s->last_error = error;
        s->last_error_what = what;
        s->stale = true;
        s->records_dropped += s->pending_records;
        s->pending_records = 0;
        buf_reset(&s->pending);
        arm_retry(s);

        log_ratelimited_errno(&s->ratelimit, uv_now(s->loop), LOG_WARNING, error,
                              "Failed to %s state file '%s': %m. Polling and notifications go on; "
                              "the state file is %s and will be rewritten once writing works again.",
                              what, s->file_path, was_stale ? "still stale" : "now stale");
}

/* ---- Jobs ---- */

static void job_reset_results(Job *j)
{
        j->error = 0;
        j->what = NULL;
        j->written = 0;
        j->new_fd = -1;
        j->new_dir_fd = -1;
        j->renamed = false;
        j->moved_aside = false;
        j->aside_name[0] = '\0';
        j->applied = false;
        j->run_us = 0;
}

/* Before the rename of a rewrite: an unreadable file still at `state` is
 * moved aside, never replaced. */
static int move_aside_before_rename(void *userdata, int dir_fd)
{
        Job *j = userdata;
        int r;

        if (!j->move_aside)
                return 0;
        r = durable_move_aside(dir_fd, STATE_FILE, fault, j->aside_name, sizeof(j->aside_name));
        if (r == -ENOENT)
                return 0;
        j->moved_aside = r == 0;
        return r;
}

/* Runs in a threadpool thread (or on the loop thread from
 * state_flush_sync()): every blocking syscall of the module after start-up
 * happens here. */
static void job_run(const char *path, Job *j)
{
        DurableStep step;
        int dir_fd = j->dir_fd, fd = j->fd, r;

        switch (j->kind) {
        case JOB_APPEND:
                r = durable_write(fd, j->buf.data, j->buf.len, &j->written, fault);
                if (r < 0) {
                        j->error = r;
                        j->what = "write";
                        return;
                }
                if (j->sync) {
                        r = durable_sync(fd, true, fault);
                        if (r < 0) {
                                j->error = r;
                                j->what = "fdatasync";
                        }
                }
                return;

        case JOB_COMPACT_WRITE:
        case JOB_COMPACT_FINISH:
                if (dir_fd < 0) {
                        r = durable_open_folder(path, fault, &dir_fd);
                        if (r < 0) {
                                j->error = r;
                                j->what = "create the folder of";
                                return;
                        }
                        j->new_dir_fd = dir_fd;
                }
                if (fd < 0) {
                        fd = durable_replace_begin(dir_fd, STATE_TMP, fault);
                        if (fd < 0) {
                                j->error = fd;
                                j->what = "create the temporary copy of";
                                return;
                        }
                        j->new_fd = fd;
                }
                r = durable_write(fd, j->buf.data, j->buf.len, &j->written, fault);
                if (r < 0) {
                        j->error = r;
                        j->what = "write the temporary copy of";
                        break;
                }
                if (j->kind == JOB_COMPACT_WRITE)
                        return;

                r = durable_replace_commit(dir_fd, fd, STATE_TMP, STATE_FILE, fault,
                                           move_aside_before_rename, j, &step);
                if (step == DURABLE_STEP_NONE || step == DURABLE_STEP_SYNC_FOLDER) {
                        j->renamed = true;
                        if (j->old_fd >= 0)
                                close(j->old_fd);
                } else
                        j->new_fd = -1; /* closed and removed */
                if (r < 0) {
                        j->error = r;
                        j->what = step == DURABLE_STEP_SYNC      ? "fsync the temporary copy of"
                                  : step == DURABLE_STEP_PREPARE ? "move aside the unreadable"
                                  : step == DURABLE_STEP_RENAME  ? "rename the temporary copy over"
                                                                 : "fsync the folder of";
                        /* A failed folder sync is only counted: the old file
                         * would survive a crash, and it is consistent too. */
                }
                return;

        case JOB_COMPACT_ABORT:
                break;
        }

        /* A rewrite that failed or was abandoned: its temporary file goes. */
        durable_replace_abort(dir_fd, &fd, STATE_TMP);
        j->new_fd = -1;
}

/* Runs in a threadpool thread. */
static void on_job_run(DurableQueue *q)
{
        State *s = q->userdata;

        job_run(s->path, &s->job);
}

static void compaction_reset(State *s)
{
        s->phase = PHASE_NONE;
        buf_reset(&s->snap);
        buf_reset(&s->post);
        s->snap_records = 0;
        s->post_records = 0;
        s->iter_done = false;
}

static void maybe_compact(State *s);

/* Takes in a job's results, on the loop thread. */
static void job_apply(State *s, Job *j)
{
        if (j->applied)
                return;
        j->applied = true;
        s->write_jobs++;
        s->write_us_total += j->run_us;
        if (j->new_dir_fd >= 0)
                s->dir_fd = j->new_dir_fd;

        switch (j->kind) {
        case JOB_APPEND:
                s->file_bytes += j->written;
                if (j->error < 0) {
                        fail(s, j->error, j->what);
                        break;
                }
                s->records_appended += j->records;
                if (j->buf.len > 0)
                        s->last_write_realtime_us = realtime_us();
                if (j->sync) {
                        s->unsynced = false;
                        s->last_sync_ms = uv_now(s->loop);
                } else if (j->buf.len > 0)
                        s->unsynced = true;
                maybe_compact(s);
                break;

        case JOB_COMPACT_WRITE:
                if (j->new_fd >= 0)
                        s->tmp_fd = j->new_fd;
                if (j->error < 0) {
                        s->tmp_fd = -1; /* closed by the worker */
                        compaction_reset(s);
                        fail(s, j->error, j->what);
                        break;
                }
                s->compact_bytes += j->written;
                s->compact_records += j->records;
                break;

        case JOB_COMPACT_FINISH:
                s->phase = PHASE_NONE;
                if (j->moved_aside) {
                        s->move_aside = false;
                        snprintf(s->corrupt_path, sizeof(s->corrupt_path), "%s/%s", s->path, j->aside_name);
                        log_notice("Moved the unreadable state file aside to '%s'.", s->corrupt_path);
                }
                if (j->renamed) {
                        bool was_stale = s->stale;

                        s->fd = s->tmp_fd;
                        s->tmp_fd = -1;
                        s->file_bytes = s->compact_bytes + j->written;
                        s->snapshot_bytes = s->file_bytes;
                        s->compactions++;
                        s->last_compaction_us = (uv_hrtime() - s->compact_start_ns) / 1000;
                        s->last_compaction_records = s->compact_records;
                        s->last_write_realtime_us = realtime_us();
                        s->unsynced = false;
                        s->last_sync_ms = uv_now(s->loop);
                        s->stale = false;
                        s->retry_ms = 0;
                        uv_timer_stop(&s->retry_timer);
                        if (was_stale)
                                log_notice("State file '%s' is current again (%" PRIu64 " records).",
                                           s->file_path, s->compact_records);
                } else
                        s->tmp_fd = -1; /* closed by the worker */
                compaction_reset(s);
                if (j->error < 0)
                        fail(s, j->error, j->what);
                break;

        case JOB_COMPACT_ABORT:
                s->tmp_fd = -1;
                break;
        }

        j->records = 0;
        buf_reset(&j->buf);
}

/* Runs on the loop thread when the threadpool is done with the job. */
static void on_job_done(DurableQueue *q)
{
        State *s = q->userdata;

        s->job.run_us = q->run_us;
        job_apply(s, &s->job);
        if (s->teardown.closing) {
                close_finish(s);
                return;
        }
        start_job(s);
        if (serializing_can_continue(s))
                kick(s);
}

/* Blocks until the job in flight (if any) is done and takes in its results:
 * only for state_flush_sync(), at a stop. */
static void wait_job(State *s)
{
        if (!s->queue.in_flight || s->job.applied)
                return;
        durable_queue_wait(&s->queue);
        s->job.run_us = s->queue.run_us;
        job_apply(s, &s->job);
}

/* Hands `from` and its record count over to the job, which is to write it
 * to `fd`. */
static void prepare_job(State *s, Job *j, JobKind kind, int fd, Buf *from, uint64_t *records)
{
        job_reset_results(j);
        j->kind = kind;
        j->fd = fd;
        j->old_fd = -1;
        j->dir_fd = s->dir_fd;
        j->sync = false;
        j->move_aside = false;
        buf_swap(&j->buf, from);
        j->records = *records;
        *records = 0;
}

static void prepare_chunk_job(State *s, Job *j)
{
        prepare_job(s, j, JOB_COMPACT_WRITE, s->tmp_fd, &s->snap, &s->snap_records);
}

/* The snapshot is complete: the records put since it started follow it, and
 * the backlog for the old file is no longer needed (the snapshot covers it). */
static void prepare_finish_job(State *s, Job *j)
{
        prepare_job(s, j, JOB_COMPACT_FINISH, s->tmp_fd, &s->post, &s->post_records);
        j->old_fd = s->fd;
        j->move_aside = s->move_aside;
        s->phase = PHASE_FINISHING;
        buf_reset(&s->pending);
        s->pending_records = 0;
}

static void prepare_append_job(State *s, Job *j, bool sync)
{
        prepare_job(s, j, JOB_APPEND, s->fd, &s->pending, &s->pending_records);
        j->sync = sync;
}

static bool appendable(const State *s)
{
        return s->fd >= 0 && !s->stale && s->phase != PHASE_FINISHING;
}

/* Hands the next piece of work to the threadpool, when none is in flight. */
static void start_job(State *s)
{
        Job *j = &s->job;
        uint64_t now;

        if (s->queue.in_flight || s->teardown.closing)
                return;

        if (s->tmp_fd >= 0 && s->phase == PHASE_NONE) {
                job_reset_results(j);
                j->kind = JOB_COMPACT_ABORT;
                j->fd = s->tmp_fd;
                j->dir_fd = s->dir_fd;
                j->old_fd = -1;
        } else if (s->phase == PHASE_SERIALIZING && s->snap.len > 0)
                prepare_chunk_job(s, j);
        else if (s->phase == PHASE_SERIALIZING && s->iter_done)
                prepare_finish_job(s, j);
        else if (appendable(s) && (s->pending.len > 0 || s->unsynced)) {
                now = uv_now(s->loop);
                if (s->last_sync_ms == 0 || now >= s->last_sync_ms + s->sync_interval_ms)
                        prepare_append_job(s, j, true);
                else if (s->pending.len > 0)
                        prepare_append_job(s, j, false);
                else {
                        /* Only a sync is owed, and not yet. */
                        if (!uv_is_active((uv_handle_t *)&s->sync_timer))
                                uv_timer_start(&s->sync_timer, on_sync_timer_fire,
                                               s->last_sync_ms + s->sync_interval_ms - now, 0);
                        return;
                }
        } else
                return;

        durable_queue_submit(&s->queue);
}

/* Formats up to chunk_records live sessions (or CHUNK_MAX_US worth) into the
 * snapshot buffer. Runs on the loop thread. */
static void serialize_chunk(State *s, bool bounded)
{
        uint64_t t0 = uv_hrtime(), us;
        size_t n;
        int r;

        for (n = 0; n < s->chunk_records; n++) {
                StateSession ss = {};
                ssize_t k;

                if (bounded && (n & 255) == 255 && uv_hrtime() - t0 > CHUNK_MAX_US * 1000ull)
                        break;
                r = s->cb.next(s->userdata, &s->cursor, &ss);
                if (r == 0) {
                        s->iter_done = true;
                        break;
                }
                if (r < 0) {
                        log_warning_errno(r, "Failed to list sessions for a rewrite of '%s': %m",
                                          s->file_path);
                        compaction_reset(s);
                        if (s->stale)
                                arm_retry(s);
                        break;
                }
                if (buf_reserve(&s->snap, STATE_LINE_MAX) < 0) {
                        log_warning_errno(-ENOMEM, "Failed to rewrite state file '%s': %m", s->file_path);
                        compaction_reset(s);
                        if (s->stale)
                                arm_retry(s);
                        break;
                }
                k = state_format_session(s->snap.data + s->snap.len, s->snap.cap - s->snap.len, &ss);
                if (k < 0)
                        continue; /* an id the daemon should never hold; it cannot be stored */
                s->snap.len += (size_t)k;
                s->snap_records++;
                if (s->snap.len >= SNAP_HIGH_WATER)
                        break;
        }
        us = (uv_hrtime() - t0) / 1000;
        if (bounded && us > s->longest_chunk_us)
                s->longest_chunk_us = us;
}

static int compact_begin(State *s)
{
        ssize_t k;

        if (!s->cb.next)
                return -EOPNOTSUPP;
        /* Also while an abandoned rewrite is being cleaned up: its
         * temporary file must be gone before a new one is created. */
        if (s->phase != PHASE_NONE || s->tmp_fd >= 0 ||
            (s->queue.in_flight && !s->job.applied && s->job.kind != JOB_APPEND))
                return -EALREADY;
        if (buf_reserve(&s->snap, STATE_LINE_MAX) < 0)
                return -ENOMEM;
        s->phase = PHASE_SERIALIZING;
        s->cursor = 0;
        s->iter_done = false;
        s->compact_bytes = 0;
        s->compact_records = 0;
        s->compact_start_ns = uv_hrtime();
        s->snap.len = 0;
        s->snap_records = 0;
        s->post.len = 0;
        s->post_records = 0;
        k = state_format_header(s->snap.data, s->snap.cap);
        assert(k > 0);
        s->snap.len = (size_t)k;
        for (size_t i = 0; i < s->n_marks; i++) {
                if (buf_reserve(&s->snap, STATE_ID_MAX + 64) < 0) {
                        compaction_reset(s);
                        return -ENOMEM;
                }
                k = state_format_watermark(s->snap.data + s->snap.len, s->snap.cap - s->snap.len,
                                           s->marks[i].key, s->marks[i].len, s->marks[i].newest_us);
                assert(k > 0);
                s->snap.len += (size_t)k;
                s->snap_records++;
        }
        return 0;
}

static void maybe_compact(State *s)
{
        uint64_t threshold = s->snapshot_bytes * 2;

        if (threshold < s->compact_min_bytes)
                threshold = s->compact_min_bytes;
        if (s->phase == PHASE_NONE && !s->stale && s->cb.next && s->file_bytes >= threshold &&
            compact_begin(s) == 0)
                kick(s);
}

/* Runs on the loop thread, once per loop iteration while active. */
static void on_idle_run(uv_idle_t *h)
{
        State *s = h->data;

        if (serializing_can_continue(s))
                serialize_chunk(s, true);
        start_job(s);
        if (!serializing_can_continue(s))
                uv_idle_stop(h);
}

/* Runs on the loop thread when an fdatasync is owed. */
static void on_sync_timer_fire(uv_timer_t *t)
{
        kick(t->data);
}

/* Runs on the loop thread: time to try a full rewrite after a failure. */
static void on_retry_timer_fire(uv_timer_t *t)
{
        State *s = t->data;

        if (s->phase != PHASE_NONE)
                return;
        if (compact_begin(s) == 0)
                kick(s);
        else
                arm_retry(s);
}

/* ---- Appending ---- */

static int put_line(State *s, const char *line, size_t n)
{
        bool to_post = s->phase == PHASE_SERIALIZING;
        bool to_pending = s->phase == PHASE_FINISHING || (s->fd >= 0 && !s->stale);

        if (!to_post && !to_pending) {
                s->records_dropped++;
                return 0;
        }
        if (to_post) {
                if (buf_append(&s->post, line, n) < 0)
                        return -ENOMEM;
                s->post_records++;
        }
        if (to_pending) {
                if (buf_append(&s->pending, line, n) < 0)
                        return -ENOMEM;
                s->pending_records++;
        }
        if (s->pending.len > PENDING_MAX)
                fail(s, -ENOBUFS, "keep up with writes to");
        if (s->post.len > PENDING_MAX) {
                compaction_reset(s);
                fail(s, -ENOBUFS, "keep up with the rewrite of");
        }
        if (!s->queue.in_flight)
                kick(s);
        return 0;
}

int state_put_session(State *s, const StateSession *session)
{
        char line[STATE_LINE_MAX];
        ssize_t n;

        assert(s);
        n = state_format_session(line, sizeof(line), session);
        if (n < 0)
                return (int)n;
        return put_line(s, line, (size_t)n);
}

/* Remembers the watermark for compactions. Returns 0, -EINVAL, -ENOSPC past
 * STATE_WATERMARKS_MAX keys, -ENOMEM. */
static int remember_watermark(State *s, const char *key, size_t len, int64_t newest_us)
{
        StateWatermark *m;

        if (!watermark_key_valid(key, len))
                return -EINVAL;
        for (size_t i = 0; i < s->n_marks; i++)
                if (s->marks[i].len == len && memcmp(s->marks[i].key, key, len) == 0) {
                        s->marks[i].newest_us = newest_us;
                        return 0;
                }
        if (s->n_marks >= STATE_WATERMARKS_MAX)
                return -ENOSPC;
        m = realloc(s->marks, (s->n_marks + 1) * sizeof(*m));
        if (!m)
                return -ENOMEM;
        s->marks = m;
        m = &s->marks[s->n_marks++];
        memcpy(m->key, key, len);
        m->key[len] = '\0';
        m->len = len;
        m->newest_us = newest_us;
        return 0;
}

int state_put_watermark(State *s, const char *key, size_t len, int64_t newest_us)
{
        char line[STATE_ID_MAX + 64];
        ssize_t n;
        int r;

        assert(s);
        n = state_format_watermark(line, sizeof(line), key, len, newest_us);
        if (n < 0)
                return (int)n;
        r = remember_watermark(s, key, len, newest_us);
        if (r < 0)
                return r;
        return put_line(s, line, (size_t)n);
}

int state_remove_session(State *s, const char *id, size_t len)
{
        char line[STATE_ID_MAX + 16];
        ssize_t n;

        assert(s);
        n = state_format_removed(line, sizeof(line), id, len);
        if (n < 0)
                return (int)n;
        return put_line(s, line, (size_t)n);
}

int state_compact(State *s)
{
        int r;

        assert(s);
        if (s->teardown.closing)
                return -ESHUTDOWN;
        r = compact_begin(s);
        if (r < 0)
                return r;
        kick(s);
        return 0;
}

/* ---- Stopping ---- */

/* Rewrites the whole file synchronously (at a stop, when it is stale). */
static int rewrite_sync(State *s)
{
        Job j = {};
        int r;

        r = compact_begin(s);
        if (r < 0)
                return r;
        for (;;) {
                serialize_chunk(s, false);
                if (s->phase != PHASE_SERIALIZING) {
                        r = -EIO; /* the iterator failed; logged */
                        break;
                }
                prepare_chunk_job(s, &j);
                job_run(s->path, &j);
                job_apply(s, &j);
                if (s->phase != PHASE_SERIALIZING) {
                        r = s->last_error;
                        break;
                }
                if (s->iter_done) {
                        prepare_finish_job(s, &j);
                        job_run(s->path, &j);
                        job_apply(s, &j);
                        r = s->stale ? s->last_error : 0;
                        break;
                }
        }
        buf_free(&j.buf);
        return r < 0 ? r : 0;
}

int state_flush_sync(State *s)
{
        Job j = {};
        int r;

        assert(s);
        wait_job(s);
        if (s->phase == PHASE_SERIALIZING) {
                /* Abandon the rewrite: the old file has everything (records
                 * were appended to it meanwhile), once the backlog is in. */
                compaction_reset(s);
        }
        durable_replace_abort(s->dir_fd, &s->tmp_fd, STATE_TMP);
        if (s->stale || s->fd < 0 || s->move_aside)
                return rewrite_sync(s);
        if (s->pending.len == 0 && !s->unsynced)
                return 0;

        prepare_append_job(s, &j, true);
        job_run(s->path, &j);
        r = j.error;
        job_apply(s, &j);
        buf_free(&j.buf);
        return r;
}

/* Frees the State, once nothing refers to it (its handles are closed or
 * were never initialized). */
static void state_release(void *userdata)
{
        State *s = userdata;

        buf_free(&s->pending);
        buf_free(&s->snap);
        buf_free(&s->post);
        buf_free(&s->job.buf);
        durable_queue_destroy(&s->queue);
        free(s->marks);
        free(s->path);
        free(s->file_path);
        free(s);
}

static void close_finish(State *s)
{
        durable_replace_abort(s->dir_fd, &s->tmp_fd, STATE_TMP);
        durable_teardown_finish(&s->teardown, &s->fd, &s->dir_fd, state_release, s,
                                (uv_handle_t *[]){(uv_handle_t *)&s->idle, (uv_handle_t *)&s->sync_timer,
                                                  (uv_handle_t *)&s->retry_timer},
                                3);
}

void state_close(State *s, void (*closed)(void *userdata), void *userdata)
{
        assert(s);
        durable_teardown_begin(&s->teardown, closed, userdata);
        uv_idle_stop(&s->idle);
        uv_timer_stop(&s->sync_timer);
        uv_timer_stop(&s->retry_timer);
        if (!s->queue.in_flight)
                close_finish(s);
}

void state_health(const State *s, StateHealth *ret)
{
        assert(s && ret);
        *ret = (StateHealth){
            .degraded = s->stale,
            .compacting = s->phase != PHASE_NONE,
            .last_error = s->last_error,
            .last_error_what = s->last_error_what,
            .file_bytes = s->file_bytes,
            .pending_bytes = s->pending.len,
            .records_appended = s->records_appended,
            .records_dropped = s->records_dropped,
            .write_errors = s->write_errors,
            .compactions = s->compactions,
            .last_compaction_us = s->last_compaction_us,
            .last_compaction_records = s->last_compaction_records,
            .longest_chunk_us = s->longest_chunk_us,
            .last_write_realtime_us = s->last_write_realtime_us,
            .write_jobs = s->write_jobs,
            .write_us_total = s->write_us_total,
        };
}

/* ---- Loading ---- */

typedef struct Scan {
        uint64_t valid_end; /* bytes of good lines */
        uint64_t torn;      /* bytes of a torn last line */
        uint64_t records;
        bool corrupt;
} Scan;

/* Whether a torn first line can be a crash's leftover of the header we
 * write: each byte either is the header's byte or was never written (zero). */
static bool header_prefix(const char *p, size_t n)
{
        char header[64];
        ssize_t k = state_format_header(header, sizeof(header));

        if (k < 0 || n > (size_t)k)
                return false;
        for (size_t i = 0; i < n; i++)
                if (p[i] != header[i] && p[i] != '\0')
                        return false;
        return true;
}

/* Walks the lines of the file. Without `deliver` it checks everything (the
 * checksums included) and finds where good lines end; with it, it hands the
 * records of the already checked prefix to the callbacks. Two passes cost
 * one more parse but keep the callbacks from ever seeing a record of a file
 * that turns out to be corrupt. */
static int scan_file(State *s, const char *data, size_t size, bool deliver, Scan *sc, StateRecord *rec)
{
        size_t pos = 0, end = deliver ? sc->valid_end : size;

        if (!deliver)
                *sc = (Scan){};
        sc->records = 0;
        while (pos < end) {
                const char *line = data + pos;
                const char *nl = memchr(line, '\n', end - pos);
                size_t len;
                bool last;
                int r;

                if (!nl) {
                        /* An incomplete last line: the write that a crash interrupted. */
                        if (pos == 0 && !header_prefix(line, end)) {
                                snprintf(s->corrupt_reason, sizeof(s->corrupt_reason),
                                         "no header (not a state file)");
                                sc->corrupt = true;
                                return 0;
                        }
                        sc->torn = end - pos;
                        break;
                }
                len = (size_t)(nl - line);
                last = (size_t)(nl - data) + 1 == end;
                r = parse_line(line, len, !deliver, rec);
                if (r == -EBADMSG && last && (pos > 0 || header_prefix(line, len + 1))) {
                        sc->torn = end - pos;
                        break;
                }
                if (r < 0 || (pos == 0) != (rec->type == STATE_RECORD_HEADER)) {
                        if (r == -EPROTONOSUPPORT && pos == 0)
                                snprintf(s->corrupt_reason, sizeof(s->corrupt_reason),
                                         "unknown format version %u (this build reads version %u)",
                                         rec->version, STATE_FORMAT_VERSION);
                        else if (pos == 0)
                                snprintf(s->corrupt_reason, sizeof(s->corrupt_reason),
                                         "no header (not a state file)");
                        else
                                snprintf(s->corrupt_reason, sizeof(s->corrupt_reason),
                                         "%s in the record at byte %zu",
                                         r == -EBADMSG ? "bad checksum or framing" : "unparsable payload",
                                         pos);
                        sc->corrupt = true;
                        return 0;
                }
                if (deliver && rec->type == STATE_RECORD_SESSION && s->cb.session) {
                        r = s->cb.session(s->userdata, &rec->session);
                        if (r < 0)
                                return r;
                } else if (deliver && rec->type == STATE_RECORD_REMOVED && s->cb.removed) {
                        r = s->cb.removed(s->userdata, rec->id, rec->session.id_len);
                        if (r < 0)
                                return r;
                } else if (deliver && rec->type == STATE_RECORD_WATERMARK) {
                        /* Kept for compactions only when the daemon still
                         * has a use for it: keys of runbooks no longer
                         * watched fade away at the next rewrite. */
                        r = s->cb.watermark ? s->cb.watermark(s->userdata, rec->id, rec->session.id_len,
                                                              rec->watermark_us)
                                            : 0;
                        if (r > 0)
                                r = remember_watermark(s, rec->id, rec->session.id_len, rec->watermark_us);
                        if (r < 0)
                                return r;
                } else if (deliver && rec->type == STATE_RECORD_HEADER)
                        s->file_version = rec->version;
                if (pos > 0)
                        sc->records++;
                pos = (size_t)(nl - data) + 1;
        }
        if (!deliver)
                sc->valid_end = pos;
        return 0;
}

/* Writes the header into an empty file, then makes the file and its name
 * durable. Blocking: start-up only. */
static int write_header(State *s)
{
        char header[64];
        ssize_t k = state_format_header(header, sizeof(header));
        size_t written;
        int r;

        r = durable_write(s->fd, header, (size_t)k, &written, fault);
        s->file_bytes += written;
        if (r < 0) {
                fail(s, r, "write");
                return r;
        }
        r = durable_sync(s->fd, false, fault);
        if (r == 0)
                r = durable_sync(s->dir_fd, false, fault);
        if (r < 0) {
                fail(s, r, "fsync");
                return r;
        }
        s->snapshot_bytes = s->file_bytes;
        s->last_sync_ms = 0;
        return 0;
}

static int create_fresh(State *s)
{
        int fd = durable_openat(s->dir_fd, STATE_FILE, O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC,
                                0600, fault);

        if (fd < 0) {
                fail(s, fd, "create");
                return fd;
        }
        s->fd = fd;
        s->file_bytes = 0;
        return write_header(s);
}

static void handle_corrupt(State *s, StateLoadReport *rep)
{
        char name[64];
        int r;

        log_error("State file '%s' is unreadable: %s.", s->file_path, s->corrupt_reason);
        rep->corrupt = true;
        rep->corrupt_reason = s->corrupt_reason;
        rep->fresh = true;
        if (s->dir_fd < 0) {
                s->move_aside = true;
                return;
        }
        r = durable_move_aside(s->dir_fd, STATE_FILE, fault, name, sizeof(name));
        if (r < 0) {
                /* It stays where it is, and is moved before anything replaces it. */
                s->move_aside = true;
                fail(s, r, "move aside the unreadable");
                log_error("Starting with empty state; '%s' is kept as it is.", s->file_path);
                return;
        }
        snprintf(s->corrupt_path, sizeof(s->corrupt_path), "%s/%s", s->path, name);
        rep->corrupt_path = s->corrupt_path;
        log_error("Moved it aside to '%s' and started with empty state.", s->corrupt_path);
        (void)durable_sync(s->dir_fd, false, fault);
        (void)create_fresh(s);
}

/* Opens the state file to append to or, where it cannot be written (a
 * read-only folder or file), only to read (*writable false). Returns the fd,
 * or -1 when there is nothing to load: no file (a fresh one is made) or one
 * that cannot be opened (handled as unreadable). */
static int load_open(State *s, StateLoadReport *rep, bool *writable)
{
        int fd = durable_openat(s->dir_fd, STATE_FILE, O_RDWR | O_APPEND | O_CLOEXEC, 0, fault);

        *writable = true;
        if (fd == -ENOENT) {
                rep->fresh = true;
                (void)create_fresh(s);
                return -1;
        }
        if (fd >= 0)
                return fd;
        fail(s, fd, "open for writing");
        *writable = false;
        fd = openat(s->dir_fd, STATE_FILE, O_RDONLY | O_CLOEXEC);
        if (fd >= 0)
                return fd;
        rep->fresh = true;
        if (errno == ENOENT)
                return -1;
        /* Unreadable: never replace it without moving it aside first. */
        snprintf(s->corrupt_reason, sizeof(s->corrupt_reason), "cannot be opened: %s", strerror(errno));
        handle_corrupt(s, rep);
        return -1;
}

/* Reads the records of the file's `size` bytes at `data` into the table: a
 * first pass checks the whole file, and only a file found sound is applied
 * by the second. Returns 0 with what was found in *sc (sc->corrupt: nothing
 * applied), or -errno. */
static int load_records(State *s, const char *data, size_t size, Scan *sc)
{
        StateRecord *rec = malloc(sizeof(*rec));
        int r;

        if (!rec)
                return -ENOMEM;
        r = scan_file(s, data, size, false, sc, rec);
        if (r >= 0 && !sc->corrupt)
                r = scan_file(s, data, size, true, sc, rec);
        free(rec);
        return r < 0 ? r : 0;
}

/* An incomplete last record (an interrupted write) is dropped: cut off now,
 * and durably, as appending after it would turn it into a corrupt record in
 * the middle. Where that fails the file is only read from (*writable false). */
static void load_drop_torn_end(State *s, int fd, const Scan *sc, bool *writable)
{
        int r;

        log_warning("State file '%s' ends with an incomplete record (%" PRIu64
                    " bytes, from an interrupted write): dropped it.",
                    s->file_path, sc->torn);
        if (!*writable) {
                s->stale = true;
                return;
        }
        r = durable_truncate(fd, (off_t)sc->valid_end, fault);
        if (r == 0)
                r = durable_sync(fd, false, fault);
        if (r < 0) {
                fail(s, r, "truncate the torn end of");
                *writable = false;
        }
}

static int load(State *s, StateLoadReport *rep)
{
        struct stat st;
        bool writable;
        char *data;
        Scan sc;
        int fd, r;

        if (s->dir_fd < 0) {
                rep->fresh = true;
                return 0;
        }
        /* A rewrite that a crash interrupted: `state` is still complete. */
        (void)unlinkat(s->dir_fd, STATE_TMP, 0);
        fd = load_open(s, rep, &writable);
        if (fd < 0)
                return 0;
        if (fstat(fd, &st) < 0) {
                r = -errno;
                close(fd);
                return log_error_errno(r, "Failed to stat state file '%s': %m", s->file_path);
        }
        rep->file_bytes = (uint64_t)st.st_size;
        if (st.st_size == 0) {
                rep->fresh = true;
                if (writable) {
                        s->fd = fd;
                        (void)write_header(s);
                } else
                        close(fd);
                return 0;
        }
        data = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
        if (data == MAP_FAILED) {
                r = -errno;
                close(fd);
                return log_error_errno(r, "Failed to map state file '%s': %m", s->file_path);
        }
        r = load_records(s, data, (size_t)st.st_size, &sc);
        munmap(data, (size_t)st.st_size);
        if (r < 0 || sc.corrupt) {
                close(fd);
                if (r < 0)
                        return r;
                handle_corrupt(s, rep);
                return 0;
        }
        rep->records = sc.records;
        rep->torn_bytes = sc.torn;
        s->file_bytes = sc.valid_end;
        s->snapshot_bytes = sc.valid_end;
        if (sc.torn > 0)
                load_drop_torn_end(s, fd, &sc, &writable);
        if (!writable) {
                close(fd);
                return 0;
        }
        s->fd = fd;
        if (sc.valid_end == 0) {
                rep->fresh = true;
                (void)write_header(s);
        }
        return 0;
}

/* Frees a State whose handles were never initialized. */
static void free_unarmed(State *s)
{
        durable_close_fd(&s->fd);
        durable_close_fd(&s->dir_fd);
        state_release(s);
}

int state_open(uv_loop_t *loop, const StateOptions *o, const StateCallbacks *cb, void *userdata,
               State **ret_state, StateLoadReport *ret_report)
{
        uint64_t t0 = uv_hrtime();
        StateLoadReport rep = {};
        State *s;
        int r;

        if (!loop || !o || !o->path || !o->path[0] || !cb || !ret_state)
                return -EINVAL;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->loop = loop;
        s->cb = *cb;
        s->userdata = userdata;
        s->sync_interval_ms = o->sync_interval_ms ? o->sync_interval_ms : DEFAULT_SYNC_INTERVAL_MS;
        s->compact_min_bytes = o->compact_min_bytes ? o->compact_min_bytes : DEFAULT_COMPACT_MIN_BYTES;
        s->chunk_records = o->compact_chunk_records ? o->compact_chunk_records : DEFAULT_CHUNK_RECORDS;
        s->retry_min_ms = o->retry_min_ms ? o->retry_min_ms : DEFAULT_RETRY_MIN_MS;
        s->retry_max_ms = o->retry_max_ms ? o->retry_max_ms : DEFAULT_RETRY_MAX_MS;
        if (s->retry_max_ms < s->retry_min_ms)
                s->retry_max_ms = s->retry_min_ms;
        s->ratelimit = (LogRateLimit)LOG_RATELIMIT_INIT(60000, 3);
        s->dir_fd = s->fd = s->tmp_fd = -1;
        s->job.applied = true;
        s->path = strdup(o->path);
        if (!s->path || asprintf(&s->file_path, "%s/%s", o->path, STATE_FILE) < 0) {
                free(s->path);
                free(s);
                return -ENOMEM;
        }
        if (durable_queue_init(&s->queue, loop, on_job_run, on_job_done, s) < 0) {
                free(s->path);
                free(s->file_path);
                free(s);
                return -ENOMEM;
        }

        r = durable_open_folder(s->path, fault, &s->dir_fd);
        if (r < 0) {
                s->dir_fd = -1;
                fail(s, r, "open the folder of");
        }

        r = load(s, &rep);
        if (r < 0) {
                free_unarmed(s);
                return r;
        }

        /* The handles come last so that a failed load leaves nothing to
         * close asynchronously; none of these inits can fail for a valid loop. */
        uv_idle_init(loop, &s->idle);
        uv_timer_init(loop, &s->sync_timer);
        uv_timer_init(loop, &s->retry_timer);
        s->idle.data = s->sync_timer.data = s->retry_timer.data = s;
        s->handles_ready = true;

        if (s->fd < 0)
                s->stale = true;
        if (s->stale)
                arm_retry(s);
        else if (s->file_version > 0 && s->file_version < STATE_FORMAT_VERSION && s->cb.next &&
                 compact_begin(s) == 0)
                /* A file of an older version gets the current header before
                 * records only this version knows pile up in it. */
                kick(s);
        rep.degraded = s->stale;
        rep.duration_us = (uv_hrtime() - t0) / 1000;
        if (rep.records > 0 || rep.torn_bytes > 0)
                log_debug("Loaded %" PRIu64 " records from '%s' in %" PRIu64 " ms.", rep.records,
                          s->file_path, rep.duration_us / 1000);
        *ret_state = s;
        if (ret_report)
                *ret_report = rep;
        return 0;
}
