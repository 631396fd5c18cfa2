/* http-events: GET /api/v1/events, the server-sent event stream.
 *
 * The stream has a ring of its own (the SSE blocks, already framed), so
 * that a client is nothing but a position in it: an event is framed once
 * whatever the number of clients, and a client that does not read holds no
 * memory beyond its lag, counted against [http] client-buffer. A client
 * resumes by Last-Event-ID (or ?since=) while the ring still holds what
 * came after it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "daemon-http.h"

struct WebStream {
        DaemonWeb *web;
        HttpStream *st;
        WebStream *prev, *next;
        long next_seq; /* the next event to send */
        size_t off;    /* bytes of it already sent */
        size_t lag;    /* bytes of events pushed and not yet sent */
        char hello[128];
        size_t hello_len, hello_off;
        bool heartbeat; /* a heartbeat is owed */
        bool cut;
};

static void stream_cut(WebStream *ws)
{
        if (ws->cut)
                return;
        ws->cut = true;
        ws->web->overflows++;
        log_info("Cut off an HTTP event stream client that fell %zu bytes behind ([http] client-buffer).",
                 ws->lag);
        http_stream_cut(ws->st);
}

/* Takes one event into the ring and wakes the clients. */
void daemon_web_emit(Daemon *d, const Event *e)
{
        DaemonWeb *w = d->web;
        long seq;
        StreamChunk *chunk;
        char head[160];
        int n, r;

        if (!w || e->kind == EVENT_SNAPSHOT)
                return;
        if (e->kind == EVENT_TRANSITION) {
                SessionIndex i = sessions_find(d->table, e->session_id, strlen(e->session_id));
                SessionView *v = i == SESSION_INDEX_NONE ? NULL : web_view_of(w, i, true);

                if (v) {
                        v->changed_us = e->updated_at_us;
                        v->previous =
                            e->previous_status_raw
                                ? (uint8_t)(session_status_from_string(e->previous_status_raw,
                                                                       strlen(e->previous_status_raw)) +
                                            1)
                                : 0;
                }
                if (i != SESSION_INDEX_NONE)
                        daemon_web_learn_name(d, i, e->name);
        }

        seq = w->ring.last + 1;
        n = snprintf(head, sizeof(head), "id: %ld\nevent: %s\ndata: ", seq, event_type(e));
        w->buf.len = 0;
        r = event_append_json(e, seq, &w->buf);
        if (r < 0) {
                log_error_errno(r, "Failed to encode event '%s' for the HTTP event stream: %m", e->id);
                return;
        }
        /* One SSE block: the id and type lines, the JSON on one data line,
         * and the blank line that ends it. */
        chunk = stream_chunk_alloc((size_t)n + w->buf.len + 2, seq);
        if (!chunk) {
                log_error("Out of memory queueing event '%s' for the HTTP event stream.", e->id);
                return;
        }
        memcpy(chunk->data, head, (size_t)n);
        memcpy(chunk->data + n, w->buf.data, w->buf.len);
        memcpy(chunk->data + n + w->buf.len, "\n\n", 2);
        (void)stream_ring_push(&w->ring, chunk);
        for (WebStream *ws = w->streams, *next; ws; ws = next) {
                next = ws->next;
                if (ws->cut)
                        continue;
                ws->lag += chunk->len;
                if (ws->lag > w->d->config->http.client_buffer)
                        stream_cut(ws);
                else
                        http_stream_wake(ws->st);
        }
        stream_chunk_unref(chunk);
}

