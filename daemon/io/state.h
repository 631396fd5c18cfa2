/* Durable state: the last known status of every watched session and the set
 * of sessions added at run time, kept in one append-only log in the state
 * folder so that a restart neither repeats nor loses transitions.
 *
 * The file, `<folder>/state`, is a sequence of text lines
 *
 *     <crc32c of the payload, 8 lower-case hex digits> <payload>\n
 *
 * whose first payload is the header `sessionwatch-state 2` (the format
 * version). Payloads after it:
 *
 *     S <id> <status> <updated_at_us> <flags>   a session's durable fields
 *     U <id>                                    the session is no longer watched
 *     W <key> <newest_us>                       a discovery watermark (version 2)
 *
 * <status> is the status as the API spelled it, percent-encoded (every byte
 * outside [A-Za-z0-9] becomes %XX); `-` stands for "never observed" and `=`
 * for the empty string. <flags> are letters (`d` added at run time, `g`
 * gone, `s` stalled event sent: version 2) or `-` for none. On load the last
 * record for an id wins.
 *
 * A watermark's <key> is a runbook id, or `*` for `[watch] all`; <newest_us>
 * is the newest updatedAt (µs) a complete /sessions/list sweep of that scope
 * returned, 0 when the sweep was complete but empty. The last record per key
 * wins; the module keeps the latest value of each key the daemon still wants
 * and writes them first in every rewrite.
 *
 * Tombstones. A terminal session that discovery found leaves the table once
 * `[poll] retain` has passed since its updatedAt *and* every watermark minus
 * the overlap window has passed its updatedAt (so no future sweep can return
 * it); only then is its `U` record written. Until then its `S` record is the
 * tombstone: id, status and updatedAt, ~60 bytes, no separate structure. A
 * session re-returned by a sweep is therefore always either in the table
 * (and compared by updatedAt) or too old to be returned at all.
 *
 * Versions. Each version only added record types and flags, so a build reads
 * every version up to its own (STATE_FORMAT_VERSION) and rewrites an older
 * file with its own header right after loading it. A newer version than the
 * build knows is unreadable (see below).
 *
 * A crash while appending leaves at most a torn last line, which the loader
 * drops. Anything else that does not parse (a bad record before the last
 * line, an unknown version, a missing header, an unknown record type or
 * flag) makes the file corrupt: it is renamed to `state.corrupt-<UTC time>`,
 * never overwritten or deleted, and the daemon starts with empty state.
 *
 * On the loop thread the module only formats records into memory; writes,
 * fdatasync and compaction (a rewrite into `state.tmp`, fsync, rename over
 * `state`, fsync of the folder) run in libuv's threadpool, one job at a time.
 * Write failures (full disk, read-only folder) are logged rate-limited and
 * counted; the module then stops appending, keeps no backlog (the daemon's
 * table is the truth) and retries with a full rewrite, with backoff, until a
 * write succeeds again. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct uv_loop_s uv_loop_t;

#define STATE_FORMAT_VERSION 2
#define STATE_ID_MAX 64       /* bytes of [A-Za-z0-9_-] */
#define STATE_STATUS_MAX 1024 /* raw status bytes */
#define STATE_LINE_MAX 4096   /* longest line the loader accepts, newline included */

/* Watermark keys kept (one per discovery scope). */
#define STATE_WATERMARKS_MAX 4096

enum {
        STATE_SESSION_DYNAMIC = 1u << 0, /* `d`: added at run time (not from the config) */
        STATE_SESSION_GONE = 1u << 1,    /* `g`: answered 404 after being seen */
        STATE_SESSION_STALLED = 1u << 2, /* `s`: a stalled event went out since the last change */
};

/* A session's durable fields. On load the strings point into the loader's
 * buffers (NUL-terminated, valid during the callback only); from the
 * compaction iterator they must stay valid until the next call. */
typedef struct StateSession {
        const char *id;
        size_t id_len;
        const char *status; /* raw status as the API spelled it; NULL: never observed */
        size_t status_len;
        int64_t updated_at_us; /* 0: never observed */
        unsigned flags;        /* STATE_SESSION_* */
} StateSession;

