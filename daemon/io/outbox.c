/* outbox: a webhook's durable queue. See outbox.h for the format and the
 * guarantees.
 *
 * Invariants that make the bounded, shared window work:
 *   - E records are written in seq order; the window list is in seq order.
 *   - Every pending event with a seq below read_seq is in the window, and
 *     read_offset is at or before the E record of the first pending event
 *     that is not. With nothing only on disk, read_seq is next_seq.
 *   - For each session, the events in the window are its oldest pending
 *     ones: a session's event is taken into memory only after all of its
 *     earlier ones.
 *   - A D record is only ever made for an event in the window; the seqs of
 *     those at or above read_seq are kept in `delivered` (they are still E
 *     records in the file past read_offset) until read_seq passes them or
 *     a rewrite leaves them out.
 * An E record with a seq at or above read_seq that is neither in the window
 * nor delivered is therefore pending and only on disk. Read-back scans the
 * file from read_offset and takes such records while their session holds
 * fewer than session_cap events in memory, so one session whose deliveries
 * keep failing cannot fill the window and hold the others on disk; the
 * first one it leaves sets the new read_seq. Compaction copies the E records
 * that are in the window or only on disk, in file (= seq) order.
 *
 * Within one pass, a session's count in memory only grows, so once an event
 * of a session is left behind, every later one of that session is too: the
 * per-session prefix holds. A pass that left events behind because of the
 * cap pauses read-back until something could change its outcome: a
 * session's last event in memory is done, half a cap's worth of events were
 * done, or a new event went to disk.
 *
 * Threading: one Job at a time is in the threadpool. It owns its buffer and
 * result list while it runs; the loop thread applies its results in the
 * after-work callback. The file descriptors are only replaced there. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "durable.h"
#include "log.h"
#include "outbox.h"
#include "state.h"

#define HEADER_PAYLOAD "sessionwatch-outbox 1"
#define HEADER_MAGIC "sessionwatch-outbox "

#define DEFAULT_WINDOW_ENTRIES 1024
#define DEFAULT_WINDOW_BYTES ((size_t)4 * 1024 * 1024)
#define DEFAULT_SYNC_INTERVAL_MS 1000
#define DEFAULT_COMPACT_MIN_BYTES (256 * 1024)
#define DEFAULT_PENDING_MAX ((size_t)16 * 1024 * 1024)
#define DEFAULT_RETRY_MIN_MS 1000
#define DEFAULT_RETRY_MAX_MS 30000
/* The first read buffer of the line reader; it grows up to a record. */
#define READER_INITIAL ((size_t)64 * 1024)

static const char hex_lower[] = "0123456789abcdef";

/* ---- Records ---- */

typedef enum RecordType {
        RECORD_HEADER,
        RECORD_EVENT,
        RECORD_DONE,
} RecordType;

typedef struct Record {
        RecordType type;
        uint64_t seq;
        int64_t created_us;
        const char *session_id, *event_id, *body;
        size_t session_id_len, event_id_len, body_len;
} Record;

static bool id_valid(const char *s, size_t n)
{
        if (n == 0 || n > OUTBOX_ID_MAX)
                return false;
        for (size_t i = 0; i < n; i++) {
                char c = s[i];
                if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                      c == '_' || c == '-'))
                        return false;
        }
        return true;
}

