#include <string.h>

#include "status.h"

static const char *const status_names[_SESSION_STATUS_MAX] = {
    [SESSION_STATUS_PENDING] = "Pending",     [SESSION_STATUS_ACTIVE] = "Active",
    [SESSION_STATUS_WAITING] = "Waiting",     [SESSION_STATUS_SUCCEEDED] = "Succeeded",
    [SESSION_STATUS_FAILED] = "Failed",       [SESSION_STATUS_CANCELLING] = "Cancelling",
    [SESSION_STATUS_CANCELLED] = "Cancelled", [SESSION_STATUS_UNKNOWN] = "unknown",
};

static const char *const status_types[_SESSION_STATUS_MAX] = {
    [SESSION_STATUS_PENDING] = "pending",     [SESSION_STATUS_ACTIVE] = "active",
    [SESSION_STATUS_WAITING] = "waiting",     [SESSION_STATUS_SUCCEEDED] = "succeeded",
    [SESSION_STATUS_FAILED] = "failed",       [SESSION_STATUS_CANCELLING] = "cancelling",
    [SESSION_STATUS_CANCELLED] = "cancelled", [SESSION_STATUS_UNKNOWN] = "unknown",
};

const char *session_status_to_string(SessionStatus s)
{
        return s < _SESSION_STATUS_MAX ? status_names[s] : status_names[SESSION_STATUS_UNKNOWN];
}

const char *session_status_to_type(SessionStatus s)
{
        return s < _SESSION_STATUS_MAX ? status_types[s] : status_types[SESSION_STATUS_UNKNOWN];
}

SessionStatus session_status_from_string(const char *s, size_t len)
{
        /* "unknown" is our own word, not the API's: an API that sent it gets it
         * carried verbatim like any other string outside the enum. */
        for (SessionStatus i = 0; i < SESSION_STATUS_UNKNOWN; i++)
                if (strlen(status_names[i]) == len && memcmp(status_names[i], s, len) == 0)
                        return i;
        return SESSION_STATUS_UNKNOWN;
}

bool session_status_step_missed(SessionStatus from, SessionStatus to)
{
        switch (to) {
        case SESSION_STATUS_WAITING:
                return from == SESSION_STATUS_PENDING;
        case SESSION_STATUS_SUCCEEDED:
                return from == SESSION_STATUS_PENDING || from == SESSION_STATUS_WAITING;
        case SESSION_STATUS_CANCELLED:
                return from == SESSION_STATUS_PENDING || from == SESSION_STATUS_ACTIVE ||
                       from == SESSION_STATUS_WAITING;
        default:
                return false;
        }
}
