/* unixsock: binding the daemon's listening Unix sockets (the event stream
 * and the control socket) the same way. */
#pragma once

#include <stdbool.h>

#include <sys/types.h>
#include <uv.h>

/* Binds `pipe` (initialised, not yet bound) to `path`: a socket file left by
 * a crash is removed first, any other file is refused. Mode and group are
 * set before the caller's listen(), so no peer can connect in between.
 * Errors are logged naming the path. Returns 0 or -errno. */
typedef struct UnixSockId {
        dev_t dev;
        ino_t ino;
} UnixSockId;

int unixsock_bind(uv_pipe_t *pipe, const char *path, mode_t mode, const char *group, UnixSockId *ret_id);

/* Whether `path` is still the socket file bound as `id` (and not one that
 * replaced it since): only then is it removed at close. */
bool unixsock_still_ours(const char *path, const UnixSockId *id);

/* A group name or number. Blocking NSS lookup: only during start-up. */
int unixsock_resolve_group(const char *name, gid_t *ret);
