/* outbox: the durable queue of one webhook, so that an event handed to the
 * webhook sink survives a restart or a SIGKILL until the receiver took it.
 *
 * The file, `<folder>/outbox-<name>`, uses the line framing of state.h:
 *
 *     <crc32c of the payload, 8 lower-case hex digits> <payload>\n
 *
 * with the header payload `sessionwatch-outbox 1` first, then
 *
 *     E <seq> <created_us> <session-id> <event-id> <body>   an event to deliver
 *     D <seq>                                               it was delivered or dropped
 *
 * <seq> increases by one per event and never repeats within a file's life;
 * <body> is the request body, one line (JSON never needs a raw newline, and
 * the module refuses a body that has one). E records appear in <seq> order.
 *
 * Loading (outbox_open) drops a torn last line; any other line that does not
 * parse makes the file corrupt: it is renamed to
 * `outbox-<name>.corrupt-<UTC time>`, never deleted, and the outbox starts
 * empty. A file with done records or a torn tail is rewritten at load with
 * only the pending events.
 *
 * Memory stays bounded however long a receiver is down: only a window of
 * pending events (by count and bytes) is held in memory; the others are
 * only in the file and are read back in seq order, in the threadpool, as the
 * window drains. The window is shared across sessions: read-back and loading
 * take an event only while its session holds fewer than window/16 (at least
 * one) in memory, so one session whose events keep failing cannot hold the
 * others on disk. For each session the window holds its oldest pending
 * events, and the window itself is in seq order, so the first event of a
 * session in it is the session's oldest.
 *
 * On the loop thread the module only formats records into memory; writes,
 * fdatasync (batched, at most every sync interval), read-back and
 * compaction (rewrite into `outbox-<name>.tmp`, fsync, rename, fsync of the
 * folder, when done records dominate) run in libuv's threadpool, one job at
 * a time. An event becomes ready for delivery only once its E record was
 * written (write(2) returned), which is what a SIGKILL cannot undo. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct uv_loop_s uv_loop_t;

#define OUTBOX_FORMAT_VERSION 1
#define OUTBOX_ID_MAX 64                          /* session and event ids: [A-Za-z0-9_-] */
#define OUTBOX_LINE_MAX ((size_t)4 * 1024 * 1024) /* longest record, newline included */

typedef struct OutboxEntry OutboxEntry;

/* One pending event in the window. The strings are NUL-terminated and live
 * as long as the entry. */
struct OutboxEntry {
        OutboxEntry *prev, *next; /* the window, in seq order: use outbox_first/next */
        uint64_t seq;
        int64_t created_us; /* CLOCK_REALTIME when it entered the outbox */
        const char *session_id;
        const char *event_id;
        const char *body;
        size_t body_len;

        /* The user's (the sink's); the outbox neither reads nor changes them. */
        bool in_flight;
        unsigned failures;
        uint64_t not_before_ms; /* uv_now() before which it is not attempted */

        char data[];
};

typedef struct OutboxOptions {
        const char *folder;         /* created (mode 0700) when missing */
        const char *name;           /* the file is <folder>/outbox-<name>; [A-Za-z0-9_.-] */
        size_t window_entries;      /* pending events held in memory; 0: 1024 */
        size_t window_bytes;        /* their bytes; 0: 4 MiB (at least one event always fits) */
        uint64_t sync_interval_ms;  /* fdatasync at most this often; 0: 1000 */
        uint64_t compact_min_bytes; /* never compact a smaller file; 0: 256 KiB */
        size_t pending_max;         /* unwritten backlog bound, bytes; 0: 16 MiB */
        uint64_t retry_min_ms;      /* first retry after a write failure; 0: 1000 */
        uint64_t retry_max_ms;      /* its ceiling; 0: 30000 */
} OutboxOptions;

typedef struct OutboxLoadReport {
        uint64_t pending;       /* events found not done */
        uint64_t done_records;  /* D records found */
        uint64_t torn_bytes;    /* bytes of a torn last line, dropped */
        bool rewritten;         /* the file was compacted at load */
        bool corrupt;           /* the file was unreadable and moved aside */
        char corrupt_path[512]; /* where it went (empty when it could not be moved) */
        char corrupt_reason[128];
} OutboxLoadReport;

typedef struct OutboxStats {
        uint64_t pending;          /* events not done: in the window or only in the file */
        size_t window;             /* events in memory */
        size_t window_bytes;       /* their bytes */
        uint64_t disk_only;        /* events only in the file */
        uint64_t file_bytes;       /* size of the file as written */
        uint64_t pending_bytes;    /* formatted, not yet written */
        uint64_t appended;         /* events accepted since open */
        uint64_t done;             /* D records made since open */
        uint64_t refills;          /* read-backs from the file */
        uint64_t compactions;      /* rewrites since open (not counting the load) */
        uint64_t write_errors;     /* failed writes or syncs */
        int64_t oldest_created_us; /* created_us of the oldest pending event; 0: none */
        bool degraded;             /* writes are failing */
} OutboxStats;

typedef struct Outbox Outbox;

/* Opens (or creates) the file and loads it, blocking: call it before the
 * loop runs or accept a short stall. `ready` (may be NULL) is called on the
 * loop whenever events became ready for delivery (their record was written,
 * or they were read back into the window). Returns 0, -EINVAL for a bad
 * name, -ENOMEM, or the -errno of opening the folder or the file (a corrupt
 * file is not an error: see the report, which is optional). */
int outbox_open(uv_loop_t *loop, const OutboxOptions *options, void (*ready)(void *userdata), void *userdata,
                Outbox **ret, OutboxLoadReport *ret_report);

/* Queues an event, on the loop thread, without a syscall; it is written by
 * the next job. Returns 0; -EINVAL for an invalid id or a body that is empty
 * or has a newline; -E2BIG for a record longer than OUTBOX_LINE_MAX;
 * -ENOBUFS when the unwritten backlog is full (the disk is failing);
 * -ENOMEM; -ECANCELED after outbox_close(). */
int outbox_append(Outbox *o, const char *session_id, const char *event_id, int64_t created_us,
                  const char *body, size_t body_len);

/* The sequence number of the last event appended (0: none yet), and that of
 * the last one whose record is written: every event up to it survives the
 * daemon being killed. */
uint64_t outbox_last_appended(const Outbox *o);
uint64_t outbox_last_written(const Outbox *o);

/* The window, oldest first. */
OutboxEntry *outbox_first(Outbox *o);
OutboxEntry *outbox_next(Outbox *o, OutboxEntry *e);

/* Whether the entry's record is in the file (it may be attempted). */
bool outbox_entry_ready(const Outbox *o, const OutboxEntry *e);

/* The event was delivered or dropped: records that and frees the entry. */
void outbox_done(Outbox *o, OutboxEntry *e);

void outbox_stats(const Outbox *o, OutboxStats *ret);

/* Whether a threadpool job (a write, read-back or rewrite) is under way. */
bool outbox_busy(const Outbox *o);

/* Removes the file from the folder, on the loop thread (one unlinkat(2));
 * call it only while !outbox_busy() (a rewrite would put it back) and
 * before outbox_close(), whose last writes then go nowhere. Returns 0 or
 * the -errno of unlinkat(). */
int outbox_unlink(Outbox *o);

/* Writes what is pending and fdatasyncs (in the threadpool, after a job in
 * flight), closes the file and the handles, frees the outbox and its
 * entries, then calls `closed` (may be NULL) from the loop. */
void outbox_close(Outbox *o, void (*closed)(void *userdata), void *userdata);
