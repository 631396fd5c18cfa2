#include <errno.h>
#include <grp.h>
#include <stdlib.h>
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

int unixsock_bind(uv_pipe_t *pipe, const char *path, mode_t mode, const char *group)
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
        return 0;
}
