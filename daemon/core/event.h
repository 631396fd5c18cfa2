/* event: one observed change of a session, and its encodings.
 *
 * Pure: json-c and libcrypto only, no I/O, no logging. The same Event is
 * encoded once per sink: CloudEvents JSON (webhooks, the socket stream),
 * journal fields (sd_journal_sendv) and one human-readable text line. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <json-c/json_object.h>

#include "decode.h"
#include "status.h"

typedef enum EventKind {
        EVENT_TRANSITION, /* the first observation or a changed status */
        EVENT_GONE,       /* a session that was seen now answers 404 */
        EVENT_STALLED,    /* no change past the configured deadline */
        EVENT_SNAPSHOT,   /* the current state, sent to a socket client that just connected */
        _EVENT_KIND_MAX,
} EventKind;

/* "evt_" + 32 lower-case hex digits + NUL. */
#define EVENT_ID_SIZE 37

/* The `what` of event_make_id() for the two events that are not statuses. */
#define EVENT_WHAT_GONE "gone"
#define EVENT_WHAT_STALLED "stalled"

/* Every pointer is borrowed: an Event lives no longer than the snapshot and
 * strings it was made from (normally one pass through the loop).
 *
 * What the status fields mean per kind:
 *   transition  status_raw = the new status, previous_status_raw = the one
 *               before, or NULL for the first observation;
 *   snapshot    status_raw = the current status, previous_status_raw as for
 *               the transition that led to it (may be NULL);
 *   gone        status_raw = the last known status (previous_status_raw is
 *               not used); in JSON this becomes previousStatus with
 *               "status": null;
 *   stalled     status_raw = the status the session has been sitting in
 *               (previous_status_raw is not used), and stalled_for_us how
 *               long it has sat there. */
typedef struct Event {
        EventKind kind;
        char id[EVENT_ID_SIZE];

        const char *session_id;
        const char *status_raw;
        SessionStatus status;
        const char *previous_status_raw;

        int64_t updated_at_us;      /* the session's updatedAt, µs since the epoch */
        const char *updated_at_raw; /* as the API spelled it; may be NULL */
        int64_t time_us;            /* CLOCK_REALTIME when the event was made */
        int64_t stalled_for_us;     /* stalled only; ≤ 0: unknown, omitted */

        /* The session object as received; NULL when only the id is known
         * (gone, stalled, snapshots restored from state), in which case the
         * JSON carries {"id": session_id} in its place. */
        json_object *session;

        const char *name; /* may be NULL */
        const char *runbook_id;
        const char *team_id;

        bool replayed;      /* the previous status came from durable state, not this run */
        bool skipped;       /* a status in between was missed (session_status_step_missed()) */
        const char *source; /* "sessionwatchd://<hostname>" */
} Event;

/* Fills ret with "evt_" + the first 128 bits of SHA-256 over a length-prefixed
 * encoding of (session_id, what, updated_at_us), so that equal inputs give
 * equal ids across restarts and hosts and no two different inputs share an
 * encoding. `what` is the new status as sent, or EVENT_WHAT_GONE /
 * EVENT_WHAT_STALLED. Returns 0 or -ENOMEM/-EIO (libcrypto failure). */
int event_make_id(char ret[static EVENT_ID_SIZE], const char *session_id, const char *what,
                  int64_t updated_at_us);

/* Convenience constructors. Each fills every field, computes the id and
 * stamps time_us with CLOCK_REALTIME; the caller may adjust fields after
 * (replayed, name, …) but must recompute the id if it changes the inputs.
 * Return 0 or -errno from event_make_id(). */
int event_init_transition(Event *e, const SessionSnapshot *s, const char *previous_status_raw,
                          const char *source);
int event_init_snapshot(Event *e, const SessionSnapshot *s, const char *previous_status_raw,
                        const char *source);
int event_init_gone(Event *e, const char *session_id, const char *last_status_raw, int64_t updated_at_us,
                    const char *source);
int event_init_stalled(Event *e, const char *session_id, const char *status_raw, int64_t updated_at_us,
                       int64_t stalled_for_us, const char *source);

/* "sessionwatch.session.failed", ".unknown" (for a status outside the enum),
 * ".gone", ".stalled", ".snapshot". Static. */
