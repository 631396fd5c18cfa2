/* daemon-http (private): what daemon-http.c, http-sessions.c and
 * http-events.c share: the DaemonWeb object behind [http] listen. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "daemon-private.h"
#include "event.h"
#include "http-server.h"
#include "stream-ring.h"

struct json_object;

#define SESSIONS_DEFAULT_LIMIT 100
#define SESSIONS_MAX_LIMIT 1000
#define SEARCH_MAX 200
#define SESSION_EVENTS_MAX 50
#define RING_EVENTS 4096
#define RING_BYTES (4u << 20)

typedef struct SessionView {
        char *name;         /* malloc'd, or NULL when not known */
        int64_t changed_us; /* updatedAt of the answer that brought the current status; 0: unknown */
        uint8_t previous;   /* SessionStatus + 1; 0: none known */
} SessionView;

typedef struct WebStream WebStream;

struct DaemonWeb {
        Daemon *d;
        HttpServer *server; /* NULL while not listening */
        char *listen;       /* what it listens on, as written */
        StreamRing ring;
        EventBuffer buf;
        WebStream *streams;
        unsigned n_streams;
        uv_timer_t heartbeat;
        bool heartbeat_open;
        uint64_t streams_total, overflows, refused, scrapes, scrape_errors;
        SessionView *views;
        size_t n_views;
        HttpServerStats closed_stats; /* of servers closed by reloads */
};

/* ---- http-sessions.c: the session views and /api/v1/sessions[/ID] ---- */

/* Session i's view, grown into when `create`; NULL when there is none. */
SessionView *web_view_of(DaemonWeb *w, SessionIndex i, bool create);
void web_views_free(DaemonWeb *w);
void web_serve_sessions(DaemonWeb *w, HttpRequest *rq);
void web_serve_session(DaemonWeb *w, HttpRequest *rq, const char *id);
/* Answers with `o` as one line of JSON and puts it (500 when NULL). */
void web_reply_json(HttpRequest *rq, unsigned status, struct json_object *o);

/* ---- http-events.c: /api/v1/events ---- */

void web_serve_events(DaemonWeb *w, HttpRequest *rq);
/* The heartbeat timer: every stream owes its client a heartbeat. */
void web_on_heartbeat(uv_timer_t *t);