typedef struct StateCallbacks {
        /* Load: one call per session record, in file order (the last record
         * for an id wins). Runs inside state_open(). A negative return
         * aborts the load and state_open() returns it. */
        int (*session)(void *userdata, const StateSession *s);
        /* Load: the session was dropped (a later `session` call for the same
         * id adds it back). Runs inside state_open(). */
        int (*removed)(void *userdata, const char *id, size_t len);
        /* Compaction: fills *ret with the live session at or after *cursor
         * (starting at 0), advances *cursor past it and returns 1; returns
         * 0 at the end, or a negative errno to abandon the compaction. Runs
         * on the loop thread, a bounded number of times per loop turn; the
         * table may change between turns (every change made meanwhile also
         * reaches the module through state_put_session/state_remove_session). */
        int (*next)(void *userdata, size_t *cursor, StateSession *ret);
        /* Load: a watermark record (`key` is NUL-terminated, valid during
         * the call). Returns 1 to keep it in later rewrites, 0 to let it
         * fade (no longer of use), or a negative errno to abort the load.
         * Optional: without it, watermarks are dropped. */
        int (*watermark)(void *userdata, const char *key, size_t len, int64_t newest_us);
} StateCallbacks;

typedef struct StateOptions {
        const char *path;             /* the state folder; created (mode 0700) when missing */
        uint64_t sync_interval_ms;    /* fdatasync at most this often; 0: 1000 */
        uint64_t compact_min_bytes;   /* never compact a smaller file; 0: 1 MiB */
        size_t compact_chunk_records; /* records serialized per loop turn; 0: 20000 */
        uint64_t retry_min_ms;        /* first retry after a write failure; 0: 2000 */
        uint64_t retry_max_ms;        /* backoff ceiling; 0: 60000 */
} StateOptions;

typedef struct StateLoadReport {
        uint64_t records;           /* records delivered to the callbacks */
        uint64_t file_bytes;        /* size of the file as found */
        uint64_t torn_bytes;        /* bytes of a torn last line, dropped */
        bool fresh;                 /* no usable file: started with empty state */
        bool corrupt;               /* the file was unreadable */
        const char *corrupt_path;   /* where it was moved; NULL when it was not corrupt or could
                                     * not be moved yet (it is moved before the next rewrite) */
        const char *corrupt_reason; /* e.g. "bad checksum or framing in the record at byte 1234" */
        bool degraded;              /* the file cannot be written now (see state_health) */
        uint64_t duration_us;       /* wall time spent in state_open() */
} StateLoadReport;

typedef struct StateHealth {
        bool degraded; /* writes are failing: the file lags behind memory */
        bool compacting;
        int last_error;              /* -errno of the last failure, 0 when none */
        const char *last_error_what; /* the failed step as a phrase: "write", "fdatasync",
                                      * "rename the temporary copy over", ...; NULL when none */
        uint64_t file_bytes;         /* size of the state file as written so far */
        uint64_t pending_bytes;      /* formatted, not yet handed to a write */
        uint64_t records_appended;   /* records written to the file (not counting rewrites) */
        uint64_t records_dropped;    /* records not written because the file was stale */
        uint64_t write_errors;
        uint64_t compactions;        /* successful rewrites */
        uint64_t last_compaction_us; /* wall time of the last successful rewrite */
        uint64_t last_compaction_records;
        uint64_t longest_chunk_us;      /* longest loop-thread serialization turn so far */
        int64_t last_write_realtime_us; /* CLOCK_REALTIME of the last successful write; 0: never */
        uint64_t write_jobs;            /* disk jobs done (appends, syncs, compaction steps) */
        uint64_t write_us_total;        /* time the threadpool spent on them, summed */
} StateHealth;

typedef struct State State;

