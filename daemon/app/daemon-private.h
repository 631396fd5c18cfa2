/* daemon-private: the Daemon object, shared by the files that make up the
 * daemon (daemon.c and the parts split from it). Not for other modules. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* What struct Daemon holds by value; everything else it only points to. */
#include "api.h"
#include "discovery.h"
#include "log.h"
#include "metrics.h"
#include "runbooks.h"
#include "scheduler.h"
#include "sessions.h"

typedef struct Config Config;
typedef struct ConfigApi ConfigApi;
typedef struct DaemonOptions DaemonOptions;
typedef struct Event Event;
typedef struct Sink Sink;
typedef struct State State;
typedef struct ControlCommand ControlCommand;
typedef struct ControlServer ControlServer;
typedef struct DaemonWeb DaemonWeb;
typedef struct Notifier Notifier;

typedef struct Daemon Daemon;

typedef struct PersistQueue {
        SessionIndex *v;
        size_t n, cap;
} PersistQueue;

/* A discovery watermark is written only after the state of the sessions
 * its sweep found: `gen` is the batch of held writes it waits for. */
typedef struct HeldWatermark {
        char key[72];
        int64_t newest_us;
        uint64_t gen;
} HeldWatermark;

/* How far one webhook's outbox must be written before the held state
 * writes may go. */
typedef struct PersistMark {
        Sink *sink;
        uint64_t mark;
} PersistMark;

/* State writes held back until the webhook outboxes hold the events that
 * went before them (persist.c). */
typedef struct Persist {
        PersistQueue wait, next;
        PersistMark *marks;
        size_t n_marks;
        bool armed;
        uint64_t armed_gen;    /* batches armed so far: the one held in `wait` */
        uint64_t released_gen; /* the last batch written */
        /* Discovery watermarks that wait for the sessions they cover. */
        HeldWatermark *held_wm;
        size_t n_held_wm, cap_held_wm;
} Persist;

/* Why a GET went out, for the metrics. A sweep is a list request. */
typedef enum RequestPurpose {
        PURPOSE_SWEEP,
        PURPOSE_POLL,    /* a session no sweep covers, or its first answer */
        PURPOSE_AUDIT,   /* the slow check of a covered session */
        PURPOSE_CONFIRM, /* a second look after a 404 */
        _PURPOSE_MAX,
} RequestPurpose;

/* Per runbook number: the running sessions of that runbook (counted as
 * the coverage bits of each record say) and the scope that sweeps it. */
typedef struct CoverageRunbook {
        int32_t scope; /* index into the discovery scopes, -1: none */
        uint32_t active, waiting;
} CoverageRunbook;

/* One outstanding poll: what the completion needs to find its session. */
typedef struct PollSlot {
        Daemon *daemon;
        SessionIndex session;
        uint32_t next_free;
        bool busy;      /* taken by a poll in flight */
        bool cancelled; /* its session was unwatched meanwhile: the answer is dropped */
        uint8_t purpose; /* RequestPurpose */
        /* CLOCK_MONOTONIC when the request was started (poll duration). */
        uint64_t start_usec;
} PollSlot;

/* Event latency, from a response's completion to its event having been
 * handed to every sink, in power-of-two microsecond buckets: bucket k holds
 * latencies in [2^(k-1), 2^k) µs (bucket 0: under 1 µs). */
#define LATENCY_BUCKETS 40

typedef struct Stats {
        uint64_t polls[_API_OUTCOME_MAX];
        uint64_t transitions;
        uint64_t events;
        uint64_t quick_decodes; /* bodies settled by the cheap scanner alone */
        uint64_t latency[LATENCY_BUCKETS];
} Stats;

struct Daemon {
        uv_loop_t loop;
        Config *config;
        SessionTable *table;
        Scheduler sched;
        HttpMux *mux;
        Api api;
        char source[300];

        Sink **sinks;
        size_t n_sinks;
        /* Orphaned webhook queues (daemon-orphans.c): webhook sinks not in
         * sinks[], each one until its events expired. */
        Sink **orphans;
        size_t n_orphans;

        State *state; /* NULL: no state folder configured */
        Persist persist;
        size_t state_dropped; /* loaded sessions no longer watched */

