/* decode: Airplane API response bodies → session snapshots.
 *
 * Pure: json-c only, no I/O, no clock, no logging. Errors are returned as
 * -errno together with a static, human-readable reason that names the
 * offending field, so the caller can log one precise line. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json_object.h>

#include "status.h"

/* Nesting bound for the JSON tokenizer. A session is at most five or six
 * levels deep (params → constraints → options → …); anything past this is
 * hostile or broken, and the bound keeps the parser's stack small. It counts
 * containers, the top-level object included. */
#define DECODE_MAX_DEPTH 32

/* json-c's tokenizer takes an int length. */
#define DECODE_MAX_BODY ((size_t)INT32_MAX)

/* One session as the API described it. The string views point into `root`
 * and live exactly as long as the snapshot; they are NUL-terminated and never
 * contain an embedded NUL (such bodies are rejected). Optional fields that are
 * absent or null are NULL. */
typedef struct SessionSnapshot {
        json_object *root; /* owned reference: the session object as received */

        const char *id;             /* required, non-empty */
        const char *status_raw;     /* required: the status string exactly as sent */
        const char *updated_at_raw; /* required */
        const char *name;
        const char *runbook_id;
        const char *team_id;
        const char *created_by;
        const char *updated_by;
        const char *created_at_raw;

        size_t id_len;
        size_t status_raw_len;

        SessionStatus status;  /* SESSION_STATUS_UNKNOWN for any string outside the enum */
        int64_t updated_at_us; /* µs since the Unix epoch */
        int64_t created_at_us; /* µs since the Unix epoch; 0 when createdAt is absent or unparsable */
        bool is_private;       /* false when absent */
} SessionSnapshot;

#define SESSION_SNAPSHOT_NULL ((SessionSnapshot){})

/* Parses a GetSessionResponse body (`buf` need not be NUL-terminated).
 *
 * Returns 0 and fills `ret` (release it with session_snapshot_done()), or:
 *   -EBADMSG  not JSON: empty, truncated, invalid, trailing garbage, an
 *             embedded NUL byte, nesting deeper than DECODE_MAX_DEPTH,
 *             invalid UTF-8, larger than DECODE_MAX_BODY;
 *   -EPROTO   JSON, but not a session: the top level is not an object, a
 *             required field (id, status, updatedAt) is missing, a field has
 *             the wrong type, or updatedAt is not a timestamp;
 *   -ENOMEM.
 * On error `ret` is left as SESSION_SNAPSHOT_NULL and `*ret_reason` (if
 * ret_reason is not NULL) is a static string such as
 * "field 'status' is not a string". */
int decode_session(const char *buf, size_t len, SessionSnapshot *ret, const char **ret_reason);

/* The same checks on an already parsed object (an element of a list page).
 * Takes its own reference on `o` on success; the caller keeps its own. */
int decode_session_object(json_object *o, SessionSnapshot *ret, const char **ret_reason);

/* Drops the snapshot's reference; every view in it becomes invalid. Safe to
 * call on SESSION_SNAPSHOT_NULL and twice. */
void session_snapshot_done(SessionSnapshot *s);

/* Parses a /sessions/list page: {"sessions":[...]}. Returns the number of
 * elements (≥ 0), `*ret_root` (owned: json_object_put() it when done) and
 * `*ret_array` (borrowed from the root; NULL when the page has no "sessions"
 * or it is null, which the API's Go encoder sends for an empty page). Each
 * element is then checked with decode_session_object(), so one bad element
 * need not spoil the page. Errors as for decode_session(). */
int decode_session_list(const char *buf, size_t len, json_object **ret_root, json_object **ret_array,
                        const char **ret_reason);

/* The cheap path for the steady state: only the top-level "id", "status" and
 * "updatedAt" strings, by a small scanner over the raw bytes that allocates
 * nothing. The scanner still checks the whole body's JSON grammar, UTF-8 and
 * nesting, so nested "status" keys in params or paramValues, keys spelled
 * inside string values, and truncated bodies never fool it. It does not check
 * the types of the other fields: success says what those three values are,
 * not that decode_session() would accept the body. The views point into
 * `buf`. */
typedef struct SessionQuick {
        const char *id; /* not NUL-terminated: use the lengths */
        size_t id_len;
        const char *status_raw;
        size_t status_raw_len;
        const char *updated_at_raw;
        size_t updated_at_raw_len;
        SessionStatus status;
        int64_t updated_at_us;
} SessionQuick;

/* Returns 0, or -EINVAL for anything it does not handle with certainty: a
 * missing or duplicated key, a top-level key written with escapes, one of
 * the three values not a string, holding an escape sequence or a byte
 * outside printable ASCII, an empty id, any grammar or UTF-8 error, nesting
 * past DECODE_MAX_DEPTH, an unparsable updatedAt. On error the caller falls back
 * to decode_session(), which is the authority (and gives the reason). */
int decode_session_quick(const char *buf, size_t len, SessionQuick *ret);

/* Lenient timestamp parser: "2022-01-11 22:32:45.601486+00" (Airplane's own
 * form) and RFC 3339 ("2022-01-11T22:32:45.601486Z"). Accepts 'T', 't' or a
 * space between date and time; 0–9 fractional digits (truncated to µs); a
 * zone of 'Z', 'z', ±HH, ±HHMM or ±HH:MM. A zone is required. Returns 0, or
 * -EINVAL for anything else, including out-of-range fields. Pure arithmetic:
 * independent of TZ and locale. */
int decode_timestamp(const char *s, int64_t *ret_usec);

/* The same on a string that is not NUL-terminated. */
int decode_timestamp_n(const char *s, size_t len, int64_t *ret_usec);

#define TIMESTAMP_RFC3339_MAX 32

/* Formats as "2026-11-29T10:32:35.123456Z" (always UTC, always six
 * fractional digits). Returns the length written (27), or -ERANGE for a
 * time outside the years 0000–9999. */
int format_timestamp_rfc3339(int64_t usec, char buf[static TIMESTAMP_RFC3339_MAX]);
