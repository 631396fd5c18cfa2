#include <stdbool.h>
#include <stddef.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include <sys/socket.h>
#include <sys/un.h>
#include <uv.h>

#include "log.h"
#include "notify.h"

struct Notifier {
        uv_loop_t *loop;
        bool enabled;            /* $NOTIFY_SOCKET is set */
        uint64_t watchdog_usec;  /* 0: no watchdog asked for */
        int fd;                  /* our end: AF_UNIX, SOCK_DGRAM, non-blocking */
        struct sockaddr_un addr; /* $NOTIFY_SOCKET ('@': the abstract namespace) */
        socklen_t addr_len;
        char held[768];   /* a state message waiting for room, "" when none */
        uint64_t dropped; /* STATUS/WATCHDOG messages dropped for lack of room */
        uv_timer_t watchdog;
        uv_timer_t status_timer;
        uv_timer_t retry_timer;
        notify_status_cb status_cb;
        void *userdata;
        char status[512]; /* the last STATUS= sent */
        char forced[512]; /* a status that overrides the summary (e.g. a reload error) */
        uint64_t forced_until_ms;
        uint64_t watchdog_pings;
        unsigned open_handles;
        void (*closed)(void *userdata);
        void *closed_userdata;
};

/* STATUS= is refreshed at most this often. */
#define STATUS_INTERVAL_MS 1000

/* Sends one datagram without blocking: 0, -EAGAIN when the receiver's
 * queue is full, or another -errno. */
static int notify_send(Notifier *n, const char *msg)
{
        ssize_t r;

        if (n->fd < 0)
                return -ENOTCONN;
        r = sendto(n->fd, msg, strlen(msg), MSG_DONTWAIT | MSG_NOSIGNAL, (const struct sockaddr *)&n->addr,
                   n->addr_len);
        if (r < 0)
                return errno == EWOULDBLOCK ? -EAGAIN : -errno;
        return 0;
}

static void on_retry_timer(uv_timer_t *t);

/* A state message (READY, RELOADING, STOPPING) must arrive: when there is no
 * room, it waits, and a later one replaces it (it carries the newer state). */
static void send_state(Notifier *n, const char *msg)
{
        int r = n->held[0] ? -EAGAIN : notify_send(n, msg);

        if (r == -EAGAIN) {
                snprintf(n->held, sizeof(n->held), "%s", msg);
                if (!uv_is_active((uv_handle_t *)&n->retry_timer))
                        uv_timer_start(&n->retry_timer, on_retry_timer, 100, 100);
        } else if (r < 0)
                log_debug_errno(r, "Failed to notify the service manager: %m");
}

/* The retry timer, on the loop thread: the held state message, again. */
static void on_retry_timer(uv_timer_t *t)
{
        Notifier *n = t->data;
        int r = notify_send(n, n->held);

        if (r == -EAGAIN)
                return;
        if (r < 0)
                log_debug_errno(r, "Failed to notify the service manager: %m");
        n->held[0] = '\0';
        uv_timer_stop(&n->retry_timer);
}

static void status_text(Notifier *n, char *buf, size_t size)
{
        if (n->forced[0] && uv_now(n->loop) < n->forced_until_ms) {
                snprintf(buf, size, "%s", n->forced);
                return;
        }
        n->forced[0] = '\0';
        buf[0] = '\0';
        if (n->status_cb)
                n->status_cb(n->userdata, buf, size);
}

/* Sends `head` (may be NULL) and, when it changed or `head` is set, the
 * status line, in one datagram. */
static void send_with_status(Notifier *n, const char *head, bool force_status)
{
        char now[sizeof(n->status)], msg[sizeof(n->status) + 128];
        int r;

        if (!n || !n->enabled)
                return;
        status_text(n, now, sizeof(now));
        /* A status line cannot hold a newline: it would start a new field. */
        for (char *p = now; *p; p++)
                if (*p == '\n')
                        *p = ' ';
        if (!head && !force_status && strcmp(now, n->status) == 0)
                return;
        snprintf(msg, sizeof(msg), "%s%sSTATUS=%s", head ? head : "", head ? "\n" : "", now);
        if (head) {
                send_state(n, msg);
        } else {
                r = notify_send(n, msg);
                if (r == -EAGAIN) {
                        n->dropped++;
                        return; /* not sent: the next refresh tries again */
                }
                if (r < 0)
                        log_debug_errno(r, "Failed to notify the service manager: %m");
        }
        memcpy(n->status, now, sizeof(n->status));
}

/* The watchdog timer, on the loop thread. It only runs when the loop does,
 * which is what makes the ping mean "the loop is healthy". */
static void on_watchdog_timer(uv_timer_t *t)
{
        Notifier *n = t->data;
        int r = notify_send(n, "WATCHDOG=1");

        if (r == -EAGAIN)
                n->dropped++;
        else if (r < 0)
                log_debug_errno(r, "Failed to ping the watchdog: %m");
        else
                n->watchdog_pings++;
}

