#include <stddef.h>
#include <sys/un.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <uv.h>

#include <json-c/json.h>

#include "control-proto.h"
#include "decode.h"
#include "log.h"
#include "sink-socket.h"
#include "stream-ring.h"
#include "unixsock.h"

#define DEFAULT_CLIENT_BUFFER ((size_t)1024 * 1024)
#define DEFAULT_RING_EVENTS 4096
#define DEFAULT_RING_BYTES ((size_t)4 * 1024 * 1024)
#define DEFAULT_HELLO_MS 200
/* A catching-up client is fed while less than this is queued for it, so a
 * snapshot or a replay never holds more than this per client. */
#define PUMP_LOW_WATER ((size_t)64 * 1024)
/* Snapshot lines made per loop turn and client, so a big table does not
 * hold up the loop. */
#define PUMP_BUDGET 512
/* An overflowed client has this long to read what is queued and the
 * overflow line before it is closed anyway. */
#define OVERFLOW_GRACE_MS 10000
#define HELLO_MAX 512

static const char overflow_line[] = "{\"type\":\"" STREAM_TYPE_OVERFLOW "\"}\n";

typedef struct SocketSink SocketSink;

typedef enum ClientPhase {
        CLIENT_HELLO,    /* waiting up to hello_ms for {"since": N} */
        CLIENT_SNAPSHOT, /* sending snapshot lines, cursor into the table */
        CLIENT_CATCHUP,  /* sending events next_seq.. from the ring */
        CLIENT_LIVE,     /* each event is sent as it happens */
        CLIENT_DOOMED,   /* overflowed: the last line is queued */
} ClientPhase;

/* The data of each UnixClient of the stream; the client's timer is the hello
 * timeout, the pump's continuation and the overflow grace. */
typedef struct StreamClient {
        SocketSink *server;
        UnixClient *u; /* whose data this is */
        uv_shutdown_t shutdown;
        ClientPhase phase;
        size_t cursor;
        long marker_seq;
        long next_seq;
        size_t hello_len;
        char hello[HELLO_MAX];
} StreamClient;

typedef struct StreamWrite {
        uv_write_t req;
        StreamClient *client;
        StreamChunk *chunk;
} StreamWrite;

struct SocketSink {
        Sink sink;
        uv_loop_t *loop;
        UnixServer *sock; /* the socket and its clients */
        SinkSocketOptions opt;
        char *source;
        StreamRing ring;
        EventBuffer buf;
        SinkSocketStats stats; /* clients: taken from `sock` when asked */
        bool closing;
        bool sock_open; /* `sock` has not called back that it closed */
        LogRateLimit overflow_rl;
};

static void client_pump(StreamClient *c);

static void socket_free_now(SocketSink *s)
{
        event_buffer_done(&s->buf);
        stream_ring_done(&s->ring);
        free(s->source);
        free(s);
}

/* Every client is freed by now. */
static void on_sock_closed(void *userdata)
{
        SocketSink *s = userdata;

        s->sock_open = false;
        s->sock = NULL;
        if (s->closing)
                socket_free_now(s);
}

/* libuv write callback, on the loop: one chunk went out, or the client is
 * gone (or being closed: UV_ECANCELED). */
static void on_client_written(uv_write_t *req, int status)
{
        StreamWrite *w = (StreamWrite *)req;
        StreamClient *c = w->client;

        stream_chunk_unref(w->chunk);
        free(w);
        if (!unix_client_written(c->u, status))
                return;
        if (c->phase == CLIENT_SNAPSHOT || c->phase == CLIENT_CATCHUP)
                client_pump(c);
}

/* Sends one chunk, directly when nothing is queued (the common case for a
 * client that keeps up), else queued behind the rest. Returns 0 or -errno
 * (the client is then closed). */
