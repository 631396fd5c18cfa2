/* listenfds: sockets passed by the service manager (socket activation).
 *
 * systemd hands a service its listening sockets as fds 3, 4, ... with
 * $LISTEN_FDS, $LISTEN_PID and $LISTEN_FDNAMES (FileDescriptorName= in the
 * .socket unit). The daemon takes the ones named "events" and "control" for
 * its Unix sockets instead of binding its own; an fd it does not know is
 * closed with a warning, so it cannot leak into anything else. */
#pragma once

#include <stddef.h>

#define LISTENFDS_MAX 16

typedef struct ListenFds {
        int fds[LISTENFDS_MAX];
        char *names[LISTENFDS_MAX];
        size_t n;
} ListenFds;

/* Collects the passed fds (and unsets the variables, so children do not
 * see them). Returns the number of fds, or -errno. */
int listenfds_collect(ListenFds *l);

/* Takes the fd named `name` out of the set: the caller owns it now. Returns
 * -1 when there is none. The fd must be a listening AF_UNIX stream socket,
 * else it is closed, an error is logged and -1 returned. */
int listenfds_take(ListenFds *l, const char *name);

/* Closes (with a warning each) the fds nobody took, and frees the names. */
void listenfds_done(ListenFds *l);
