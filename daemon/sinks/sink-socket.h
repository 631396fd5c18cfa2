/* sink-socket: the live event stream on a Unix socket (NDJSON).
 *
 * Each client gets, in order: one snapshot line per session whose status is
 * known (type sessionwatch.session.snapshot; data.session is the minimal
 * {"id","status","updatedAt"} object, since the table keeps no bodies), a
 * marker line {"type":"sessionwatch.stream.live","sequence":S,...}, then
 * every event with sequence S+1, S+2, ... A client may first send one line
 * {"since": N}: when the ring of recent events still holds everything after
 * N, the snapshot is skipped and the marker (sequence N) is followed by the
 * events it missed. A client whose queued output passes the client buffer
 * gets a last {"type":"sessionwatch.stream.overflow"} line and is closed. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sink.h"

/* What the stream needs of one session for its snapshot line. */
typedef struct SinkSocketEntry {
        const char *id;
        const char *status_raw;
        int64_t updated_at_us;
} SinkSocketEntry;

/* Fills *ret with the session at or after *cursor (starting at 0), advances
 * *cursor past it and returns 1; returns 0 at the end. Runs on the loop
 * thread, a bounded number of times per loop turn; the strings need to live
 * only until the next call. */
typedef int (*SinkSocketSnapshotNext)(void *userdata, size_t *cursor, SinkSocketEntry *ret);

typedef struct SinkSocketOptions {
        const char *path;     /* the socket file; unlinked at close when bound here */
        int fd;               /* an already listening socket (socket activation), or -1: bind `path` */
        mode_t mode;          /* file mode of the socket, applied before listen() */
        const char *group;    /* owning group name or number, or NULL */
        size_t client_buffer; /* bytes queued per client before it is cut off; 0: 1 MiB */
        size_t ring_events;   /* events kept for {"since"}; 0: 4096 */
        size_t ring_bytes;    /* bytes kept for {"since"}; 0: 4 MiB */
        uint64_t hello_ms;    /* how long a new client may take to send {"since"}; 0: 200 */
        const char *source;   /* the events' "source" */
        SinkSocketSnapshotNext snapshot_next;
        void *userdata;
} SinkSocketOptions;

typedef struct SinkSocketStats {
        unsigned clients;     /* connected now */
        uint64_t connections; /* accepted since start */
        uint64_t overflows;   /* clients cut off for not reading */
        uint64_t refused;     /* connections closed at once past the client limit */
        long last_sequence;   /* of the newest event sent */
} SinkSocketStats;

/* The most clients served at once; more are closed at accept. */
#define SINK_SOCKET_CLIENTS_MAX 1024

/* Creates the listener (binding `path` unless `fd` is given: a stale socket
 * file is replaced, any other file is an error) and returns the sink. Errors
 * are logged with the path. Returns 0 or -errno. */
typedef struct uv_loop_s uv_loop_t;
int sink_socket_new(uv_loop_t *loop, const SinkSocketOptions *o, Sink **ret);

void sink_socket_stats(const Sink *s, SinkSocketStats *ret);

/* The path clients connect to (for a passed socket: what it is bound to). */
const char *sink_socket_path(const Sink *s);