static int client_send(StreamClient *c, StreamChunk *chunk)
{
        ssize_t done = unix_client_try_write(c->u, chunk->data, chunk->len);
        StreamWrite *w;
        int r;

        if (done < 0)
                return (int)done;
        if ((size_t)done == chunk->len)
                return 0;
        w = malloc(sizeof(*w));
        if (!w) {
                unix_client_close(c->u);
                return -ENOMEM;
        }
        w->client = c;
        w->chunk = stream_chunk_ref(chunk);
        r = unix_client_write(c->u, chunk->data + done, chunk->len - (size_t)done, &w->req,
                              on_client_written);
        if (r < 0) {
                stream_chunk_unref(w->chunk);
                free(w);
                return r;
        }
        return 0;
}

static int client_send_copy(StreamClient *c, const char *data, size_t len)
{
        StreamChunk *chunk = stream_chunk_new(data, len, -1);
        int r;

        if (!chunk) {
                unix_client_close(c->u);
                return -ENOMEM;
        }
        r = client_send(c, chunk);
        stream_chunk_unref(chunk);
        return r;
}

static void on_client_shutdown(uv_shutdown_t *req, int status)
{
        StreamClient *c = req->data;

        if (!unix_client_closing(c->u))
                unix_client_close(c->u);
}

static void on_client_grace_timer(uv_timer_t *t)
{
        unix_client_close(unix_client_of(t->data));
}

/* The client fell behind past its buffer: what is queued stays queued, the
 * overflow line goes last, and the connection ends once it is read (or after
 * a grace period, whichever is first). Its memory stops growing here. */
static void client_overflow(StreamClient *c)
{
        SocketSink *s = c->server;

        s->stats.overflows++;
        log_ratelimited(&s->overflow_rl, uv_now(s->loop), LOG_NOTICE,
                        "An event stream client on '%s' stopped reading; disconnecting it (%" PRIu64
                        " so far).",
                        unix_server_path(s->sock), s->stats.overflows);
        c->phase = CLIENT_DOOMED;
        if (client_send_copy(c, overflow_line, sizeof(overflow_line) - 1) < 0)
                return;
        c->shutdown.data = c;
        if (uv_shutdown(&c->shutdown, unix_client_stream(c->u), on_client_shutdown) < 0) {
                unix_client_close(c->u);
                return;
        }
        uv_timer_start(unix_client_timer(c->u), on_client_grace_timer, OVERFLOW_GRACE_MS, 0);
}

static int snapshot_line(SocketSink *s, const SinkSocketEntry *en, EventBuffer *out)
{
        char updated[TIMESTAMP_RFC3339_MAX];
        json_object *session;
        struct timespec ts;
        Event e = {
            .kind = EVENT_SNAPSHOT,
            .session_id = en->id,
            .status_raw = en->status_raw,
            .status = session_status_from_string(en->status_raw, strlen(en->status_raw)),
            .updated_at_us = en->updated_at_us,
            .source = s->source,
        };
        int r;

        clock_gettime(CLOCK_REALTIME, &ts);
        e.time_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
        r = event_make_id(e.id, en->id, en->status_raw, en->updated_at_us);
        if (r < 0)
                return r;
        session = json_object_new_object();
        if (!session)
                return -ENOMEM;
        json_object_object_add(session, "id", json_object_new_string(en->id));
        json_object_object_add(session, "status", json_object_new_string(en->status_raw));
        if (format_timestamp_rfc3339(en->updated_at_us, updated) >= 0)
                json_object_object_add(session, "updatedAt", json_object_new_string(updated));
        e.session = session;
        r = event_append_json(&e, -1, out);
        json_object_put(session);
        if (r < 0)
                return r;
        /* Two bytes ("") reserve room for the newline and the buffer's NUL;
         * the caller turns them into "\n". */
        return event_buffer_append_json_string(out, "", 0) < 0 ? -ENOMEM : 0;
}

/* The marker between the snapshot (or nothing, on a resume) and the events:
 * every event after it carries sequence S+1, S+2, ... */
static int client_send_marker(StreamClient *c, bool resumed)
{
        char line[160];
        int n = snprintf(line, sizeof(line), "{\"type\":\"%s\",\"sequence\":%ld,\"resumed\":%s}\n",
                         STREAM_TYPE_LIVE, c->marker_seq, resumed ? "true" : "false");

        return client_send_copy(c, line, (size_t)n);
}

