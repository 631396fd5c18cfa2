/* daemon: owns the loop. It loads the config, starts the parts in order
 * (setup.c, watchlist.c, coverage.c, persist.c, the sockets, HTTP), runs
 * the loop until SIGTERM or SIGINT, and tears them down in order; SIGHUP
 * reloads (reload.c). The poll cycle is poll.c's, what answers mean
 * poll-answer.c's, the event fan-out fanout.c's. */
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <time.h>
#include <uv.h>

#include "config.h"
#include "control.h"
#include "daemon.h"
#include "daemon-private.h"
#include "httpmux.h"
#include "notify.h"
#include "sink.h"
#include "state.h"

/* How long a stop waits for requests in flight before cancelling them. */
#define STOP_GRACE_MS 2000

uint64_t daemon_monotonic_usec(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int64_t daemon_realtime_usec(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void on_handle_closed(uv_handle_t *h)
{
        Daemon *d = h->data;
        d->open_handles--;
}

static void on_mux_closed(void *userdata)
{
        Daemon *d = userdata;
        d->mux = NULL;
}

static void on_notify_closed(void *userdata)
{
        Daemon *d = userdata;
        d->open_handles--;
}

static void close_handle(Daemon *d, uv_handle_t *h)
{
        if (!uv_is_closing(h)) {
                d->open_handles++;
                uv_close(h, on_handle_closed);
        }
}

void daemon_finish(Daemon *d)
{
        if (d->finishing)
                return;
        d->finishing = true;
        /* No event can come after this point (what is still in flight is
         * cancelled): let the sinks close what they hold on the loop. */
        daemon_persist_stop(d);
        for (size_t i = 0; i < d->n_sinks; i++) {
                sink_close(d->sinks[i]);
                d->sinks[i] = NULL;
        }
        daemon_orphans_close(d);
        if (d->control) {
                control_close(d->control);
                d->control = NULL;
        }
        daemon_close_http(d);
        d->stream = NULL; /* closed with the sinks */
        close_handle(d, (uv_handle_t *)&d->tick);
        close_handle(d, (uv_handle_t *)&d->stop_timer);
        close_handle(d, (uv_handle_t *)&d->sig_term);
        close_handle(d, (uv_handle_t *)&d->sig_int);
        close_handle(d, (uv_handle_t *)&d->sig_hup);
        close_handle(d, (uv_handle_t *)&d->sig_stall);
        d->open_handles++;
        notify_close(d->notify, on_notify_closed, d);
        d->notify = NULL;
        discovery_close(d->disc);
        /* Cancels whatever is still in flight; their completions run first. */
        if (d->mux)
                httpmux_close(d->mux, on_mux_closed, d);
        /* Blocking is fine now: nothing else is left to do. After a clean
         * stop the file holds everything, so a restart repeats no event. */
        if (d->state) {
                (void)state_flush_sync(d->state);
                state_close(d->state, NULL, NULL);
                d->state = NULL;
        }
}

static void on_stop_timer(uv_timer_t *t)
{
        Daemon *d = t->data;

        log_notice("%u request(s) still in flight after %d ms; cancelling them.", d->sched.in_flight,
                   STOP_GRACE_MS);
        daemon_finish(d);
}

/* SIGTERM or SIGINT, delivered on the loop thread by libuv. */
static void on_stop_signal(uv_signal_t *s, int signum)
{
        Daemon *d = s->data;

        if (d->stopping)
                return;
        log_info("Received %s, stopping.", strsignal(signum));
        notify_stopping(d->notify);
        d->stopping = true;
        uv_timer_stop(&d->tick);
        discovery_close(d->disc);
        if (d->sched.in_flight == 0)
                daemon_finish(d);
        else
                uv_timer_start(&d->stop_timer, on_stop_timer, STOP_GRACE_MS, 0);
}

/* Test hook, SIGUSR2 on the loop thread when SW_TEST_HOOKS=1: blocks the
 * loop for SW_TEST_STALL_MS (default 3000) so tests can see that a stalled
 * loop stops the watchdog pings. */
static void on_stall_signal(uv_signal_t *s, int signum)
{
        const char *ms = getenv("SW_TEST_STALL_MS");
        long v = ms ? strtol(ms, NULL, 10) : 3000;
        struct timespec ts = {.tv_sec = v / 1000, .tv_nsec = (v % 1000) * 1000000L};

        log_warning("Test hook: blocking the loop for %ld ms.", v);
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* SIGHUP, on the loop thread. */
static void on_reload_signal(uv_signal_t *h, int signum)
{
        Daemon *d = h->data;
        char errbuf[4096];
        ReloadReport rep;

        if (d->stopping)
                return;
        log_info("Received %s, reloading '%s'.", strsignal(signum), d->config->path);
        (void)daemon_reload_notified(d, errbuf, sizeof(errbuf), &rep);
}

static void log_discovery_stats(const Daemon *d)
{
        const DiscoveryCounters *c = &d->disc_counters;

        if (!d->disc && c->stalled == 0)
                return;
        log_info("Discovery: %" PRIu64 " sweeps, %" PRIu64 " pages, %" PRIu64
                 " failed list requests, %" PRIu64 " sessions discovered, %" PRIu64
                 " refused past max-sessions; %" PRIu64 " stalled events.",
                 c->sweeps, c->pages, c->sweep_failures, c->discovered, c->refused, c->stalled);
}

static void daemon_free(Daemon *d)
{
        runbooks_done(&d->runbooks);
        daemon_persist_done(d);
        for (size_t i = 0; i < d->n_sinks; i++)
                sink_free(d->sinks[i]);
        free(d->sinks);
        api_done(&d->api);
        scheduler_done(&d->sched);
        sessions_free(d->table);
        free(d->slots);
        discovery_free(d->disc);
        coverage_done(d);
        daemon_free_http(d);
        config_free(d->config);
}

int daemon_run(const DaemonOptions *o)
{
        Daemon d = {
            .poll_errors_rl = LOG_RATELIMIT_INIT(10000, 10),
            .decode_rl = LOG_RATELIMIT_INIT(10000, 5),
            .rate_limit_rl = LOG_RATELIMIT_INIT(10000, 3),
            .refuse_rl = LOG_RATELIMIT_INIT(10000, 3),
            .stale_rl = LOG_RATELIMIT_INIT(10000, 3),
        };
        char errbuf[4096];
        ConfigEnv env;
        int r, ret = 1;

        d.start_usec = daemon_monotonic_usec();

        config_env_from_environ(&env);
        r = config_load(o->config_path, &env, &d.config, errbuf, sizeof(errbuf));
        if (r < 0) {
                fprintf(stderr, "%s\n", errbuf);
                return r == -ENOMEM ? 1 : EX_CONFIG;
        }

        r = uv_loop_init(&d.loop);
        if (r < 0) {
                log_error_errno(r, "Failed to create the event loop: %m");
                config_free(d.config);
                return 1;
        }
        uv_timer_init(&d.loop, &d.tick);
        uv_timer_init(&d.loop, &d.stop_timer);
        uv_signal_init(&d.loop, &d.sig_term);
        uv_signal_init(&d.loop, &d.sig_int);
        uv_signal_init(&d.loop, &d.sig_stall);
        uv_signal_init(&d.loop, &d.sig_hup);
        d.tick.data = d.stop_timer.data = d.sig_term.data = d.sig_int.data = d.sig_stall.data = &d;
        d.sig_hup.data = &d;

        if ((r = notify_new(&d.loop, daemon_service_status, &d, &d.notify)) < 0 ||
            (r = daemon_make_source(&d)) < 0 || (r = daemon_setup_sinks(&d, o)) < 0 ||
            (r = daemon_orphans_scan(&d)) < 0 || (r = daemon_setup_sessions(&d)) < 0 ||
            (r = coverage_setup(&d)) < 0 || (r = daemon_setup_state(&d)) < 0 ||
            (r = daemon_schedule_all(&d)) < 0 || (r = daemon_setup_api(&d)) < 0 ||
            (r = daemon_setup_sockets(&d)) < 0 || (r = daemon_setup_http(&d)) < 0) {
                log_error_errno(r, "Failed to start: %m");
                d.stopping = true;
                daemon_finish(&d);
                uv_run(&d.loop, UV_RUN_DEFAULT);
                goto out;
        }
        uv_signal_start(&d.sig_term, on_stop_signal, SIGTERM);
        uv_signal_start(&d.sig_int, on_stop_signal, SIGINT);
        uv_signal_start(&d.sig_hup, on_reload_signal, SIGHUP);
        if (getenv("SW_TEST_HOOKS") && strcmp(getenv("SW_TEST_HOOKS"), "1") == 0) {
                uv_signal_start(&d.sig_stall, on_stall_signal, SIGUSR2);
                uv_unref((uv_handle_t *)&d.sig_stall);
        }
        /* The writer of events must learn of a vanished reader by EPIPE, not
         * die of SIGPIPE. */
        signal(SIGPIPE, SIG_IGN);

        /* Start-up freed the config's copies of a possibly long watch list:
         * hand those pages back rather than carry them as resident memory. */
        malloc_trim(0);
        log_info("Watching %zu session(s) at %s.", sessions_count(d.table), d.config->api.url);
        daemon_warn_cleartext(d.config->api.url, false);
        if (d.config->http_listen_deprecated_line)
                log_warning("%s:%u: 'listen' in section '[metrics]' is deprecated: write it as 'listen' in "
                            "section '[http]', which serves /metrics and the status page and API.",
                            d.config->path, d.config->http_listen_deprecated_line);
        if (d.disc)
                discovery_start(d.disc, &d.api, &d.sched);
        daemon_dispatch(&d);
        notify_ready(d.notify);

        uv_run(&d.loop, UV_RUN_DEFAULT);
        daemon_log_stats(&d);
        log_discovery_stats(&d);
        ret = 0;
out:
        r = uv_loop_close(&d.loop);
        if (r < 0) {
                log_error_errno(r, "The event loop still had open handles at exit: %m");
                ret = 1;
        }
        daemon_free(&d);
        return ret;
}