/* The status refresh timer, on the loop thread. */
static void on_status_timer(uv_timer_t *t)
{
        send_with_status(t->data, NULL, false);
}

int notify_new(uv_loop_t *loop, notify_status_cb status_cb, void *userdata, Notifier **ret)
{
        const char *path = getenv("NOTIFY_SOCKET");
        uint64_t usec = 0;
        Notifier *n = malloc(sizeof(*n));
        int r;

        if (!n)
                return -ENOMEM;
        *n = (Notifier){.loop = loop, .status_cb = status_cb, .userdata = userdata, .fd = -1};
        n->enabled = path && *path;
        if (n->enabled) {
                size_t len = strlen(path);

                /* A path, or a name in the abstract namespace ('@'). */
                if ((path[0] != '/' && path[0] != '@') || len >= sizeof(n->addr.sun_path)) {
                        log_warning("Ignoring $NOTIFY_SOCKET='%s': not a Unix socket path.", path);
                        n->enabled = false;
                } else {
                        n->addr.sun_family = AF_UNIX;
                        memcpy(n->addr.sun_path, path, len);
                        if (path[0] == '@')
                                n->addr.sun_path[0] = '\0';
                        n->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len +
                                                  (path[0] == '@' ? 0 : 1));
                        n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
                        if (n->fd < 0) {
                                log_warning_errno(-errno, "Cannot notify the service manager: %m");
                                n->enabled = false;
                        }
                }
        }
        r = sd_watchdog_enabled(0, &usec);
        if (r < 0)
                log_warning_errno(r, "Ignoring an invalid $WATCHDOG_USEC or $WATCHDOG_PID: %m");
        else if (r > 0)
                n->watchdog_usec = usec;
        uv_timer_init(loop, &n->watchdog);
        uv_timer_init(loop, &n->status_timer);
        uv_timer_init(loop, &n->retry_timer);
        n->watchdog.data = n->status_timer.data = n->retry_timer.data = n;
        /* No timer is a reason for the loop to go on running. */
        uv_unref((uv_handle_t *)&n->watchdog);
        uv_unref((uv_handle_t *)&n->status_timer);
        uv_unref((uv_handle_t *)&n->retry_timer);
        *ret = n;
        return 0;
}

void notify_ready(Notifier *n)
{
        if (!n || !n->enabled)
                return;
        send_with_status(n, "READY=1", true);
        if (n->watchdog_usec > 0 && !uv_is_active((uv_handle_t *)&n->watchdog)) {
                /* Half the interval, as sd_watchdog_enabled(3) advises. */
                uint64_t ms = n->watchdog_usec / 2000;

                if (ms == 0)
                        ms = 1;
                if (notify_send(n, "WATCHDOG=1") == 0)
                        n->watchdog_pings++;
                uv_timer_start(&n->watchdog, on_watchdog_timer, ms, ms);
        }
        if (!uv_is_active((uv_handle_t *)&n->status_timer))
                uv_timer_start(&n->status_timer, on_status_timer, STATUS_INTERVAL_MS, STATUS_INTERVAL_MS);
}

void notify_reloading(Notifier *n)
{
        struct timespec ts;
        char head[96];

        if (!n || !n->enabled)
                return;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        snprintf(head, sizeof(head), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64,
                 (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u);
        send_with_status(n, head, true);
}

void notify_stopping(Notifier *n)
{
        if (!n || !n->enabled)
                return;
        uv_timer_stop(&n->status_timer);
        send_with_status(n, "STOPPING=1", true);
}

void notify_status_override(Notifier *n, const char *text, uint64_t hold_ms)
{
        if (!n)
                return;
        snprintf(n->forced, sizeof(n->forced), "%s", text);
        n->forced_until_ms = uv_now(n->loop) + hold_ms;
        send_with_status(n, NULL, true);
}

void notify_status_refresh(Notifier *n)
{
        if (!n)
                return;
        send_with_status(n, NULL, false);
}

static void on_notify_closed(uv_handle_t *h)
{
        Notifier *n = h->data;

        if (--n->open_handles > 0)
                return;
        if (n->fd >= 0) {
                /* A last word that never found room is given up: the
                 * process is ending, and the manager sees that anyway. */
                close(n->fd);
                n->fd = -1;
        }
        if (n->closed)
                n->closed(n->closed_userdata);
        free(n);
}

void notify_close(Notifier *n, void (*closed)(void *userdata), void *userdata)
{
        if (!n) {
                if (closed)
                        closed(userdata);
                return;
        }
        n->closed = closed;
        n->closed_userdata = userdata;
        n->open_handles = 3;
        uv_close((uv_handle_t *)&n->watchdog, on_notify_closed);
        uv_close((uv_handle_t *)&n->status_timer, on_notify_closed);
        uv_close((uv_handle_t *)&n->retry_timer, on_notify_closed);
}