/* Makes one batch of snapshot lines and sends it. Returns 1 when more may
 * follow, 0 when the table is done (the last lines sent), or -errno (client
 * closed). */
static int client_snapshot_batch(StreamClient *c)
{
        SocketSink *s = c->server;
        EventBuffer *b = &s->buf;
        SinkSocketEntry en;
        bool end = false;
        int r;

        b->len = 0;
        for (unsigned k = 0; k < PUMP_BUDGET && b->len < PUMP_LOW_WATER; k++) {
                size_t before = b->len;

                if (s->opt.snapshot_next(s->opt.userdata, &c->cursor, &en) <= 0) {
                        end = true;
                        break;
                }
                r = snapshot_line(s, &en, b);
                if (r < 0) {
                        log_error_errno(r, "Failed to make the snapshot line of session '%s': %m", en.id);
                        b->len = before;
                        continue;
                }
                /* snapshot_line() appended "" as a placeholder: make it the newline. */
                b->len -= 2;
                b->data[b->len++] = '\n';
                b->data[b->len] = '\0';
        }
        if (b->len > 0) {
                r = client_send_copy(c, b->data, b->len);
                if (r < 0)
                        return r;
        }
        return end ? 0 : 1;
}

static void on_client_pump_timer(uv_timer_t *t)
{
        client_pump(t->data);
}

/* Feeds a client in the snapshot or catch-up phase while little is queued
 * for it, a bounded amount per loop turn; write completions and a 0 ms timer
 * bring it back for more. */
static void client_pump(StreamClient *c)
{
        SocketSink *s = c->server;
        unsigned budget = 4;

        while (!unix_client_closing(c->u) && unix_client_queued(c->u) < PUMP_LOW_WATER) {
                if (budget-- == 0) {
                        uv_timer_start(unix_client_timer(c->u), on_client_pump_timer, 0, 0);
                        return;
                }
                if (c->phase == CLIENT_SNAPSHOT) {
                        int r = client_snapshot_batch(c);
                        if (r < 0)
                                return;
                        if (r == 0) {
                                if (client_send_marker(c, false) < 0)
                                        return;
                                c->phase = CLIENT_CATCHUP;
                                c->next_seq = c->marker_seq + 1;
                        }
                } else if (c->phase == CLIENT_CATCHUP) {
                        for (unsigned k = 0; k < PUMP_BUDGET && !unix_client_closing(c->u) &&
                                             unix_client_queued(c->u) < PUMP_LOW_WATER;
                             k++) {
                                StreamChunk *chunk;

                                if (c->next_seq > s->ring.last) {
                                        c->phase = CLIENT_LIVE;
                                        return;
                                }
                                chunk = stream_ring_get(&s->ring, c->next_seq);
                                if (!chunk) {
                                        /* The ring moved on while the client
                                         * was being fed: it is too slow. */
                                        client_overflow(c);
                                        return;
                                }
                                if (client_send(c, chunk) < 0)
                                        return;
                                c->next_seq++;
                        }
                } else
                        return;
        }
}

/* Starts the stream proper once the client said what it wants (or not). */
static void client_begin(StreamClient *c, bool have_since, long since)
{
        SocketSink *s = c->server;

        uv_timer_stop(unix_client_timer(c->u));
        if (have_since && stream_ring_covers(&s->ring, since)) {
                c->marker_seq = since;
                if (client_send_marker(c, true) < 0)
                        return;
                c->phase = CLIENT_CATCHUP;
                c->next_seq = since + 1;
        } else {
                c->marker_seq = s->ring.last;
                c->phase = CLIENT_SNAPSHOT;
                c->cursor = 0;
        }
        client_pump(c);
}

static void client_take_hello(StreamClient *c)
{
        json_object *o = json_tokener_parse(c->hello), *v;
        bool have = false;
        long since = 0;

        if (o && json_object_is_type(o, json_type_object) && json_object_object_get_ex(o, "since", &v) &&
            json_object_is_type(v, json_type_int)) {
                have = true;
                since = (long)json_object_get_int64(v);
        }
        json_object_put(o);
        client_begin(c, have, since);
}

