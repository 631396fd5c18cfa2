/* notify: the service manager protocol (sd_notify) of a Type=notify service.
 *
 * READY=1, RELOADING=1 (with MONOTONIC_USEC=), STOPPING=1, a STATUS= line
 * kept current at most once a second, and WATCHDOG=1 at half of the
 * interval systemd asks for (WATCHDOG_USEC). The watchdog pings come from a
 * timer on the daemon's own loop, so a loop that stalls stops pinging and
 * systemd's watchdog fires, which is the point of it.
 *
 * Messages go out without ever blocking the loop (a service manager that
 * does not read would otherwise stall it once the socket's queue is full):
 * STATUS= and WATCHDOG=1 that cannot be sent at once are dropped (the next
 * refresh or ping carries on); READY, RELOADING and STOPPING are kept and
 * retried every 100 ms until they go.
 *
 * Without $NOTIFY_SOCKET every call does nothing (and costs nothing). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <uv.h>

/* Writes the one-line status summary into buf (NUL-terminated, truncated to
 * size). Runs on the loop thread. */
typedef void (*notify_status_cb)(void *userdata, char *buf, size_t size);

typedef struct Notifier {
        uv_loop_t *loop;
        bool enabled;           /* $NOTIFY_SOCKET is set */
        uint64_t watchdog_usec; /* 0: no watchdog asked for */
        int fd;                   /* our end: AF_UNIX, SOCK_DGRAM, non-blocking */
        struct sockaddr_un addr; /* $NOTIFY_SOCKET ('@': the abstract namespace) */
        socklen_t addr_len;
        char held[768];          /* a state message waiting for room, "" when none */
        uint64_t dropped;        /* STATUS/WATCHDOG messages dropped for lack of room */
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
} Notifier;

/* Reads $NOTIFY_SOCKET and $WATCHDOG_USEC/$WATCHDOG_PID (through libsystemd)
 * and initializes the timers on `loop`. Nothing is sent yet. */
int notify_init(Notifier *n, uv_loop_t *loop, notify_status_cb status_cb, void *userdata);

/* Sends READY=1 with the current status, and starts the watchdog pings and
 * the once-a-second status refresh. Called again after a reload. */
void notify_ready(Notifier *n);

/* RELOADING=1 with MONOTONIC_USEC= (the current CLOCK_MONOTONIC time), as
 * Type=notify-reload asks; notify_ready() ends the reload. */
void notify_reloading(Notifier *n);

/* STOPPING=1; stops the status refresh (watchdog pings go on until close). */
void notify_stopping(Notifier *n);

/* Shows `text` as STATUS= (now) instead of the summary for `hold_ms`. */
void notify_status_override(Notifier *n, const char *text, uint64_t hold_ms);

/* Sends the summary now if it changed (at most once a second otherwise). */
void notify_status_refresh(Notifier *n);

/* Closes the timers; `closed` (may be NULL) runs from the last close
 * callback. */
void notify_close(Notifier *n, void (*closed)(void *userdata), void *userdata);