const char *event_type(const Event *e);

/* syslog priority: Failed 3; Waiting, Cancelled 4; Cancelling and unknown 5;
 * others 6; gone 4; stalled 4. A snapshot has its status's priority. */
unsigned event_priority(const Event *e);

/* The journal MESSAGE_ID (32 hex digits, static) per DESIGN §4: per new
 * status, or the gone/stalled ids. */
const char *event_message_id(const Event *e);

/* A growable byte buffer the caller keeps across events so that encoding
 * allocates nothing in the steady state. data is NUL-terminated whenever
 * len > 0 (the NUL is not counted). */
typedef struct EventBuffer {
        char *data;
        size_t len;
        size_t allocated;
} EventBuffer;

#define EVENT_BUFFER_NULL ((EventBuffer){})

void event_buffer_done(EventBuffer *b);

/* Appends `s` (n bytes) as a JSON string literal, quotes included, escaping
 * '"', '\\' and control characters; bytes ≥ 0x80 pass through. For the
 * webhook sink's Slack body. Returns 0 or -ENOMEM. */
int event_buffer_append_json_string(EventBuffer *b, const char *s, size_t n);

/* Appends the CloudEvents 1.0 JSON object (no newline) to b:
 *
 * {"specversion":"1.0","id":…,"source":…,"type":…,"subject":<session id>,
 *  "time":<RFC 3339 µs Z>,"datacontenttype":"application/json",
 *  "data":{"previousStatus":…|null,"status":…,["stalledForSeconds":N,]
 *          ["replayed":true,]["skipped":true,]"session":{…}}[,"sequence":N]}
 *
 * gone:    data = {"previousStatus":<last known>,"status":null,"session":{"id":…}}
 * stalled: data = {"previousStatus":<status>,"status":<status>,
 *                  "stalledForSeconds":<whole seconds, when known>,"session":{"id":…}}
 * "session" is the object as received when the Event has it.
 * "sequence" is added at the top level when sequence ≥ 0 (the socket stream).
 * Returns 0, -ENOMEM, or -ERANGE for a time that cannot be formatted. */
int event_append_json(const Event *e, long sequence, EventBuffer *b);

/* The same into a fresh malloc'd, NUL-terminated string (no newline). */
int event_to_json_string(const Event *e, long sequence, char **ret, size_t *ret_len);

/* Journal fields: MESSAGE, PRIORITY, MESSAGE_ID, SESSION_ID, SESSION_NAME,
 * SESSION_STATUS, SESSION_PREVIOUS_STATUS, RUNBOOK_ID, TEAM_ID,
 * SESSION_UPDATED_AT (RFC 3339), EVENT_ID, SYSLOG_IDENTIFIER=sessionwatchd.
 * Fields whose value is unknown are left out (SESSION_PREVIOUS_STATUS on a
 * first observation, SESSION_NAME without a name, SESSION_STATUS for gone;
 * SESSION_UPDATED_AT falls back to the raw string if the time cannot be
 * written as RFC 3339).
 * The values live in `storage` (reset first, reusable), so the iovecs stay
 * valid until storage is next used or freed. Returns the number of iovecs
 * filled, ready for sd_journal_sendv(iov, n), or -ENOMEM. */
#define EVENT_JOURNAL_FIELDS_MAX 16
int event_journal_fields(const Event *e, struct iovec iov[static EVENT_JOURNAL_FIELDS_MAX],
                         EventBuffer *storage);

/* The journal MESSAGE alone, e.g. "Session 'MySession' (ses…) Active → Failed"
 * or "Session 'MySession' (ses…) is Active" for a first observation. Appended
 * to b. Returns 0 or -ENOMEM. */
int event_append_message(const Event *e, EventBuffer *b);

/* One line, no newline, for a terminal: "10:32:35 ses… 'MySession' Active → Failed"
 * (local time of time_us). First observation: "… 'MySession' → Active (new)".
 * Control characters in API-provided strings are shown as '?', so the line
 * stays one line. Returns the length (like snprintf, excluding the NUL), or
 * -ENOBUFS if it did not fit in n bytes (buf then holds a truncated,
 * NUL-terminated line when n > 0). */
int event_format_text(const Event *e, char *buf, size_t n);