        /* One per poll in flight, for the most [api] max-connections allows,
         * so a reload can raise it: requests in flight point into the array. */
        PollSlot *slots;
        uint32_t free_slot;

        uv_timer_t tick;
        uv_timer_t stop_timer;
        uv_signal_t sig_term, sig_int;
        uv_signal_t sig_hup;
        Runbooks runbooks; /* the runbook of each session, once known */
        /* The STATUS= counts, gathered a slice of the table per refresh so a
         * big table never holds the loop (see on_notify_status). */
        struct {
                size_t cursor;
                size_t watched, active, waiting, done; /* the pass under way */
                size_t shown[4];                       /* the last complete pass */
                bool complete;
        } status_scan;
        /* Failed transitions per minute over the last hour, for STATUS=:
         * slot m counts minute failed_minute_at[m] (uv_now() / 60000). */
        uint32_t failed_per_minute[60];
        uint64_t failed_minute_at[60];
        uv_signal_t sig_stall; /* test hook: SIGUSR2 blocks the loop (SW_TEST_HOOKS=1 only) */
        unsigned open_handles;
        Notifier *notify;

        bool stopping;
        bool finishing;
        unsigned auth_level; /* consecutive auth hold-offs */
        LogRateLimit poll_errors_rl;
        LogRateLimit decode_rl;
        LogRateLimit rate_limit_rl;
        Stats stats;

        /* Discovery, retain and stalled sessions (see the block further down). */
        Discovery *disc; /* NULL: no [watch] runbook and not all */
        DiscoveryCounters disc_counters;
        uint64_t last_retire_ms;
        LogRateLimit refuse_rl;

        /* The sockets (daemon-sockets block below). */
        Sink *stream;           /* also in sinks[]; NULL without [events] path */
        ControlServer *control; /* NULL without [control] path */
        uint64_t start_usec;

        /* Metrics (daemon-metrics.c). */
        DaemonWeb *web; /* daemon-http.c; NULL without [http] listen */
        MetricsHistogram poll_duration;
        uint64_t transitions_by_status[_SESSION_STATUS_MAX];
        uint64_t rate_limit_pauses; /* 429 answers to polls that started or extended the hold */
        uint64_t requests_by_purpose[_PURPOSE_MAX];
        MetricsHistogram detection_delay; /* event written - the session's updatedAt */
        MetricsHistogram schedule_lag;    /* how late due work starts */
        uint64_t clock_backwards;         /* older answers with another status (see stale_answer()) */
        LogRateLimit stale_rl;

        /* Coverage (coverage.c). */
        CoverageRunbook *cov_rb; /* [runbook number], n_cov_rb entries */
        size_t n_cov_rb;
        size_t all_active, all_waiting; /* every counted session, for the `all` scope */
        int all_scope;                  /* index of the `all` scope, -1: none */
        size_t n_covered;
};

/* ---- coverage.c ---- */

/* Which sessions a sweep covers, and so are not polled one by one; see the
 * top of coverage.c. All of it on the loop thread. */

/* Makes the discovery scopes the config asks for, and the Discovery itself
 * whenever sweeps may be used for coverage. Returns 0 or -errno. */
int coverage_setup(Daemon *d);
void coverage_done(Daemon *d);
/* The Discovery callbacks. */
extern const DiscoveryCallbacks coverage_discovery_callbacks;
/* Session i's status, runbook or gone mark may have changed: recount it,
 * decide whether it is covered, and move its next request accordingly. */
void coverage_update(Daemon *d, SessionIndex i);
/* Session i is about to change runbook or to leave the table: take it out
 * of the counts first. */
void coverage_forget(Daemon *d, SessionIndex i);
/* After an answer about session i: its next request, by its coverage. */
void coverage_reschedule(Daemon *d, SessionIndex i);
/* Re-reads the settings after a reload. */
void coverage_reload(Daemon *d);

/* ---- daemon-orphans.c ---- */

/* Opens the outbox files of the state folder that no [webhook] names as
 * orphaned queues (start-up, blocking like the webhooks' own). Returns 0 or
 * -ENOMEM (a file that does not open is logged and left alone). */