/* Parses the next blank-separated field of [*p, end) as an unsigned number. */
static int take_u64(const char **p, const char *end, uint64_t *ret)
{
        const char *s = *p;
        uint64_t v = 0;

        if (s >= end || *s < '0' || *s > '9')
                return -EINVAL;
        while (s < end && *s >= '0' && *s <= '9') {
                if (v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
                        return -EINVAL;
                v = v * 10 + (uint64_t)(*s - '0');
                s++;
        }
        *p = s;
        *ret = v;
        return 0;
}

static int take_space(const char **p, const char *end)
{
        if (*p >= end || **p != ' ')
                return -EINVAL;
        (*p)++;
        return 0;
}

static int take_id(const char **p, const char *end, const char **ret, size_t *ret_len)
{
        const char *s = *p, *sp = memchr(s, ' ', (size_t)(end - s));

        if (!sp || !id_valid(s, (size_t)(sp - s)))
                return -EINVAL;
        *ret = s;
        *ret_len = (size_t)(sp - s);
        *p = sp;
        return 0;
}

/* Parses one line without its newline. -EBADMSG for a checksum or framing
 * error, -EINVAL for a payload that does not parse, -EPROTONOSUPPORT for a
 * header of another version. */
static int parse_line(const char *line, size_t len, Record *rec)
{
        const char *p = line + 9, *end = line + len;
        uint32_t crc = 0;
        uint64_t created;

        if (len < 10 || line[8] != ' ')
                return -EBADMSG;
        for (int i = 0; i < 8; i++) {
                const char *h = memchr(hex_lower, line[i], 16);
                if (!h || line[i] == '\0')
                        return -EBADMSG;
                crc = crc << 4 | (uint32_t)(h - hex_lower);
        }
        if (state_crc32c(0, p, (size_t)(end - p)) != crc)
                return -EBADMSG;

        *rec = (Record){};
        if ((size_t)(end - p) >= strlen(HEADER_MAGIC) &&
            memcmp(p, HEADER_MAGIC, strlen(HEADER_MAGIC)) == 0) {
                rec->type = RECORD_HEADER;
                if ((size_t)(end - p) != strlen(HEADER_PAYLOAD) ||
                    memcmp(p, HEADER_PAYLOAD, (size_t)(end - p)) != 0)
                        return -EPROTONOSUPPORT;
                return 0;
        }
        if (end - p >= 2 && p[0] == 'D' && p[1] == ' ') {
                p += 2;
                rec->type = RECORD_DONE;
                if (take_u64(&p, end, &rec->seq) < 0 || p != end)
                        return -EINVAL;
                return 0;
        }
        if (end - p >= 2 && p[0] == 'E' && p[1] == ' ') {
                p += 2;
                rec->type = RECORD_EVENT;
                if (take_u64(&p, end, &rec->seq) < 0 || take_space(&p, end) < 0 ||
                    take_u64(&p, end, &created) < 0 || created > INT64_MAX || take_space(&p, end) < 0 ||
                    take_id(&p, end, &rec->session_id, &rec->session_id_len) < 0 ||
                    take_space(&p, end) < 0 || take_id(&p, end, &rec->event_id, &rec->event_id_len) < 0 ||
                    take_space(&p, end) < 0 || p >= end)
                        return -EINVAL;
                rec->created_us = (int64_t)created;
                rec->body = p;
                rec->body_len = (size_t)(end - p);
                return 0;
        }
        return -EINVAL;
}

/* ---- Buffers ---- */

typedef struct Buf {
        char *data;
        size_t len, cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra)
{
        size_t want;
        char *p;

        if (b->len + extra <= b->cap)
                return 0;
        want = b->cap ? b->cap : 4096;
        while (want < b->len + extra)
                want *= 2;
        p = realloc(b->data, want);
        if (!p)
                return -ENOMEM;
        b->data = p;
        b->cap = want;
        return 0;
}

static void buf_free(Buf *b)
{
        free(b->data);
        *b = (Buf){};
}

/* Appends a sealed line: checksum, blank, the payload pieces, newline. */
static int buf_put_line(Buf *b, const char *const *parts, const size_t *lens, size_t n)
{
        size_t total = 0;
        uint32_t crc = 0;
        char *p;
        int r;

        for (size_t i = 0; i < n; i++)
                total += lens[i];
        r = buf_reserve(b, total + 10);
        if (r < 0)
                return r;
        p = b->data + b->len + 9;
        for (size_t i = 0; i < n; i++) {
                memcpy(p, parts[i], lens[i]);
                crc = state_crc32c(crc, parts[i], lens[i]);
                p += lens[i];
        }
        *p++ = '\n';
        for (int i = 7; i >= 0; i--) {
                b->data[b->len + (size_t)i] = hex_lower[crc & 0xf];
                crc >>= 4;
        }
        b->data[b->len + 8] = ' ';
        b->len = (size_t)(p - b->data);
        return 0;
}

static int put_header(Buf *b)
{
        const char *parts[] = {HEADER_PAYLOAD};
        size_t lens[] = {strlen(HEADER_PAYLOAD)};

        return buf_put_line(b, parts, lens, 1);
}

static int put_event(Buf *b, uint64_t seq, int64_t created_us, const char *sid, size_t sid_len,
                     const char *eid, size_t eid_len, const char *body, size_t body_len)
{
        char head[64];
        int n = snprintf(head, sizeof(head), "E %" PRIu64 " %" PRId64 " ", seq, created_us);
        const char *parts[] = {head, sid, " ", eid, " ", body};
        size_t lens[] = {(size_t)n, sid_len, 1, eid_len, 1, body_len};

        return buf_put_line(b, parts, lens, 6);
}

static int put_done(Buf *b, uint64_t seq)
{
        char payload[32];
        int n = snprintf(payload, sizeof(payload), "D %" PRIu64, seq);
        const char *parts[] = {payload};
        size_t lens[] = {(size_t)n};

        return buf_put_line(b, parts, lens, 1);
}

/* ---- Per-session counts ---- */

/* The session of an event, as a nonzero 64-bit hash (FNV-1a, then mixed). A
 * collision only makes two sessions share a cap: order is still kept. */
static uint64_t session_hash(const char *sid, size_t len)
{
        uint64_t h = 0xcbf29ce484222325ULL;

        for (size_t i = 0; i < len; i++) {
                h ^= (unsigned char)sid[i];
                h *= 0x100000001b3ULL;
        }
        h ^= h >> 33;
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 33;
        return h ? h : 1;
}

/* Events in memory per session hash: open addressing with linear probing
 * and backward-shift deletion. It is sized for twice the window, so it
 * never fills (the window holds at most window_max events). */
typedef struct CountMap {
        uint64_t *keys; /* 0: empty */
        uint32_t *counts;
        size_t mask;
} CountMap;

static int countmap_init(CountMap *m, size_t entries)
{
        size_t n = 16;

        while (n < entries * 2 + 4)
                n *= 2;
        m->keys = calloc(n, sizeof(*m->keys));
        m->counts = calloc(n, sizeof(*m->counts));
        m->mask = n - 1;
        if (!m->keys || !m->counts) {
                free(m->keys);
                free(m->counts);
                *m = (CountMap){};
                return -ENOMEM;
        }
        return 0;
}

static void countmap_done(CountMap *m)
{
        free(m->keys);
        free(m->counts);
        *m = (CountMap){};
}

static void countmap_clear(CountMap *m)
{
        if (m->keys)
                memset(m->keys, 0, (m->mask + 1) * sizeof(*m->keys));
}

static size_t countmap_find(const CountMap *m, uint64_t key)
{
        size_t i = (size_t)key & m->mask;

        while (m->keys[i] != 0 && m->keys[i] != key)
                i = (i + 1) & m->mask;
        return i;
}

static uint32_t countmap_get(const CountMap *m, uint64_t key)
{
        size_t i = countmap_find(m, key);

        return m->keys[i] == key ? m->counts[i] : 0;
}

static void countmap_inc(CountMap *m, uint64_t key)
{
        size_t i = countmap_find(m, key);

        if (m->keys[i] != key) {
                m->keys[i] = key;
                m->counts[i] = 0;
        }
        m->counts[i]++;
}

/* Returns the count left. */
static uint32_t countmap_dec(CountMap *m, uint64_t key)
{
        size_t i = countmap_find(m, key), j;

        if (m->keys[i] != key)
                return 0;
        if (--m->counts[i] > 0)
                return m->counts[i];
        /* Backward shift: move up the entries whose probe passed slot i. */
        for (j = i;;) {
                size_t home;

                j = (j + 1) & m->mask;
                if (m->keys[j] == 0)
                        break;
                home = (size_t)m->keys[j] & m->mask;
                if (i <= j ? (i < home && home <= j) : (i < home || home <= j))
                        continue;
                m->keys[i] = m->keys[j];
                m->counts[i] = m->counts[j];
                i = j;
        }
        m->keys[i] = 0;
        return 0;
}

static int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

static bool seq_in(const uint64_t *sorted, size_t n, uint64_t seq)
{
        size_t lo = 0, hi = n;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;

                if (sorted[mid] == seq)
                        return true;
                if (sorted[mid] < seq)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return false;
}

/* ---- Blocking file helpers (threadpool, or outbox_open) ---- */

/* Reads complete lines of a file region [pos, end) with pread. */
typedef struct LineReader {
        int fd;
        uint64_t pos; /* file offset of buf[0] */
        uint64_t end;
        char *buf;
        size_t cap, start, len; /* unread lines are buf[start, len) */
        bool eof;
} LineReader;

static void reader_init(LineReader *r, int fd, uint64_t from, uint64_t end)
{
        *r = (LineReader){.fd = fd, .pos = from, .end = end};
}

static void reader_done(LineReader *r)
{
        free(r->buf);
        r->buf = NULL;
}

/* Returns 1 and the next line (without its newline) and its offset, 0 at the
 * end (r->len - r->start bytes of a torn line are left), -EBADMSG for a line
 * longer than a record can be, or another -errno. */
static int reader_next(LineReader *r, const char **ret, size_t *ret_len, uint64_t *ret_offset)
{
        for (;;) {
                char *nl = r->buf ? memchr(r->buf + r->start, '\n', r->len - r->start) : NULL;
                uint64_t want;
                ssize_t k;

                if (nl) {
                        *ret = r->buf + r->start;
                        *ret_len = (size_t)(nl - *ret);
                        *ret_offset = r->pos + r->start;
                        r->start = (size_t)(nl - r->buf) + 1;
                        return 1;
                }
                if (r->eof)
                        return 0;
                if (r->start > 0) {
                        memmove(r->buf, r->buf + r->start, r->len - r->start);
                        r->pos += r->start;
                        r->len -= r->start;
                        r->start = 0;
                }
                if (r->len == r->cap) {
                        size_t cap = r->cap ? r->cap * 2 : READER_INITIAL;
                        char *p;

                        if (r->cap >= OUTBOX_LINE_MAX)
                                return -EBADMSG;
                        if (cap > OUTBOX_LINE_MAX)
                                cap = OUTBOX_LINE_MAX;
                        p = realloc(r->buf, cap);
                        if (!p)
                                return -ENOMEM;
                        r->buf = p;
                        r->cap = cap;
                }
                want = r->end - (r->pos + r->len);
                if (want > r->cap - r->len)
                        want = r->cap - r->len;
                if (want == 0) {
                        r->eof = true;
                        continue;
                }
                k = pread(r->fd, r->buf + r->len, (size_t)want, (off_t)(r->pos + r->len));
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (k == 0)
                        r->eof = true;
                r->len += (size_t)k;
        }
}

/* ---- The module ---- */

typedef enum JobKind {
        JOB_APPEND,  /* write the pending records, maybe fdatasync */
        JOB_REFILL,  /* read disk-only events back into memory */
        JOB_COMPACT, /* rewrite the file with the pending events only */
} JobKind;

typedef struct Job {
        JobKind kind;
        int fd, dir_fd;
        const char *name, *tmp_name;

        /* APPEND: the records and what they hold; COMPACT: the written
         * window as E records. */
        Buf buf;
        uint64_t max_seq, e_records, d_records;
        bool sync;
        uint64_t file_size; /* APPEND: where the write starts; REFILL/COMPACT: the end to read to */

        /* REFILL: the region after read_offset and what to take; COMPACT:
         * what to keep. The window's seqs (in order) and session hashes and
         * the delivered seqs (sorted) are copies the job owns. */
        uint64_t offset;
        uint64_t read_seq, end_seq;
        uint64_t *mem_seqs, *mem_hashes;
        size_t n_mem;
        uint64_t *delivered;
        size_t n_delivered;
        size_t max_entries, max_bytes, cap, max_skip;

        /* Results. */
        int error;
        const char *what;
        OutboxEntry *first, *last; /* REFILL */
        size_t n_entries, n_bytes;
        uint64_t new_read_seq, new_offset, bad_lines;
        bool capped;            /* REFILL: an event was left because its session was at the cap */
        uint64_t test_delay_ms; /* test hook: APPEND sleeps this long before writing */
        int new_fd;             /* COMPACT */
        uint64_t new_size, new_read_offset, tail_records;
} Job;

struct Outbox {
        uv_loop_t *loop;
        char *folder, *file_name, *tmp_name;
        int fd, dir_fd;
        size_t window_max, window_bytes_max, pending_max;
        uint64_t sync_interval_ms, compact_min_bytes, retry_min_ms, retry_max_ms;
        uint64_t test_delay_ms; /* SW_TEST_OUTBOX_WRITE_DELAY_MS, with SW_TEST_HOOKS=1 */
        void (*ready)(void *userdata);
        void *userdata;

        OutboxEntry *head, *tail;
        size_t n_window, window_bytes;
        uint64_t disk_only;
        uint64_t next_seq, read_seq, written_seq;
        CountMap counts;     /* events in the window per session */
        size_t session_cap;  /* the most events of one session read back or loaded into the window */
        uint64_t *delivered; /* done events at or above read_seq, in the order they were done */
        size_t n_delivered, delivered_cap;
        bool refill_paused; /* the last read-back was limited by the cap */
        size_t done_since_pause;
        uint64_t read_offset, file_size, file_e, file_d;
        uint64_t compact_after_bytes; /* after a failed rewrite, wait for the file to grow */

        Buf pending;
        uint64_t pending_max_seq, pending_e, pending_d;
        bool unsynced, sync_due;

        Job job;
        DurableQueue queue; /* runs `job` */
        bool blocked; /* a write failed: wait for the retry timer */
        bool degraded;
        unsigned failures;

        uv_timer_t sync_timer, retry_timer;
        DurableTeardown teardown;
        bool final_started;

        uint64_t appended, done, refills, compactions, write_errors;
        LogRateLimit error_rl;
};

static void start_job(Outbox *o);

static size_t entry_cost(const OutboxEntry *e)
{
        return sizeof(*e) + e->body_len + 2 * OUTBOX_ID_MAX;
}

static OutboxEntry *entry_new(uint64_t seq, int64_t created_us, const char *sid, size_t sid_len,
                              const char *eid, size_t eid_len, const char *body, size_t body_len)
{
        OutboxEntry *e = malloc(sizeof(*e) + sid_len + eid_len + body_len + 3);
        char *p;

        if (!e)
                return NULL;
        *e = (OutboxEntry){.seq = seq, .created_us = created_us, .body_len = body_len};
        p = e->data;
        memcpy(p, sid, sid_len);
        p[sid_len] = '\0';
        e->session_id = p;
        p += sid_len + 1;
        memcpy(p, eid, eid_len);
        p[eid_len] = '\0';
        e->event_id = p;
        p += eid_len + 1;
        memcpy(p, body, body_len);
        p[body_len] = '\0';
        e->body = p;
        return e;
}

static void window_push(Outbox *o, OutboxEntry *e)
{
        e->prev = o->tail;
        e->next = NULL;
        if (o->tail)
                o->tail->next = e;
        else
                o->head = e;
        o->tail = e;
        o->n_window++;
        o->window_bytes += entry_cost(e);
        countmap_inc(&o->counts, session_hash(e->session_id, strlen(e->session_id)));
}

/* Puts read-back entries (a list in seq order) into the window, in order. */
static void window_merge(Outbox *o, OutboxEntry *list)
{
        OutboxEntry *at = o->head;

        while (list) {
                OutboxEntry *e = list;

                list = list->next;
                while (at && at->seq < e->seq)
                        at = at->next;
                if (!at) {
                        window_push(o, e);
                        continue;
                }
                e->next = at;
                e->prev = at->prev;
                if (at->prev)
                        at->prev->next = e;
                else
                        o->head = e;
                at->prev = e;
                o->n_window++;
                o->window_bytes += entry_cost(e);
                countmap_inc(&o->counts, session_hash(e->session_id, strlen(e->session_id)));
        }
}

static void window_unlink(Outbox *o, OutboxEntry *e)
{
        if (e->prev)
                e->prev->next = e->next;
        else
                o->head = e->next;
        if (e->next)
                e->next->prev = e->prev;
        else
                o->tail = e->prev;
        o->n_window--;
        o->window_bytes -= entry_cost(e);
        /* The count left is read by outbox_done(). */
        (void)countmap_dec(&o->counts, session_hash(e->session_id, strlen(e->session_id)));
}

static bool window_full(const Outbox *o)
{
        return o->n_window > 0 && (o->n_window >= o->window_max || o->window_bytes >= o->window_bytes_max);
}

static void free_entries(OutboxEntry *e)
{
        while (e) {
                OutboxEntry *next = e->next;
                free(e);
                e = next;
        }
}

/* ---- Jobs, in the threadpool ---- */

static void job_append(Job *j)
{
        int r;

        if (j->test_delay_ms > 0 && j->e_records > 0) {
                struct timespec ts = {.tv_sec = (time_t)(j->test_delay_ms / 1000),
                                      .tv_nsec = (long)(j->test_delay_ms % 1000) * 1000000L};
                while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                        ;
        }

        if (j->buf.len > 0) {
                r = durable_write(j->fd, j->buf.data, j->buf.len, NULL, NULL);
                if (r < 0) {
                        j->error = r;
                        j->what = "write";
                        /* Take a partial line back off, so the retry appends
                         * to whole records. */
                        (void)durable_truncate(j->fd, (off_t)j->file_size, NULL);
                        return;
                }
        }
        if (j->sync && (r = durable_sync(j->fd, true, NULL)) < 0) {
                j->error = r;
                j->what = "fdatasync";
                /* The records go back to be written again: take this copy
                 * off, so the file holds each once and its size is what
                 * the loop thread believes. */
                (void)durable_truncate(j->fd, (off_t)j->file_size, NULL);
        }
}

/* Whether an E record is pending and only on disk, by the copies the job
 * was given. */
static bool job_disk_only(const Job *j, uint64_t seq)
{
        return seq >= j->read_seq && !seq_in(j->mem_seqs, j->n_mem, seq) &&
               !seq_in(j->delivered, j->n_delivered, seq);
}

static void job_refill(Job *j)
{
        LineReader rd;
        const char *line;
        size_t len, skipped = 0;
        uint64_t off;
        Record rec;
        CountMap counts;
        bool left = false; /* a disk-only event was left: the read position is set */
        int r;

        /* Unless the pass reads to the end, or leaves an event behind, the
         * read position stays where it was. */
        j->new_read_seq = j->read_seq;
        j->new_offset = j->offset;
        r = countmap_init(&counts, j->max_entries + j->n_mem);
        if (r < 0) {
                j->error = r;
                j->what = "read back";
                return;
        }
        for (size_t i = 0; i < j->n_mem; i++)
                countmap_inc(&counts, j->mem_hashes[i]);

        reader_init(&rd, j->fd, j->offset, j->file_size);
        while ((r = reader_next(&rd, &line, &len, &off)) > 0) {
                OutboxEntry *e;
                uint64_t h;

                if (parse_line(line, len, &rec) < 0) {
                        j->bad_lines++;
                        continue;
                }
                if (rec.type != RECORD_EVENT || !job_disk_only(j, rec.seq))
                        continue;
                if (j->n_entries > 0 && (j->n_entries >= j->max_entries ||
                                         j->n_bytes + sizeof(*e) + rec.body_len > j->max_bytes)) {
                        if (!left) {
                                j->new_read_seq = rec.seq;
                                j->new_offset = off;
                        }
                        left = true;
                        break;
                }
                h = session_hash(rec.session_id, rec.session_id_len);
                if (countmap_get(&counts, h) >= j->cap) {
                        /* Its session has its share in memory: it stays on
                         * disk, and so do the session's later events. */
                        if (!left) {
                                j->new_read_seq = rec.seq;
                                j->new_offset = off;
                        }
                        left = true;
                        j->capped = true;
                        if (++skipped >= j->max_skip)
                                break;
                        continue;
                }
                e = entry_new(rec.seq, rec.created_us, rec.session_id, rec.session_id_len, rec.event_id,
                              rec.event_id_len, rec.body, rec.body_len);
                if (!e) {
                        r = -ENOMEM;
                        break;
                }
                countmap_inc(&counts, h);
                e->prev = j->last;
                if (j->last)
                        j->last->next = e;
                else
                        j->first = e;
                j->last = e;
                j->n_entries++;
                j->n_bytes += entry_cost(e);
        }
        if (r < 0) {
                j->error = r;
                j->what = "read back";
        } else if (!left) {
                /* Read to the end: every event written before the job
                 * started is in memory or done. */
                j->new_read_seq = j->end_seq;
                j->new_offset = j->file_size;
        }
        reader_done(&rd);
        countmap_done(&counts);
}

static int compact_fill(void *userdata, int fd)
{
        Job *j = userdata;
        Buf head = {};
        LineReader rd;
        const char *line;
        size_t len;
        uint64_t off;
        Record rec;
        bool found = false;
        int r;

        if ((r = put_header(&head)) < 0 || (r = durable_write(fd, head.data, head.len, NULL, NULL)) < 0) {
                buf_free(&head);
                return r;
        }
        j->new_size = head.len;
        buf_free(&head);

        /* Every pending event, in the window or only on disk, copied line
         * by line in file order, which is seq order. */
        reader_init(&rd, j->fd, 0, j->file_size);
        while ((r = reader_next(&rd, &line, &len, &off)) > 0) {
                if (parse_line(line, len, &rec) < 0 || rec.type != RECORD_EVENT)
                        continue;
                if (!seq_in(j->mem_seqs, j->n_mem, rec.seq) && !job_disk_only(j, rec.seq))
                        continue;
                if (!found && rec.seq >= j->read_seq) {
                        j->new_read_offset = j->new_size;
                        found = true;
                }
                /* The newline after the line is in the reader's buffer. */
                r = durable_write(fd, line, len + 1, NULL, NULL);
                if (r < 0)
                        break;
                j->new_size += len + 1;
                j->tail_records++;
        }
        reader_done(&rd);
        if (!found)
                j->new_read_offset = j->new_size;
        return r;
}

static void job_compact(Job *j)
{
        /* new_fd stays -1 unless the rename was done (even when the folder
         * sync after it failed: the new file is the outbox then). */
        int r = durable_replace(j->dir_fd, j->name, j->tmp_name, compact_fill, j, NULL, &j->new_fd);

        if (r < 0) {
                j->error = r;
                j->what = "rewrite";
        }
}

static void on_job_run(DurableQueue *q)
{
        Job *j = &((Outbox *)q->userdata)->job;

        switch (j->kind) {
        case JOB_APPEND:
                job_append(j);
                break;
        case JOB_REFILL:
                job_refill(j);
                break;
        case JOB_COMPACT:
                job_compact(j);
                break;
        }
}

/* ---- Applying results, on the loop thread ---- */

static void on_sync_timer_fire(uv_timer_t *t)
{
        Outbox *o = t->data;

        o->sync_due = true;
        start_job(o);
}

static void on_retry_timer_fire(uv_timer_t *t)
{
        Outbox *o = t->data;

        o->blocked = false;
        start_job(o);
}

static void log_failure(Outbox *o, int error, const char *what)
{
        o->write_errors++;
        log_ratelimited_errno(&o->error_rl, uv_now(o->loop), LOG_ERR, error,
                              "Failed to %s the webhook outbox '%s/%s': %m.", what, o->folder, o->file_name);
}

static void apply_append(Outbox *o, Job *j)
{
        if (j->error < 0) {
                uint64_t delay = o->retry_min_ms;

                log_failure(o, j->error, j->what);
                o->degraded = true;
                if (j->buf.len > 0) {
                        /* The records go back in front of what came since. */
                        if (buf_reserve(&j->buf, o->pending.len) == 0) {
                                if (o->pending.len > 0)
                                        memcpy(j->buf.data + j->buf.len, o->pending.data, o->pending.len);
                                j->buf.len += o->pending.len;
                                Buf t = o->pending;
                                o->pending = j->buf;
                                j->buf = t;
                                o->pending_e += j->e_records;
                                o->pending_d += j->d_records;
                        } else {
                                log_error("Out of memory: %" PRIu64
                                          " webhook outbox record(s) of '%s' lost.",
                                          j->e_records + j->d_records, o->file_name);
                        }
                }
                for (unsigned k = 0; k < o->failures && delay < o->retry_max_ms; k++)
                        delay *= 2;
                if (delay > o->retry_max_ms)
                        delay = o->retry_max_ms;
                if (o->failures < 32)
                        o->failures++;
                o->blocked = true;
                uv_timer_start(&o->retry_timer, on_retry_timer_fire, delay, 0);
                j->buf.len = 0;
                return;
        }
        if (o->degraded) {
                log_notice("Writing the webhook outbox '%s/%s' works again.", o->folder, o->file_name);
                o->degraded = false;
        }
        o->failures = 0;
        o->file_size += j->buf.len;
        o->file_e += j->e_records;
        o->file_d += j->d_records;
        if (j->max_seq > o->written_seq)
                o->written_seq = j->max_seq;
        if (o->disk_only == 0)
                o->read_offset = o->file_size;
        if (j->sync) {
                o->unsynced = false;
                o->sync_due = false;
        } else if (j->buf.len > 0) {
                o->unsynced = true;
                if (!uv_is_active((uv_handle_t *)&o->sync_timer) && !o->teardown.closing)
                        uv_timer_start(&o->sync_timer, on_sync_timer_fire, o->sync_interval_ms, 0);
        }
        j->buf.len = 0;
}

/* read_seq moved up: the delivered events below it are no longer needed
 * to tell pending records from done ones. */
static void delivered_trim(Outbox *o)
{
        size_t k = 0;

        for (size_t i = 0; i < o->n_delivered; i++)
                if (o->delivered[i] >= o->read_seq)
                        o->delivered[k++] = o->delivered[i];
        o->n_delivered = k;
}

/* Nothing waits on disk any more. */
static void all_in_memory(Outbox *o)
{
        o->disk_only = 0;
        o->read_seq = o->next_seq;
        o->read_offset = o->file_size;
        o->n_delivered = 0;
        o->refill_paused = false;
}

static void apply_refill(Outbox *o, Job *j)
{
        if (j->error < 0)
                log_failure(o, j->error, j->what);
        if (j->bad_lines > 0)
                log_error("Skipped %" PRIu64
                          " unreadable record(s) while reading back the webhook outbox '%s/%s'.",
                          j->bad_lines, o->folder, o->file_name);
        window_merge(o, j->first);
        j->first = j->last = NULL;
        o->disk_only -= j->n_entries <= o->disk_only ? j->n_entries : o->disk_only;
        o->read_seq = j->new_read_seq;
        o->read_offset = j->new_offset;
        o->refills++;
        /* Read to the end and nothing unwritten: the count was off (records
         * lost to disk damage); what is on disk is all in memory now. */
        if (o->disk_only == 0 || (j->error == 0 && o->read_offset >= o->file_size && o->pending_e == 0)) {
                all_in_memory(o);
                return;
        }
        delivered_trim(o);
        if (j->capped) {
                o->refill_paused = true;
                o->done_since_pause = 0;
        }
}

static void apply_compact(Outbox *o, Job *j)
{
        if (j->error < 0)
                log_failure(o, j->error, j->what);
        if (j->new_fd < 0) {
                o->compact_after_bytes = o->file_size * 2;
                j->buf.len = 0;
                return;
        }
        /* Renamed over the old file (the folder sync may have failed after
         * it): appends go to the new file from now on, or they would go to
         * the old one that no name reaches any more. */
        close(o->fd);
        o->fd = j->new_fd;
        o->file_size = j->new_size;
        o->read_offset = o->disk_only > 0 ? j->new_read_offset : j->new_size;
        o->file_e = j->tail_records;
        o->file_d = 0;
        o->unsynced = false;
        o->compactions++;
        o->compact_after_bytes = 0;
        /* The events delivered before the rewrite started are not in the new
         * file; those delivered since are (with their D records to come). */
        assert(j->n_delivered <= o->n_delivered);
        if (j->n_delivered > 0) {
                memmove(o->delivered, o->delivered + j->n_delivered,
                        (o->n_delivered - j->n_delivered) * sizeof(uint64_t));
                o->n_delivered -= j->n_delivered;
        }
        j->buf.len = 0;
}

static void job_free_copies(Job *j)
{
        free(j->mem_seqs);
        free(j->mem_hashes);
        free(j->delivered);
        j->mem_seqs = j->mem_hashes = j->delivered = NULL;
        j->n_mem = j->n_delivered = 0;
}

static void close_finish(Outbox *o);

static void on_job_done(DurableQueue *q)
{
        Outbox *o = q->userdata;
        Job *j = &o->job;
        bool became_ready = false;

        switch (j->kind) {
        case JOB_APPEND:
                became_ready = j->error == 0 && j->e_records > 0;
                apply_append(o, j);
                break;
        case JOB_REFILL:
                became_ready = j->n_entries > 0;
                apply_refill(o, j);
                break;
        case JOB_COMPACT:
                apply_compact(o, j);
                break;
        }
        job_free_copies(j);
        if (o->teardown.closing) {
                if (o->final_started)
                        close_finish(o);
                else
                        start_job(o);
                return;
        }
        if (became_ready && o->ready)
                o->ready(o->userdata);
        start_job(o);
}

/* ---- Starting jobs ---- */

static void job_reset(Outbox *o, Job *j, JobKind kind)
{
        Buf keep = j->buf;

        *j = (Job){.kind = kind,
                   .fd = o->fd,
                   .dir_fd = o->dir_fd,
                   .name = o->file_name,
                   .tmp_name = o->tmp_name,
                   .new_fd = -1,
                   .test_delay_ms = o->test_delay_ms};
        j->buf = keep;
        j->buf.len = 0;
}

static void submit(Outbox *o)
{
        durable_queue_submit(&o->queue);
}

static void start_append(Outbox *o, bool sync)
{
        Job *j = &o->job;
        Buf t;

        job_reset(o, j, JOB_APPEND);
        t = j->buf;
        j->buf = o->pending;
        o->pending = t;
        o->pending.len = 0;
        j->e_records = o->pending_e;
        j->d_records = o->pending_d;
        j->max_seq = o->pending_max_seq;
        o->pending_e = o->pending_d = 0;
        j->sync = sync;
        j->file_size = o->file_size;
        submit(o);
}

static bool want_refill(const Outbox *o)
{
        return o->disk_only > 0 && !o->refill_paused && o->read_offset < o->file_size &&
               o->n_window <= o->window_max * 3 / 4 && o->window_bytes <= o->window_bytes_max * 3 / 4;
}

/* Gives the job copies of the window's seqs and session hashes and of the
 * delivered seqs, sorted. */
static int job_copy_state(Outbox *o, Job *j, bool hashes)
{
        size_t i = 0;

        j->mem_seqs = malloc((o->n_window ? o->n_window : 1) * sizeof(uint64_t));
        j->mem_hashes = hashes ? malloc((o->n_window ? o->n_window : 1) * sizeof(uint64_t)) : NULL;
        j->delivered = malloc((o->n_delivered ? o->n_delivered : 1) * sizeof(uint64_t));
        if (!j->mem_seqs || (hashes && !j->mem_hashes) || !j->delivered) {
                job_free_copies(j);
                return -ENOMEM;
        }
        for (OutboxEntry *e = o->head; e; e = e->next, i++) {
                j->mem_seqs[i] = e->seq;
                if (hashes)
                        j->mem_hashes[i] = session_hash(e->session_id, strlen(e->session_id));
        }
        j->n_mem = i;
        if (o->n_delivered > 0)
                memcpy(j->delivered, o->delivered, o->n_delivered * sizeof(uint64_t));
        j->n_delivered = o->n_delivered;
        qsort(j->delivered, j->n_delivered, sizeof(uint64_t), cmp_u64);
        j->read_seq = o->read_seq;
        j->end_seq = o->next_seq;
        return 0;
}

static int start_refill(Outbox *o)
{
        Job *j = &o->job;
        int r;

        job_reset(o, j, JOB_REFILL);
        r = job_copy_state(o, j, true);
        if (r < 0)
                return r;
        j->offset = o->read_offset;
        j->file_size = o->file_size;
        j->max_entries = o->window_max > o->n_window ? o->window_max - o->n_window : 1;
        j->max_bytes = o->window_bytes_max > o->window_bytes ? o->window_bytes_max - o->window_bytes : 1;
        j->cap = o->session_cap;
        j->max_skip = o->window_max * 4;
        submit(o);
        return 0;
}

static bool want_compact(const Outbox *o)
{
        return o->file_size >= o->compact_min_bytes && o->file_size >= o->compact_after_bytes &&
               o->file_d > 0 && o->file_d * 2 >= o->file_e;
}

static int start_compact(Outbox *o)
{
        Job *j = &o->job;
        int r;

        job_reset(o, j, JOB_COMPACT);
        r = job_copy_state(o, j, false);
        if (r < 0)
                return r;
        j->file_size = o->file_size;
        submit(o);
        return 0;
}

/* Hands the next piece of work to the threadpool, when none is in flight. */
static void start_job(Outbox *o)
{
        if (o->queue.in_flight || o->fd < 0)
                return;
        if (o->teardown.closing) {
                /* The last job: whatever is pending, written and synced. */
                o->final_started = true;
                if (o->pending.len > 0 || o->unsynced) {
                        start_append(o, true);
                        return;
                }
                close_finish(o);
                return;
        }
        if (o->blocked)
                return;
        if (o->pending.len > 0) {
                start_append(o, o->sync_due);
                return;
        }
        if (want_refill(o)) {
                if (start_refill(o) == 0)
                        return;
                /* Out of memory: try again when an event is done or new. */
                o->refill_paused = true;
                o->done_since_pause = 0;
        }
        if (want_compact(o)) {
                if (start_compact(o) < 0) {
                        o->job.buf.len = 0;
                        o->compact_after_bytes = o->file_size * 2;
                }
                return;
        }
        if (o->sync_due && o->unsynced)
                start_append(o, true);
}

/* ---- Public, loop thread ---- */

int outbox_append(Outbox *o, const char *session_id, const char *event_id, int64_t created_us,
                  const char *body, size_t body_len)
{
        size_t sid_len = strlen(session_id), eid_len = strlen(event_id);
        OutboxEntry *e = NULL;
        size_t before;
        int r;

        if (o->teardown.closing)
                return -ECANCELED;
        if (!id_valid(session_id, sid_len) || !id_valid(event_id, eid_len) || body_len == 0 ||
            memchr(body, '\n', body_len) || created_us < 0)
                return -EINVAL;
        if (body_len + sid_len + eid_len + 64 > OUTBOX_LINE_MAX)
                return -E2BIG;
        if (o->pending.len + body_len > o->pending_max)
                return -ENOBUFS;

        /* While anything waits on disk, newer events wait there too, and so
         * does one whose session has its share of the window already: the
         * read-back takes them in order. */
        if (o->disk_only == 0 && !window_full(o) &&
            countmap_get(&o->counts, session_hash(session_id, sid_len)) < o->session_cap) {
                e = entry_new(o->next_seq, created_us, session_id, sid_len, event_id, eid_len, body,
                              body_len);
                if (!e)
                        return -ENOMEM;
        }
        before = o->pending.len;
        r = put_event(&o->pending, o->next_seq, created_us, session_id, sid_len, event_id, eid_len, body,
                      body_len);
        if (r < 0) {
                o->pending.len = before;
                free(e);
                return r;
        }
        o->pending_e++;
        o->pending_max_seq = o->next_seq;
        if (e) {
                window_push(o, e);
        } else {
                o->disk_only++;
                /* A new event on disk may be one the read-back can take. */
                o->refill_paused = false;
        }
        o->next_seq++;
        if (o->disk_only == 0)
                o->read_seq = o->next_seq;
        o->appended++;
        start_job(o);
        return 0;
}

OutboxEntry *outbox_first(Outbox *o)
{
        return o->head;
}

OutboxEntry *outbox_next(Outbox *o, OutboxEntry *e)
{
        (void)o;
        return e->next;
}

uint64_t outbox_last_appended(const Outbox *o)
{
        return o->next_seq - 1;
}

uint64_t outbox_last_written(const Outbox *o)
{
        return o->written_seq;
}

bool outbox_entry_ready(const Outbox *o, const OutboxEntry *e)
{
        return e->seq <= o->written_seq;
}

void outbox_done(Outbox *o, OutboxEntry *e)
{
        int r;

        assert(!o->teardown.closing || !o->final_started);
        window_unlink(o, e);
        if (e->seq >= o->read_seq) {
                /* Its E record lies past the read position: remember that it
                 * is done, or a read-back would take it again. */
                if (o->n_delivered == o->delivered_cap) {
                        size_t cap = o->delivered_cap ? o->delivered_cap * 2 : 64;
                        uint64_t *p = realloc(o->delivered, cap * sizeof(uint64_t));

                        if (p) {
                                o->delivered = p;
                                o->delivered_cap = cap;
                        }
                }
                if (o->n_delivered < o->delivered_cap)
                        o->delivered[o->n_delivered++] = e->seq;
                else
                        /* At least once still holds: it is sent again. */
                        log_error("Out of memory: '%s' may be delivered again.", e->event_id);
        }
        if (o->refill_paused) {
                /* What the read-back left may fit now. */
                o->done_since_pause++;
                if (countmap_get(&o->counts, session_hash(e->session_id, strlen(e->session_id))) == 0 ||
                    o->done_since_pause * 2 >= o->session_cap)
                        o->refill_paused = false;
        }
        r = put_done(&o->pending, e->seq);
        if (r < 0)
                /* The event will be sent again after a restart: at least
                 * once still holds. */
                log_error_errno(r, "Failed to record delivery of '%s' in the webhook outbox: %m",
                                e->event_id);
        else
                o->pending_d++;
        free(e);
        o->done++;
        start_job(o);
}

void outbox_stats(const Outbox *o, OutboxStats *ret)
{
        *ret = (OutboxStats){
            .pending = o->n_window + o->disk_only,
            .window = o->n_window,
            .window_bytes = o->window_bytes,
            .disk_only = o->disk_only,
            .file_bytes = o->file_size,
            .pending_bytes = o->pending.len,
            .appended = o->appended,
            .done = o->done,
            .refills = o->refills,
            .compactions = o->compactions,
            .write_errors = o->write_errors,
            .oldest_created_us = o->head ? o->head->created_us : 0,
            .degraded = o->degraded,
        };
}

bool outbox_busy(const Outbox *o)
{
        return o->queue.in_flight;
}

int outbox_unlink(Outbox *o)
{
        assert(!o->queue.in_flight && !o->teardown.closing);
        if (unlinkat(o->dir_fd, o->file_name, 0) < 0 && errno != ENOENT)
                return -errno;
        return 0;
}

static void outbox_free(void *userdata)
{
        Outbox *o = userdata;

        free_entries(o->head);
        free_entries(o->job.first);
        job_free_copies(&o->job);
        countmap_done(&o->counts);
        free(o->delivered);
        buf_free(&o->pending);
        buf_free(&o->job.buf);
        free(o->folder);
        free(o->file_name);
        free(o->tmp_name);
        durable_queue_destroy(&o->queue);
        free(o);
}

static void close_finish(Outbox *o)
{
        durable_teardown_finish(
            &o->teardown, &o->fd, &o->dir_fd, outbox_free, o,
            (uv_handle_t *[]){(uv_handle_t *)&o->sync_timer, (uv_handle_t *)&o->retry_timer}, 2);
}

void outbox_close(Outbox *o, void (*closed)(void *userdata), void *userdata)
{
        assert(o);
        durable_teardown_begin(&o->teardown, closed, userdata);
        uv_timer_stop(&o->sync_timer);
        uv_timer_stop(&o->retry_timer);
        o->blocked = false;
        if (o->fd < 0) {
                o->final_started = true;
                close_finish(o);
                return;
        }
        start_job(o);
}

/* ---- Loading, blocking ---- */

typedef struct Loader {
        Outbox *o;
        OutboxLoadReport *rep;
        uint64_t *done;
        size_t n_done, done_cap;
        uint64_t valid_end; /* end of the last good line */
        uint64_t max_seq;
        uint64_t last_event_seq; /* E records must come in increasing <seq> order */
        bool rewrite;
        /* Pass 2 */
        int in_fd;
        uint64_t out_size, first_disk_only; /* in the file being kept or written */
        uint64_t kept;
        bool taking;    /* events still go to the window */
        size_t skipped; /* events left on disk for the cap */
} Loader;

static bool is_done(const Loader *l, uint64_t seq)
{
        return l->n_done > 0 && bsearch(&seq, l->done, l->n_done, sizeof(uint64_t), cmp_u64);
}

/* Pass 1: checks every line, collects the done set. Returns 0, -EBADMSG
 * with a reason for a corrupt file, or another -errno. */
static int load_scan(Loader *l, int fd, uint64_t size)
{
        LineReader rd;
        const char *line;
        size_t len;
        uint64_t off, last_off = 0;
        Record rec;
        bool first = true, pending_bad = false;
        int r, bad_r = 0;

        reader_init(&rd, fd, 0, size);
        while ((r = reader_next(&rd, &line, &len, &off)) > 0) {
                if (pending_bad) {
                        /* A bad line that is not the last: not a torn write. */
                        snprintf(l->rep->corrupt_reason, sizeof(l->rep->corrupt_reason),
                                 "%s in the record at byte %" PRIu64,
                                 bad_r == -EBADMSG  ? "bad checksum or framing"
                                 : bad_r == -ERANGE ? "an event out of sequence order"
                                                    : "a record that does not parse",
                                 last_off);
                        r = -EBADMSG;
                        break;
                }
                r = parse_line(line, len, &rec);
                if (r == -EPROTONOSUPPORT) {
                        snprintf(l->rep->corrupt_reason, sizeof(l->rep->corrupt_reason),
                                 "an unsupported format version");
                        r = -EBADMSG;
                        break;
                }
                if (r == 0 && first != (rec.type == RECORD_HEADER))
                        r = -EINVAL;
                /* Sequence numbers only grow: an event at or below the one
                 * before it was not written by us (the window and the
                 * read-back rely on the order). */
                if (r == 0 && rec.type == RECORD_EVENT) {
                        if (rec.seq <= l->last_event_seq)
                                r = -ERANGE;
                        else
                                l->last_event_seq = rec.seq;
                }
                if (r < 0) {
                        pending_bad = true;
                        bad_r = r;
                        last_off = off;
                        continue;
                }
                first = false;
                l->valid_end = off + len + 1;
                if (rec.seq > l->max_seq)
                        l->max_seq = rec.seq;
                if (rec.type == RECORD_DONE) {
                        if (l->n_done == l->done_cap) {
                                size_t cap = l->done_cap ? l->done_cap * 2 : 1024;
                                uint64_t *p = realloc(l->done, cap * sizeof(uint64_t));
                                if (!p) {
                                        r = -ENOMEM;
                                        break;
                                }
                                l->done = p;
                                l->done_cap = cap;
                        }
                        l->done[l->n_done++] = rec.seq;
                }
        }
        reader_done(&rd);
        if (r < 0)
                return r;
        l->rep->torn_bytes = size - l->valid_end;
        if (first && size > 0) {
                /* No header line at all: only a header torn while the file
                 * was created is harmless; anything else is not ours. */
                Buf head = {};
                char got[64];
                ssize_t k = -1;

                if (put_header(&head) == 0 && size < head.len)
                        k = pread(fd, got, (size_t)size, 0);
                if (k != (ssize_t)size || memcmp(got, head.data, (size_t)size) != 0) {
                        buf_free(&head);
                        snprintf(l->rep->corrupt_reason, sizeof(l->rep->corrupt_reason), "no header");
                        return -EBADMSG;
                }
                buf_free(&head);
        }
        l->rep->done_records = l->n_done;
        if (l->n_done > 0)
                qsort(l->done, l->n_done, sizeof(uint64_t), cmp_u64);
        return 0;
}

/* Pass 2: takes the pending events into the window and, when rewriting,
 * writes them to `out_fd` (which has the header already). */
static int load_take(Loader *l, int out_fd)
{
        Outbox *o = l->o;
        LineReader rd;
        const char *line;
        size_t len;
        uint64_t off;
        Record rec;
        int r;

        reader_init(&rd, l->in_fd, 0, l->valid_end);
        while ((r = reader_next(&rd, &line, &len, &off)) > 0) {
                uint64_t at;

                if (parse_line(line, len, &rec) < 0 || rec.type != RECORD_EVENT || is_done(l, rec.seq))
                        continue;
                at = out_fd >= 0 ? l->out_size : off;
                if (out_fd >= 0) {
                        r = durable_write(out_fd, line, len + 1, NULL, NULL);
                        if (r < 0)
                                break;
                        l->out_size += len + 1;
                }
                l->rep->pending++;
                if (l->taking && window_full(o))
                        l->taking = false;
                if (l->taking &&
                    countmap_get(&o->counts, session_hash(rec.session_id, rec.session_id_len)) >=
                        o->session_cap) {
                        /* The same cap as the read-back's, and the same
                         * bound on how far past the first event left on
                         * disk it looks. */
                        if (++l->skipped >= o->window_max * 4)
                                l->taking = false;
                } else if (l->taking) {
                        OutboxEntry *e =
                            entry_new(rec.seq, rec.created_us, rec.session_id, rec.session_id_len,
                                      rec.event_id, rec.event_id_len, rec.body, rec.body_len);
                        if (!e) {
                                r = -ENOMEM;
                                break;
                        }
                        window_push(o, e);
                        l->kept++;
                        continue;
                }
                if (o->disk_only == 0) {
                        l->first_disk_only = at;
                        o->read_seq = rec.seq;
                }
                o->disk_only++;
                l->kept++;
        }
        reader_done(&rd);
        return r;
}

static int load_fill(void *userdata, int fd)
{
        Loader *l = userdata;
        Buf head = {};
        int r;

        if ((r = put_header(&head)) < 0 || (r = durable_write(fd, head.data, head.len, NULL, NULL)) < 0) {
                buf_free(&head);
                return r;
        }
        l->out_size = head.len;
        buf_free(&head);
        return load_take(l, fd);
}

static void reset_window(Outbox *o)
{
        free_entries(o->head);
        o->head = o->tail = NULL;
        o->n_window = o->window_bytes = 0;
        o->disk_only = 0;
        countmap_clear(&o->counts);
}

/* Renames the unreadable file aside, never replacing anything. */
static int move_aside(Outbox *o, OutboxLoadReport *rep)
{
        char name[512];
        int r = durable_move_aside(o->dir_fd, o->file_name, NULL, name, sizeof(name));

        if (r < 0)
                return r;
        snprintf(rep->corrupt_path, sizeof(rep->corrupt_path), "%.255s/%.255s", o->folder, name);
        return 0;
}

static int write_fresh(void *userdata, int fd)
{
        Loader *l = userdata;
        Buf head = {};
        int r = put_header(&head);

        if (r >= 0)
                r = durable_write(fd, head.data, head.len, NULL, NULL);
        l->out_size = head.len;
        buf_free(&head);
        return r;
}

static int load(Outbox *o, OutboxLoadReport *rep)
{
        Loader l = {.o = o, .rep = rep, .in_fd = -1, .taking = true};
        struct stat st;
        int fd, r;

        fd = openat(o->dir_fd, o->file_name, O_RDWR | O_APPEND | O_CLOEXEC);
        if (fd < 0 && errno != ENOENT)
                return -errno;
        if (fd >= 0 && fstat(fd, &st) < 0) {
                r = -errno;
                close(fd);
                return r;
        }
        if (fd >= 0 && st.st_size > 0) {
                r = load_scan(&l, fd, (uint64_t)st.st_size);
                if (r == -EBADMSG) {
                        rep->corrupt = true;
                        close(fd);
                        fd = -1;
                        r = move_aside(o, rep);
                        if (r < 0)
                                return r;
                        l.n_done = 0;
                        l.max_seq = 0;
                } else if (r < 0) {
                        close(fd);
                        free(l.done);
                        return r;
                }
        }
        if (fd >= 0 && l.valid_end == 0) {
                /* Empty, or only a torn header. */
                close(fd);
                fd = -1;
        }

        if (fd < 0) {
                r = durable_replace(o->dir_fd, o->file_name, o->tmp_name, write_fresh, &l, NULL, &o->fd);
                if (r < 0)
                        goto out;
                o->file_size = l.out_size;
                o->read_offset = o->file_size;
                o->next_seq = l.max_seq + 1;
                goto out;
        }

        l.in_fd = fd;
        l.rewrite = l.n_done > 0 || rep->torn_bytes > 0;
        if (l.rewrite) {
                r = durable_replace(o->dir_fd, o->file_name, o->tmp_name, load_fill, &l, NULL, &o->fd);
                close(fd);
                if (r < 0) {
                        reset_window(o);
                        goto out;
                }
                rep->rewritten = true;
                o->file_size = l.out_size;
        } else {
                l.out_size = l.valid_end;
                r = load_take(&l, -1);
                if (r < 0) {
                        close(fd);
                        reset_window(o);
                        goto out;
                }
                o->fd = fd;
                o->file_size = l.valid_end;
        }
        o->file_e = l.kept;
        o->file_d = 0;
        o->read_offset = o->disk_only > 0 ? l.first_disk_only : o->file_size;
        o->next_seq = l.max_seq + 1;
        r = 0;
out:
        if (o->disk_only == 0)
                o->read_seq = o->next_seq;
        o->written_seq = o->next_seq - 1;
        free(l.done);
        return r;
}

static bool name_valid(const char *name)
{
        size_t n = name ? strlen(name) : 0;

        if (n == 0 || n > 64)
                return false;
        for (size_t i = 0; i < n; i++) {
                char c = name[i];
                if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                      c == '_' || c == '-' || c == '.'))
                        return false;
        }
        return true;
}