static void on_client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
        StreamClient *c = h->data;

        if (c->phase == CLIENT_HELLO)
                *buf = uv_buf_init(c->hello + c->hello_len, (unsigned)(HELLO_MAX - 1 - c->hello_len));
        else {
                /* After the first line the client has nothing to say; what
                 * it sends is read (to notice a hang-up) and dropped. */
                static char sink_buf[4096];
                *buf = uv_buf_init(sink_buf, sizeof(sink_buf));
        }
}

/* libuv read callback, on the loop. */
static void on_client_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf)
{
        StreamClient *c = stream->data;

        if (unix_client_closing(c->u))
                return;
        if (n < 0) {
                /* A client that closed its sending side may still read:
                 * only a real error ends the connection. */
                uv_read_stop(stream);
                if (n != UV_EOF)
                        unix_client_close(c->u);
                else if (c->phase == CLIENT_HELLO) {
                        c->hello[c->hello_len] = '\0';
                        client_take_hello(c);
                }
                return;
        }
        if (c->phase != CLIENT_HELLO || n == 0)
                return;
        c->hello_len += (size_t)n;
        c->hello[c->hello_len] = '\0';
        if (memchr(c->hello, '\n', c->hello_len) || c->hello_len >= HELLO_MAX - 1)
                client_take_hello(c);
}

static void on_client_hello_timer(uv_timer_t *t)
{
        StreamClient *c = t->data;

        c->hello[c->hello_len] = '\0';
        client_take_hello(c);
}

/* A client connected, on the loop: it has until hello_ms to say where the
 * stream starts. */
static void on_stream_connected(void *userdata, UnixClient *u)
{
        SocketSink *s = userdata;
        StreamClient *c = unix_client_data(u);

        c->server = s;
        c->u = u;
        if (unix_server_clients(s->sock) > SINK_SOCKET_CLIENTS_MAX) {
                s->stats.refused++;
                unix_client_close(c->u);
                return;
        }
        s->stats.connections++;
        if (uv_read_start(unix_client_stream(c->u), on_client_alloc, on_client_read) < 0) {
                unix_client_close(c->u);
                return;
        }
        uv_timer_start(unix_client_timer(c->u), on_client_hello_timer, s->opt.hello_ms, 0);
}

/* Runs on the loop for every event: one encoding, shared by every client. */
static void socket_emit(Sink *sink, const Event *e)
{
        SocketSink *s = (SocketSink *)sink;
        long seq = s->ring.last + 1;
        StreamChunk *chunk;
        int r;

        if (s->closing)
                return;
        s->buf.len = 0;
        r = event_append_json(e, seq, &s->buf);
        if (r >= 0)
                r = event_buffer_append_json_string(&s->buf, "", 0);
        if (r < 0) {
                log_error_errno(r, "Failed to encode event '%s' for the stream: %m", e->id);
                return;
        }
        s->buf.len -= 2;
        s->buf.data[s->buf.len++] = '\n';
        chunk = stream_chunk_new(s->buf.data, s->buf.len, seq);
        if (!chunk) {
                log_error("Out of memory queueing event '%s' for the stream.", e->id);
                return;
        }
        (void)stream_ring_push(&s->ring, chunk);
        s->stats.last_sequence = seq;

        for (UnixClient *u = unix_client_first(s->sock), *next; u; u = next) {
                StreamClient *c = unix_client_data(u);

                next = unix_client_next(u);
                if (c->phase != CLIENT_LIVE)
                        continue; /* the others pull from the ring */
                if (unix_client_queued(c->u) + chunk->len > s->opt.client_buffer)
                        client_overflow(c);
                else
                        (void)client_send(c, chunk);
        }
        stream_chunk_unref(chunk);
}

/* Stops listening, removes the socket file and disconnects every client;
 * the sink frees itself once every handle is closed. */
static void socket_close(Sink *sink)
{
        SocketSink *s = (SocketSink *)sink;

        s->closing = true;
        unix_server_close(s->sock);
}