int daemon_orphans_scan(Daemon *d);
/* Turns a webhook sink taken out of sinks[] into an orphaned queue. */
void daemon_orphan_webhook(Daemon *d, Sink *s);
/* Takes the orphaned queue of that name out of the list, or NULL. */
Sink *daemon_orphan_take(Daemon *d, const char *name);
/* Closes them all (shutdown). */
void daemon_orphans_close(Daemon *d);
/* The "orphanedQueues" of the status reply. */
struct json_object *daemon_orphans_status(Daemon *d);
/* Their metric families. */
void daemon_orphans_metrics(Daemon *d, MetricsText *m);

/* ---- daemon.c: the loop, the start and stop order, the signals ---- */

/* Every poll has come back (or the grace period ran out): tear down. */
void daemon_finish(Daemon *d);
uint64_t daemon_monotonic_usec(void);
int64_t daemon_realtime_usec(void);

/* ---- setup.c: the parts made at start-up ---- */

/* The event source, "sessionwatchd://HOST". */
int daemon_make_source(Daemon *d);
/* The journal, --print-events and one sink per [webhook]. */
int daemon_setup_sinks(Daemon *d, const DaemonOptions *o);
/* The HTTP multiplexer, the API client and the poll slots. */
int daemon_setup_api(Daemon *d);
/* The event stream socket (a sink) and the control socket. */
int daemon_setup_sockets(Daemon *d);
/* What the API client takes of [api]; the strings stay the config's. */
ApiOptions daemon_api_options(const ConfigApi *a);
/* Said once at start, and again when a reload brings another URL. */
void daemon_warn_cleartext(const char *url, bool reload);

/* ---- fanout.c: the sinks and the events handed to them ---- */

void daemon_emit(Daemon *d, const Event *e, uint64_t response_done_usec);
/* Appends to sinks[]. Returns 0 or -ENOMEM. */
int daemon_sinks_append(Daemon *d, Sink *s);
/* Takes sinks[k] out (the order of the others kept) and returns it; held
 * state writes stop waiting for it. */
Sink *daemon_sinks_detach(Daemon *d, size_t k);
/* The summary logged at a stop. */
void daemon_log_stats(const Daemon *d);

/* ---- poll.c: the poll cycle ---- */

/* Starts every request that is due and allowed now, then arms the timer for
 * the next; nothing once the daemon is stopping. */
void daemon_dispatch(Daemon *d);
void daemon_schedule_after(Daemon *d, SessionIndex i, uint64_t delay_ms);
/* A request other than a poll (a sweep page) completed. */
void daemon_request_done(Daemon *d);
/* A poll of session i in flight is to be answered into the void. */
void daemon_poll_cancel(Daemon *d, SessionIndex i);
/* Makes the poll slots, for the most [api] max-connections allows. */
int daemon_poll_init(Daemon *d);

/* ---- poll-answer.c: what an answer to a poll means ---- */

/* Takes in the answer to a poll of session i, classified as `o`: emits what
 * changed and plans its next poll. `sent_us` is the wall clock when the
 * request went out, `stale_key` whether it went with a key replaced since. */
void daemon_poll_answer(Daemon *d, SessionIndex i, ApiOutcome o, const HttpResponse *resp, int64_t sent_us,
                        bool stale_key);
/* The API answered 401 (to a poll or a list request): every request is held,
 * 30 s doubling up to 10 min while it goes on, and the first says so once. */
void daemon_auth_rejected(Daemon *d, long status);
/* The API answered a request: a hold for a rejected key is over. */
void daemon_auth_accepted(Daemon *d);

/* ---- stalled.c ---- */

/* After an answer about session i was taken in: a change clears the stalled
 * mark; a session quiet for too long gets its one stalled event.
 * `before_us`: its updatedAt before the answer. */
void daemon_stalled_after_answer(Daemon *d, SessionIndex i, int64_t before_us);

/* ---- watchlist.c: which sessions are watched ---- */

/* The table and the scheduler, with the sessions the config lists. */
int daemon_setup_sessions(Daemon *d);
/* Plans the first request of every session that still needs one. */
int daemon_schedule_all(Daemon *d);
/* Stops watching session i at once: out of the scheduler, the table and
 * (durably) the state. */
void daemon_unwatch_session(Daemon *d, SessionIndex i);
/* Drops finished run-time sessions past [poll] retain. */
void daemon_retire_sessions(Daemon *d);

