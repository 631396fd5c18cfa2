/* Session statuses as the Airplane API spells them. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* The order is part of the config's status bit masks (bit = 1 << status) and
 * of the state file format: append only. SESSION_STATUS_UNKNOWN stands for any
 * string outside the enum; the raw string is carried next to it. */
typedef enum SessionStatus {
        SESSION_STATUS_PENDING,
        SESSION_STATUS_ACTIVE,
        SESSION_STATUS_WAITING,
        SESSION_STATUS_SUCCEEDED,
        SESSION_STATUS_FAILED,
        SESSION_STATUS_CANCELLING,
        SESSION_STATUS_CANCELLED,
        SESSION_STATUS_UNKNOWN,
        _SESSION_STATUS_MAX,
} SessionStatus;

#define SESSION_STATUS_MASK_ALL ((1u << _SESSION_STATUS_MAX) - 1)

/* Returns the API's spelling ("Failed"), or "unknown" for SESSION_STATUS_UNKNOWN. */
const char *session_status_to_string(SessionStatus s);

/* Returns the lower-case form used in event types ("failed", "unknown"). */
const char *session_status_to_type(SessionStatus s);

/* Maps an exact, case-sensitive API spelling to the enum; anything else is
 * SESSION_STATUS_UNKNOWN. The string need not be NUL-terminated. */
SessionStatus session_status_from_string(const char *s, size_t len);

/* Whether a session that was `from` and is now `to` must have been in another
 * status in between, which a poll or a list did not see: the answer carries
 * no history, so this follows from the statuses alone. True for
 * Pending -> Waiting (it waits for a human only while it runs: Active),
 * Pending or Waiting -> Succeeded (it succeeds by running to its end:
 * Active), and Pending, Active or Waiting -> Cancelled (cancelling goes
 * through Cancelling). False for every other pair, unknown statuses
 * included. */
bool session_status_step_missed(SessionStatus from, SessionStatus to);

static inline bool session_status_is_terminal(SessionStatus s)
{
        return s == SESSION_STATUS_SUCCEEDED || s == SESSION_STATUS_FAILED || s == SESSION_STATUS_CANCELLED;
}
