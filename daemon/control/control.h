/* control: the control socket server (NDJSON request/response).
 *
 * Frames request lines, enforces the limits of control-proto.h, parses each
 * line as a JSON object, checks the peer's credentials for mutating
 * commands and calls the command's handler; every request line gets exactly
 * one reply line, in order. The commands themselves are the daemon's. */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

#include <json-c/json_object.h>

typedef struct uv_loop_s uv_loop_t;

typedef struct ControlCommand {
        const char *name;
        bool mutating; /* only for root, the daemon's uid, or the control group */
        /* Runs on the loop thread; returns the reply object (a new reference),
         * built with control_reply_ok()/control_reply_error(), or NULL for
         * out of memory. `request` is borrowed. */
        json_object *(*run)(void *userdata, json_object *request);
} ControlCommand;

typedef struct ControlOptions {
        const char *path; /* bound unless fd >= 0; unlinked at close when bound here */
        int fd;           /* an already listening socket, or -1 */
        mode_t mode;
        const char *group;              /* owning group of the socket, and members may mutate; or NULL */
        const ControlCommand *commands; /* terminated by an entry with name NULL */
        void *userdata;
} ControlOptions;

typedef struct ControlServer ControlServer;

/* Binds (replacing a stale socket file) and listens; errors are logged with
 * the path. On failure *ret is untouched and the half-made server closes
 * itself on the loop (the loop must run for it to be freed). */
int control_new(uv_loop_t *loop, const ControlOptions *o, ControlServer **ret);

/* Stops listening, disconnects every client, removes the socket file; frees
 * itself from close callbacks. */
void control_close(ControlServer *c);

unsigned control_connections(const ControlServer *c);

/* {"ok": true}, to which the handler adds its members. */
json_object *control_reply_ok(void);
/* Parses one request line (without its newline): well-formed UTF-8, one
 * JSON object with no key twice in any object, then blanks at most. Returns
 * 0 with the object in *ret, -EINVAL with a message for the peer in
 * reason (ending in a full stop), or -ENOMEM. Pure: no loop, no logging. */
int control_parse_request(const char *line, size_t n, json_object **ret, char *reason, size_t reason_size);
/* Finds the command a parsed request names in `commands` (terminated by an
 * entry with name NULL), without running it. Returns NULL with the command
 * in *ret_command, or the error reply (a new reference; NULL for out of
 * memory) for a missing or non-string "command" or an unknown name, with
 * *ret_command NULL. Pure. */
json_object *control_request_command(const ControlCommand *commands, json_object *request,
                                     const ControlCommand **ret_command);

/* {"ok": false, "error": code, "message": printf(...)}. */
json_object *control_reply_error(const char *code, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* Whether a peer with these credentials may run mutating commands: uid 0,
 * the daemon's effective uid, or (when `group_gid` is not (gid_t)-1) a
 * primary or supplementary group equal to it. Pure, for tests. */
bool control_peer_allowed(uid_t uid, gid_t gid, const gid_t *groups, size_t n_groups, uid_t self_uid,
                          gid_t group_gid);
