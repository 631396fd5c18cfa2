#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "listenfds.h"
#include "log.h"

int listenfds_collect(ListenFds *l)
{
        char **names = NULL;
        int n;

        *l = (ListenFds){};
        n = sd_listen_fds_with_names(1, &names);
        if (n < 0)
                return log_error_errno(n, "Failed to read the sockets passed by the service manager: %m");
        for (int k = 0; k < n; k++) {
                int fd = SD_LISTEN_FDS_START + k;

                if ((size_t)k >= LISTENFDS_MAX) {
                        log_warning("Closing passed socket %d: more than %d were passed.", fd, LISTENFDS_MAX);
                        close(fd);
                        free(names ? names[k] : NULL);
                        continue;
                }
                l->fds[l->n] = fd;
                l->names[l->n] = names ? names[k] : NULL;
                l->n++;
        }
        free(names);
        return (int)l->n;
}

int listenfds_take(ListenFds *l, const char *name)
{
        for (size_t k = 0; k < l->n; k++) {
                int fd = l->fds[k];

                if (fd < 0 || !l->names[k] || strcmp(l->names[k], name) != 0)
                        continue;
                l->fds[k] = -1;
                if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0) {
                        log_error("The passed socket named '%s' (fd %d) is not a listening Unix stream "
                                  "socket; ignoring it.",
                                  name, fd);
                        close(fd);
                        return -1;
                }
                return fd;
        }
        return -1;
}

void listenfds_done(ListenFds *l)
{
        for (size_t k = 0; k < l->n; k++) {
                if (l->fds[k] >= 0) {
                        log_warning("Closing passed socket %d named '%s': it is not one the daemon uses "
                                    "(FileDescriptorName=events or control).",
                                    l->fds[k], l->names[k] ? l->names[k] : "");
                        close(l->fds[k]);
                }
                free(l->names[k]);
        }
        *l = (ListenFds){};
}