int outbox_open(uv_loop_t *loop, const OutboxOptions *opt, void (*ready)(void *userdata), void *userdata,
                Outbox **ret, OutboxLoadReport *ret_report)
{
        OutboxLoadReport dummy;
        OutboxLoadReport *rep = ret_report ? ret_report : &dummy;
        Outbox *o;
        int r;

        *rep = (OutboxLoadReport){};
        if (!opt || !opt->folder || !name_valid(opt->name))
                return -EINVAL;
        o = calloc(1, sizeof(*o));
        if (!o)
                return -ENOMEM;
        if (durable_queue_init(&o->queue, loop, on_job_run, on_job_done, o) < 0) {
                free(o);
                return -ENOMEM;
        }
        o->loop = loop;
        o->fd = o->dir_fd = -1;
        o->ready = ready;
        /* Test hook: slow writes, to show what waits for them. */
        if (getenv("SW_TEST_HOOKS") && strcmp(getenv("SW_TEST_HOOKS"), "1") == 0 &&
            getenv("SW_TEST_OUTBOX_WRITE_DELAY_MS"))
                o->test_delay_ms = strtoull(getenv("SW_TEST_OUTBOX_WRITE_DELAY_MS"), NULL, 10);
        o->userdata = userdata;
        o->window_max = opt->window_entries ? opt->window_entries : DEFAULT_WINDOW_ENTRIES;
        o->window_bytes_max = opt->window_bytes ? opt->window_bytes : DEFAULT_WINDOW_BYTES;
        o->pending_max = opt->pending_max ? opt->pending_max : DEFAULT_PENDING_MAX;
        o->sync_interval_ms = opt->sync_interval_ms ? opt->sync_interval_ms : DEFAULT_SYNC_INTERVAL_MS;
        o->compact_min_bytes = opt->compact_min_bytes ? opt->compact_min_bytes : DEFAULT_COMPACT_MIN_BYTES;
        o->retry_min_ms = opt->retry_min_ms ? opt->retry_min_ms : DEFAULT_RETRY_MIN_MS;
        o->retry_max_ms = opt->retry_max_ms ? opt->retry_max_ms : DEFAULT_RETRY_MAX_MS;
        o->error_rl = (LogRateLimit)LOG_RATELIMIT_INIT(10000, 3);
        o->next_seq = 1;
        o->folder = strdup(opt->folder);
        if (!o->folder || asprintf(&o->file_name, "outbox-%s", opt->name) < 0 ||
            asprintf(&o->tmp_name, "outbox-%s.tmp", opt->name) < 0) {
                r = -ENOMEM;
                goto fail;
        }
        /* A session's share of the window: one that keeps failing holds
         * at most this much of it, the others get the rest. */
        o->session_cap = o->window_max / 16 > 0 ? o->window_max / 16 : 1;
        r = countmap_init(&o->counts, o->window_max);
        if (r < 0)
                goto fail;
        r = durable_open_folder(o->folder, NULL, &o->dir_fd);
        if (r < 0)
                goto fail;
        r = load(o, rep);
        if (r < 0)
                goto fail;

        uv_timer_init(loop, &o->sync_timer);
        uv_timer_init(loop, &o->retry_timer);
        o->sync_timer.data = o->retry_timer.data = o;
        *ret = o;
        return 0;
fail:
        durable_close_fd(&o->fd);
        durable_close_fd(&o->dir_fd);
        outbox_free(o);
        return r;
}
