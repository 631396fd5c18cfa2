/* fdio: small blocking helpers on file descriptors, for the threadpool jobs,
 * start-up and the client (never on the loop with a socket that may block). */
#pragma once

#include <stddef.h>

/* Writes all of p[0..n) to fd, going on after EINTR and short writes.
 * Returns 0, the -errno of the failed write, or -EIO if write(2) returned 0. */
int fd_write_all(int fd, const void *p, size_t n);
