#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "log.h"
#include "notify.h"

/* STATUS= is refreshed at most this often. */
#define STATUS_INTERVAL_MS 1000

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

        if (!n->enabled)
                return;
        status_text(n, now, sizeof(now));
        /* A status line cannot hold a newline: it would start a new field. */
        for (char *p = now; *p; p++)
                if (*p == '\n')
                        *p = ' ';
        if (!head && !force_status && strcmp(now, n->status) == 0)
                return;
        snprintf(msg, sizeof(msg), "%s%sSTATUS=%s", head ? head : "", head ? "\n" : "", now);
        r = sd_notify(0, msg);
        if (r < 0)
                log_debug_errno(r, "Failed to notify the service manager: %m");
        memcpy(n->status, now, sizeof(n->status));
}

/* The watchdog timer, on the loop thread. It only runs when the loop does,
 * which is what makes the ping mean "the loop is healthy". */
static void on_watchdog_timer(uv_timer_t *t)
{
        Notifier *n = t->data;
        int r = sd_notify(0, "WATCHDOG=1");

        if (r < 0)
                log_debug_errno(r, "Failed to ping the watchdog: %m");
        n->watchdog_pings++;
}

/* The status refresh timer, on the loop thread. */
static void on_status_timer(uv_timer_t *t)
{
        send_with_status(t->data, NULL, false);
}

int notify_init(Notifier *n, uv_loop_t *loop, notify_status_cb status_cb, void *userdata)
{
        const char *socket = getenv("NOTIFY_SOCKET");
        uint64_t usec = 0;
        int r;

        *n = (Notifier){.loop = loop, .status_cb = status_cb, .userdata = userdata};
        n->enabled = socket && *socket;
        r = sd_watchdog_enabled(0, &usec);
        if (r < 0)
                log_warning_errno(r, "Ignoring an invalid $WATCHDOG_USEC or $WATCHDOG_PID: %m");
        else if (r > 0)
                n->watchdog_usec = usec;
        uv_timer_init(loop, &n->watchdog);
        uv_timer_init(loop, &n->status_timer);
        n->watchdog.data = n->status_timer.data = n;
        /* Neither timer is a reason for the loop to go on running. */
        uv_unref((uv_handle_t *)&n->watchdog);
        uv_unref((uv_handle_t *)&n->status_timer);
        return 0;
}

void notify_ready(Notifier *n)
{
        if (!n->enabled)
                return;
        send_with_status(n, "READY=1", true);
        if (n->watchdog_usec > 0 && !uv_is_active((uv_handle_t *)&n->watchdog)) {
                /* Half the interval, as sd_watchdog_enabled(3) advises. */
                uint64_t ms = n->watchdog_usec / 2000;

                if (ms == 0)
                        ms = 1;
                (void)sd_notify(0, "WATCHDOG=1");
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

        if (!n->enabled)
                return;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        snprintf(head, sizeof(head), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64,
                 (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u);
        send_with_status(n, head, true);
}

void notify_stopping(Notifier *n)
{
        if (!n->enabled)
                return;
        uv_timer_stop(&n->status_timer);
        send_with_status(n, "STOPPING=1", true);
}

void notify_status_override(Notifier *n, const char *text, uint64_t hold_ms)
{
        snprintf(n->forced, sizeof(n->forced), "%s", text);
        n->forced_until_ms = uv_now(n->loop) + hold_ms;
        send_with_status(n, NULL, true);
}

void notify_status_refresh(Notifier *n)
{
        send_with_status(n, NULL, false);
}

static void on_notify_closed(uv_handle_t *h)
{
        Notifier *n = h->data;

        if (--n->open_handles == 0 && n->closed)
                n->closed(n->closed_userdata);
}

void notify_close(Notifier *n, void (*closed)(void *userdata), void *userdata)
{
        n->closed = closed;
        n->closed_userdata = userdata;
        n->open_handles = 2;
        uv_close((uv_handle_t *)&n->watchdog, on_notify_closed);
        uv_close((uv_handle_t *)&n->status_timer, on_notify_closed);
}
