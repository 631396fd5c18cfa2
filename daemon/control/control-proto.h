/* control-proto: what the daemon and sessionwatchctl agree on about the
 * control socket and the event stream. Header only, no code: the client
 * includes it without linking anything of the daemon.
 *
 * The control socket speaks NDJSON: the client writes one JSON object per
 * line, {"command": NAME, ...arguments}, and the daemon writes exactly one
 * JSON object per request line, in order: {"ok": true, ...} or
 * {"ok": false, "error": CODE, "message": TEXT}. sessionwatchd(8) (CONTROL SOCKET)
 * documents every command and reply. */
#pragma once

#define CONTROL_SOCKET_NAME "control.sock"
#define EVENTS_SOCKET_NAME "events.sock"
/* Used by the client when $RUNTIME_DIRECTORY is unset: systemd's
 * RuntimeDirectory=sessionwatchd. */
#define CONTROL_DEFAULT_RUNTIME_DIR "/run/sessionwatchd"

/* A request line longer than this gets CONTROL_ERROR_TOO_LONG and the
 * connection is closed, since the rest of the line cannot be told apart from
 * the next request. */
#define CONTROL_LINE_MAX (64 * 1024)
/* Connections past this are accepted and closed at once. */
#define CONTROL_CONNECTIONS_MAX 64
/* Ids in one watch or unwatch request: as many as fit a line, at 64
 * characters each (sessionwatchctl sends longer lists in several). */
#define CONTROL_IDS_MAX 900
/* The default and the largest page of a list reply. */
#define CONTROL_LIST_DEFAULT_LIMIT 1000
#define CONTROL_LIST_MAX_LIMIT 10000

/* Commands. */
#define CONTROL_CMD_STATUS "status"
#define CONTROL_CMD_LIST "list"
#define CONTROL_CMD_WATCH "watch"
#define CONTROL_CMD_UNWATCH "unwatch"
#define CONTROL_CMD_RELOAD "reload"
#define CONTROL_CMD_METRICS "metrics"

/* Error codes, the "error" member of a failed reply. */
#define CONTROL_ERROR_BAD_JSON "bad-json"               /* the line is not a JSON object */
#define CONTROL_ERROR_BAD_REQUEST "bad-request"         /* a member is missing or has the wrong type */
#define CONTROL_ERROR_UNKNOWN_COMMAND "unknown-command" /* "command" names nothing we know */
#define CONTROL_ERROR_TOO_LONG "too-long"               /* the line passed CONTROL_LINE_MAX */
#define CONTROL_ERROR_PERMISSION "permission-denied"    /* a mutating command from a peer not allowed */
#define CONTROL_ERROR_BAD_ID "bad-id"                   /* a session id fails the charset/length rule */
#define CONTROL_ERROR_UNSUPPORTED "unsupported"         /* a valid request this daemon cannot serve */
#define CONTROL_ERROR_FAILED "failed"                   /* the command was tried and failed */

/* The event stream's non-event lines. */
#define STREAM_TYPE_LIVE "sessionwatch.stream.live"
#define STREAM_TYPE_OVERFLOW "sessionwatch.stream.overflow"

/* sessionwatchctl's exit codes. */
#define CTL_EXIT_OK 0
#define CTL_EXIT_ERROR 1        /* the daemon answered with an error */
#define CTL_EXIT_USAGE 2        /* bad command line */
#define CTL_EXIT_UNAVAILABLE 69 /* EX_UNAVAILABLE: no daemon on the socket */