/* ---- persist.c: the daemon's side of the state file ---- */

/* Loads the state folder (before the loop runs). */
int daemon_setup_state(Daemon *d);
/* Makes session i's durable fields durable, after its events went out. */
void daemon_persist(Daemon *d, SessionIndex i);
void daemon_persist_watermark(Daemon *d, const char *key, int64_t newest_us);
/* Writes the held sessions whose events are in the outboxes now (all of
 * them with `all`). */
void daemon_persist_release(Daemon *d, bool all);
/* Room for the outbox marks of n webhooks. Returns 0 or -ENOMEM. */
int daemon_persist_reserve(Daemon *d, size_t n_webhooks);
/* Held writes stop waiting for sink s. */
void daemon_persist_forget_sink(Daemon *d, const Sink *s);
/* A webhook outbox wrote more records (sink_webhook_on_written()). */
void daemon_persist_on_outbox_written(void *userdata);
/* At a stop: what is written is written, the rest is left out. */
void daemon_persist_stop(Daemon *d);
void daemon_persist_done(Daemon *d);

/* ---- service-status.c ---- */

/* The STATUS= line told to the service manager (notify_new()). */
void daemon_service_status(void *userdata, char *buf, size_t size);

/* ---- reload.c ---- */

typedef struct ReloadReport {
        size_t added;
        size_t removed;
        size_t webhooks_added, webhooks_removed, webhooks_changed;
        char restart_needed[256]; /* settings changed that only a restart applies, e.g. "[api] url" */
} ReloadReport;

/* A reload asked for by SIGHUP or `sessionwatchctl reload`, told to the
 * service manager. Returns 0 or -errno, with the reasons in errbuf. */
int daemon_reload_notified(Daemon *d, char *errbuf, size_t errlen, ReloadReport *rep);

/* ---- control-commands.c ---- */

/* The commands of the control socket, ending with an empty entry. */
const ControlCommand *daemon_control_commands(void);
/* The reply of the `status` control command. */
struct json_object *daemon_status_json(Daemon *d);

/* ---- daemon-metrics.c ---- */

/* Session counts: [status] for seen ones, plus unseen and gone. */
typedef struct SessionCounts {
        size_t by_status[_SESSION_STATUS_MAX];
        size_t unseen;
        size_t gone;
        size_t total;
} SessionCounts;

void daemon_count_sessions(Daemon *d, SessionCounts *ret);

/* The daemon's counters in the Prometheus text format: what both the HTTP
 * endpoint and the control socket's `metrics` command return. */
void daemon_metrics(Daemon *d, MetricsText *m);

/* Counts a poll's duration, from the start of its request to its
 * completion (both CLOCK_MONOTONIC microseconds). */
void daemon_metrics_observe_poll(Daemon *d, uint64_t start_usec, uint64_t done_usec);

/* Counts one transition emitted, by its new status, and how long after the
 * session's updatedAt it was announced. */
void daemon_metrics_count_transition(Daemon *d, SessionStatus status, int64_t updated_at_us);
/* Counts how late a piece of due work started. */
void daemon_metrics_observe_lag(Daemon *d, uint64_t late_ms);

/* ---- daemon-http.c ---- */

/* Starts the HTTP listener when [http] listen is set. A bind failure is
 * logged with the address. Returns 0 or -errno. */
int daemon_setup_http(Daemon *d);
/* Stops listening (from finish()); the handles close on the loop. */
void daemon_close_http(Daemon *d);
/* Frees what is left once the loop has run dry. */
void daemon_free_http(Daemon *d);
/* Takes [http] from `c` (a reload): a new address is bound before the old
 * one is let go, and when it cannot be, the error names it and the old
 * listener stays; a new token applies to the next request. */
void daemon_reload_http(Daemon *d, Config *c);
/* Every event goes to the HTTP event stream's ring. */
void daemon_web_emit(Daemon *d, const Event *e);
/* What the API shows of a session that the table does not keep. */
void daemon_web_learn_name(Daemon *d, SessionIndex i, const char *name);
void daemon_web_forget(Daemon *d, SessionIndex i);
void daemon_http_metrics(Daemon *d, MetricsText *m);