static void socket_free(Sink *sink)
{
        /* Always closed through socket_close(), which frees. */
}

static const SinkOps socket_ops = {
    .name = "socket",
    .emit = socket_emit,
    .close = socket_close,
    .free = socket_free,
};

int sink_socket_new(uv_loop_t *loop, const SinkSocketOptions *o, Sink **ret)
{
        SocketSink *s = calloc(1, sizeof(*s));
        struct timespec ts;
        char *name; /* the path in messages: the configured one, or the passed socket's */
        int r;

        if (!s)
                return -ENOMEM;
        s->sink = (Sink){.ops = &socket_ops, .status_mask = SESSION_STATUS_MASK_ALL};
        s->loop = loop;
        s->opt = *o;
        s->opt.group = NULL;
        if (!s->opt.client_buffer)
                s->opt.client_buffer = DEFAULT_CLIENT_BUFFER;
        if (!s->opt.ring_events)
                s->opt.ring_events = DEFAULT_RING_EVENTS;
        if (!s->opt.ring_bytes)
                s->opt.ring_bytes = DEFAULT_RING_BYTES;
        if (!s->opt.hello_ms)
                s->opt.hello_ms = DEFAULT_HELLO_MS;
        s->overflow_rl = (LogRateLimit)LOG_RATELIMIT_INIT(10000, 3);
        s->source = strdup(o->source ? o->source : "sessionwatchd://localhost");
        name = strdup(o->path ? o->path : "(passed socket)");
        if (o->fd >= 0 && name) {
                /* A passed socket is named by what it is bound to. */
                struct sockaddr_un sa;
                socklen_t sl = sizeof(sa);

                if (getsockname(o->fd, (struct sockaddr *)&sa, &sl) == 0 && sa.sun_family == AF_UNIX &&
                    sl > offsetof(struct sockaddr_un, sun_path) && sa.sun_path[0] != '\0') {
                        char *bound = strndup(sa.sun_path, sl - offsetof(struct sockaddr_un, sun_path));

                        if (bound) {
                                free(name);
                                name = bound;
                        }
                }
        }
        /* The caller's strings (the config) may be replaced by a reload. */
        s->opt.path = NULL; /* the server's copy of `name` */
        s->opt.source = NULL;
        /* Sequences of a run start at its start time in µs, so they keep
         * growing across restarts and a {"since"} from an earlier run is
         * never mistaken for one of this run. */
        clock_gettime(CLOCK_REALTIME, &ts);
        r = stream_ring_init(&s->ring, s->opt.ring_events, s->opt.ring_bytes,
                             (long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
        if (!s->source || !name || r < 0) {
                stream_ring_done(&s->ring);
                free(s->source);
                free(name);
                free(s);
                return -ENOMEM;
        }
        s->stats.last_sequence = s->ring.last;

        s->sock_open = true;
        r = unix_server_new(loop,
                            &(UnixServerOptions){
                                .path = name,
                                .fd = o->fd,
                                .mode = o->mode,
                                .group = o->group,
                                .backlog = 128,
                                .client_size = sizeof(StreamClient),
                                .client_timer = true,
                                .out_of_memory = "Out of memory accepting an event stream client.",
                                .connected = on_stream_connected,
                                .closed = on_sock_closed,
                                .userdata = s,
                            },
                            &s->sock);
        free(name);
        if (r < 0) {
                /* The UnixServer closes itself; the sink is freed once it
                 * says so (or now, if it already has). */
                s->closing = true;
                if (!s->sock_open)
                        socket_free_now(s);
                return r;
        }
        *ret = &s->sink;
        return 0;
}

void sink_socket_stats(const Sink *sink, SinkSocketStats *ret)
{
        const SocketSink *s = (const SocketSink *)sink;

        *ret = s->stats;
        ret->clients = s->sock ? unix_server_clients(s->sock) : 0;
}

const char *sink_socket_path(const Sink *sink)
{
        return unix_server_path(((const SocketSink *)sink)->sock);
}