static ssize_t stream_fill(void *userdata, char *buf, size_t max)
{
        WebStream *ws = userdata;
        DaemonWeb *w = ws->web;
        size_t n = 0;

        if (ws->cut)
                return -1;
        if (ws->hello_off < ws->hello_len) {
                size_t k = ws->hello_len - ws->hello_off;

                if (k > max)
                        k = max;
                memcpy(buf, ws->hello + ws->hello_off, k);
                ws->hello_off += k;
                return (ssize_t)k;
        }
        while (n < max && ws->next_seq <= w->ring.last) {
                StreamChunk *c = stream_ring_get(&w->ring, ws->next_seq);
                size_t k;

                if (!c) {
                        /* Fell out of the ring: what it missed is gone. */
                        stream_cut(ws);
                        return n > 0 ? (ssize_t)n : -1;
                }
                k = c->len - ws->off;
                if (k > max - n)
                        k = max - n;
                memcpy(buf + n, c->data + ws->off, k);
                n += k;
                ws->off += k;
                ws->lag = ws->lag > k ? ws->lag - k : 0;
                if (ws->off == c->len) {
                        ws->off = 0;
                        ws->next_seq++;
                }
        }
        if (n == 0 && ws->heartbeat) {
                static const char beat[] = ": heartbeat\n\n";

                if (max < sizeof(beat) - 1)
                        return 0;
                ws->heartbeat = false;
                memcpy(buf, beat, sizeof(beat) - 1);
                return (ssize_t)(sizeof(beat) - 1);
        }
        return (ssize_t)n;
}

static void stream_closed(void *userdata, bool timed_out)
{
        WebStream *ws = userdata;
        DaemonWeb *w = ws->web;

        if (timed_out && !ws->cut)
                w->overflows++; /* it stopped reading before its lag showed */
        if (ws->prev)
                ws->prev->next = ws->next;
        else
                w->streams = ws->next;
        if (ws->next)
                ws->next->prev = ws->prev;
        w->n_streams--;
        free(ws);
}

static const HttpStreamOps stream_ops = {
    .fill = stream_fill,
    .closed = stream_closed,
};

void web_on_heartbeat(uv_timer_t *t)
{
        DaemonWeb *w = t->data;

        for (WebStream *ws = w->streams; ws; ws = ws->next)
                if (!ws->cut) {
                        ws->heartbeat = true;
                        http_stream_wake(ws->st);
                }
}

/* A decimal sequence, or -1 when `s` is not one. */
static long parse_sequence(const char *s)
{
        char *end;
        long v;

        if (!s || *s < '0' || *s > '9')
                return -1;
        errno = 0;
        v = strtol(s, &end, 10);
        if (errno || *end)
                return -1;
        return v;
}

void web_serve_events(DaemonWeb *w, HttpRequest *rq)
{
        const char *last_id = http_request_header(rq, "Last-Event-ID");
        const char *since_arg = http_request_arg(rq, "since");
        long since = -1;
        bool resumed;
        WebStream *ws;
        HttpStream *st;
        int r;

        if (since_arg) {
                since = parse_sequence(since_arg);
                if (since < 0) {
                        (void)http_reply_error(rq, 400, "bad-request",
                                               "'since' must be the sequence (id) of an event.");
                        return;
                }
        } else if (last_id && *last_id) {
                /* A stale or foreign id is no error: the client starts over. */
                since = parse_sequence(last_id);
        }
        if (w->n_streams >= w->d->config->http.max_event_streams) {
                w->refused++;
                (void)http_reply_error(rq, 503, "busy",
                                       "Already serving %u event streams ([http] max-event-streams).",
                                       w->n_streams);
                return;
        }
        ws = calloc(1, sizeof(*ws));
        if (!ws) {
                (void)http_reply_error(rq, 503, "busy", "Out of memory.");
                return;
        }
        ws->web = w;
        resumed = since >= 0 && stream_ring_covers(&w->ring, since);
        ws->next_seq = resumed ? since + 1 : w->ring.last + 1;
        for (long s = ws->next_seq; s <= w->ring.last; s++) {
                StreamChunk *c = stream_ring_get(&w->ring, s);

                ws->lag += c ? c->len : 0;
        }
        ws->hello_len = (size_t)snprintf(ws->hello, sizeof(ws->hello),
                                         "retry: 1000\nevent: sessionwatch.stream.live\n"
                                         "data: {\"sequence\":%ld,\"resumed\":%s}\n\n",
                                         ws->next_seq - 1, resumed ? "true" : "false");
        r = http_reply_stream(rq, "text/event-stream; charset=utf-8", &stream_ops, ws, &st);
        if (r == -ENOMEM) {
                free(ws);
                return;
        }
        ws->st = st;
        ws->next = w->streams;
        if (w->streams)
                w->streams->prev = ws;
        w->streams = ws;
        w->n_streams++;
        w->streams_total++;
        /* On -EIO the connection is already going: its closed() comes. */
        (void)r;
}