/* Creates the folder when missing, loads the state file (blocking: call it
 * before the loop runs) streaming its records to `cb`, truncates a torn tail
 * away and arms the module on `loop`. A corrupt or unreadable file, a
 * read-only folder or a full disk are not errors: they are in *ret_report and
 * logged, and the module starts fresh or degraded. Returns 0, a callback's
 * negative return, -EINVAL or -ENOMEM. `cb` and `userdata` must outlive the
 * State; `ret_report` is optional and its strings live as long as the State. */
int state_open(uv_loop_t *loop, const StateOptions *options, const StateCallbacks *cb, void *userdata,
               State **ret_state, StateLoadReport *ret_report);

/* Records a session's durable fields (on the loop thread, without a syscall).
 * Returns 0, -EINVAL for an invalid id or a status longer than
 * STATE_STATUS_MAX, -ENOMEM. */
int state_put_session(State *s, const StateSession *session);

/* Records that a session is no longer watched. Same returns. */
int state_remove_session(State *s, const char *id, size_t len);

/* Records the watermark of a discovery scope (`key`: a runbook id or "*").
 * Returns 0, -EINVAL for a bad key, -ENOSPC past STATE_WATERMARKS_MAX keys,
 * -ENOMEM. */
int state_put_watermark(State *s, const char *key, size_t len, int64_t newest_us);

/* Starts a rewrite of the file from the `next` iterator (e.g. after the
 * daemon dropped loaded sessions it no longer watches). Returns 0, -EALREADY
 * when one is running, -EOPNOTSUPP without a `next` callback. */
int state_compact(State *s);

/* At a clean stop: waits for a job in flight, then writes everything pending
 * and fsyncs it, blocking (or rewrites the whole file, when it is stale).
 * Returns 0 or the -errno of the failed step (logged). */
int state_flush_sync(State *s);

void state_health(const State *s, StateHealth *ret);

/* Asynchronous teardown: waits for a job in flight, closes the handles and
 * frees `s`, then calls `closed(userdata)` (from a close callback on the
 * loop). Pending records are not written: call state_flush_sync() first.
 * `closed` may be NULL. */
void state_close(State *s, void (*closed)(void *userdata), void *userdata);

/* The record format, exposed for tests and tools. */

/* CRC-32C (Castagnoli), as used by the record lines. */
uint32_t state_crc32c(uint32_t crc, const void *data, size_t len);

typedef enum StateRecordType {
        STATE_RECORD_HEADER,
        STATE_RECORD_SESSION,
        STATE_RECORD_REMOVED,
        STATE_RECORD_WATERMARK,
} StateRecordType;

typedef struct StateRecord {
        StateRecordType type;
        unsigned version;     /* STATE_RECORD_HEADER */
        StateSession session; /* STATE_RECORD_SESSION; only id and id_len for REMOVED and WATERMARK */
        int64_t watermark_us; /* STATE_RECORD_WATERMARK */
        char id[STATE_ID_MAX + 1];
        char status[STATE_STATUS_MAX + 1];
} StateRecord;

/* Formats a complete line (checksum, payload, newline) into buf. Returns its
 * length, -EINVAL for an invalid id or status, -ENOBUFS when `size` is too
 * small (STATE_LINE_MAX always suffices). */
ssize_t state_format_session(char *buf, size_t size, const StateSession *session);
ssize_t state_format_removed(char *buf, size_t size, const char *id, size_t len);
ssize_t state_format_header(char *buf, size_t size);
ssize_t state_format_watermark(char *buf, size_t size, const char *key, size_t len, int64_t newest_us);

/* Parses one line (without its newline): 0 and *ret; -EBADMSG for a checksum
 * mismatch; -EINVAL for a payload that does not parse; -EPROTONOSUPPORT for a
 * header of another version. The strings in ret->session point into *ret. */
int state_parse_line(const char *line, size_t len, StateRecord *ret);

/* Test hook: when set, it is called (from a threadpool thread, or from the
 * loop thread in state_open/state_flush_sync) before each open, write, fsync,
 * fdatasync, rename and ftruncate the module makes on the state folder, with
 * that operation's name; a negative return (an -errno) makes the operation
 * fail with it. Only tests set it. */
void state_set_fault_hook(int (*hook)(const char *op));
