#include <stdbool.h>
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "unixsock.h"

int unixsock_resolve_group(const char *name, gid_t *ret)
{
        struct group *g;
        char *end;
        unsigned long v;

        errno = 0;
        v = strtoul(name, &end, 10);
        if (*name && !*end && errno == 0) {
                *ret = (gid_t)v;
                return 0;
        }
        errno = 0;
        g = getgrnam(name);
        if (!g)
                return errno > 0 ? -errno : -ESRCH;
        *ret = g->gr_gid;
        return 0;
}

/* Whether a process listens on the socket file at `path`: a connection
 * attempt (non-blocking) is answered or queued. */
static bool socket_in_use(const char *path)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        bool used;

        if (fd < 0)
                return false;
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        used = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 || errno == EAGAIN || errno == EINPROGRESS;
        close(fd);
        return used;
}

bool unixsock_still_ours(const char *path, const UnixSockId *id)
{
        struct stat st;

        return lstat(path, &st) == 0 && st.st_dev == id->dev && st.st_ino == id->ino;
}

int unixsock_bind(uv_pipe_t *pipe, const char *path, mode_t mode, const char *group, UnixSockId *ret_id)
{
        const size_t max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;
        struct stat st;
        int r;

        if (strlen(path) > max) {
                log_error("The socket path '%s' is too long (at most %zu bytes).", path, max);
                return -ENAMETOOLONG;
        }
        if (lstat(path, &st) == 0) {
                if (!S_ISSOCK(st.st_mode)) {
                        log_error("'%s' exists and is not a socket; refusing to replace it.", path);
                        return -EEXIST;
                }
                /* Only a socket nobody listens on is stale: another running
                 * daemon's must not be taken over. */
                if (socket_in_use(path)) {
                        log_error("'%s' is in use by a running process (another sessionwatchd?).", path);
                        return -EADDRINUSE;
                }
                if (unlink(path) < 0)
                        return log_error_errno(errno, "Failed to remove the stale socket '%s': %m", path);
        }
        r = uv_pipe_bind(pipe, path);
        if (r < 0)
                return log_error_errno(r, "Failed to bind '%s': %m", path);
        if (chmod(path, mode) < 0) {
                r = log_error_errno(errno, "Failed to set the mode of '%s': %m", path);
                (void)unlink(path);
                return r;
        }
        if (group) {
                gid_t gid;

                r = unixsock_resolve_group(group, &gid);
                if (r < 0)
                        log_error_errno(r, "Unknown group '%s' for '%s': %m", group, path);
                else if (chown(path, (uid_t)-1, gid) < 0)
                        r = log_error_errno(errno, "Failed to give '%s' to group '%s': %m", path, group);
                if (r < 0) {
                        (void)unlink(path);
                        return r;
                }
        }
        if (lstat(path, &st) < 0) {
                r = log_error_errno(errno, "Failed to look at '%s' after binding it: %m", path);
                (void)unlink(path);
                return r;
        }
        *ret_id = (UnixSockId){.dev = st.st_dev, .ino = st.st_ino};
        return 0;
}
