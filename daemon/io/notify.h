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

#include <stddef.h>
#include <stdint.h>

typedef struct uv_loop_s uv_loop_t;

/* Writes the one-line status summary into buf (NUL-terminated, truncated to
 * size). Runs on the loop thread. */
typedef void (*notify_status_cb)(void *userdata, char *buf, size_t size);

typedef struct Notifier Notifier;

/* Reads $NOTIFY_SOCKET and $WATCHDOG_USEC/$WATCHDOG_PID (through libsystemd)
 * and makes the timers on `loop`. Nothing is sent yet. Returns 0 or -ENOMEM.
 * Every function below takes NULL (the daemon without a notifier) and then
 * does nothing. */
int notify_new(uv_loop_t *loop, notify_status_cb status_cb, void *userdata, Notifier **ret);

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

/* Closes the timers and frees the notifier; `closed` (may be NULL) runs
 * from the last close callback (at once for NULL). */
void notify_close(Notifier *n, void (*closed)(void *userdata), void *userdata);
