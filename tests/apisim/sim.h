/* SPDX-License-Identifier: MIT */
/*
 * apisim internals shared by its source files: the growable string buffer,
 * time helpers, the session store, fault injection and the delay queue.
 * apisim.c documents the simulator's interface.
 */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

struct MHD_Connection;

#define SIM_ATTR_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* util.c: allocation that cannot fail (apisim aborts when memory runs out). */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

/* util.c: a growable byte buffer, always NUL-terminated. */
struct sbuf {
        char *buf;
        size_t len;
        size_t cap;
};

void sbuf_init(struct sbuf *b, size_t cap);
void sbuf_done(struct sbuf *b);
void sbuf_reserve(struct sbuf *b, size_t extra);
void sbuf_put(struct sbuf *b, const char *s, size_t n);
void sbuf_puts(struct sbuf *b, const char *s);
void sbuf_putc(struct sbuf *b, char c);
void sbuf_printf(struct sbuf *b, const char *fmt, ...) SIM_ATTR_PRINTF(2, 3);
void sbuf_put_json_string(struct sbuf *b, const char *s);
void sbuf_put_usec(struct sbuf *b, int64_t us);
char *sbuf_steal(struct sbuf *b, size_t *ret_len);

/* util.c: time. All instants are wall-clock microseconds since the epoch. */
void simtime_init(void);
int64_t simtime_start_us(void);
int64_t simtime_now_us(void);
int64_t simtime_mono_us(void);
#define SIMTIME_AIRPLANE_MAX 40
size_t simtime_format_airplane(int64_t us, char buf[static SIMTIME_AIRPLANE_MAX]);
int simtime_parse_rfc3339(const char *s, int64_t *ret_us);
void simtime_format_date(int64_t us, char buf[static 9]);

/* util.c: a small, fast, seedable generator (splitmix64). */
uint64_t rng_next(uint64_t *state);
double rng_unit(uint64_t *state);
uint64_t rng_mix(uint64_t x);
uint64_t util_hash_string(const char *s);

/* util.c: writes a file through a temporary name and rename(2). */
int util_write_file_atomic(const char *path, const char *data, size_t len);
int util_read_file(const char *path, size_t max, char **ret_data, size_t *ret_len);

/* store.c: the session table. */
enum {
        STATUS_PENDING,
        STATUS_ACTIVE,
        STATUS_WAITING,
        STATUS_SUCCEEDED,
        STATUS_FAILED,
        STATUS_CANCELLING,
        STATUS_CANCELLED,
        STATUS_BUILTIN_MAX,
};

struct store_config {
        uint64_t seed;
        double step_min;
        double step_max;
        unsigned runbooks;
        size_t sessions;
        double stagger; /* generated sessions start up to this many seconds before apisim */
        unsigned request_log;
};

/* How a rendering of a session deviates from the truth (fault injection). */
struct store_render {
        bool wrong_type;
        const char *status; /* raw status string served instead of the real one */
};

void store_init(const struct store_config *cfg);
void store_free(void);
int store_load_scenario(json_object *root, int64_t base_us, const char *what, struct sbuf *ids_out,
                        char *err, size_t errlen);
int store_write_ids(const char *path);
size_t store_count(void);

int store_get(const char *id, int64_t now, bool record, const struct store_render *render, struct sbuf *out);
void store_record_request(const char *id, int64_t now);

enum list_order {
        LIST_ORDER_UPDATED_ASC,
        LIST_ORDER_UPDATED_DESC,
        LIST_ORDER_ID,
        LIST_ORDER_SHUFFLED,
        LIST_ORDER_MAX,
};

const char *list_order_name(enum list_order o);
int list_order_from_name(const char *s);

struct store_list_query {
        const char *runbook_id;
        enum list_order order;
        int64_t lag_us; /* the list shows every session as it was lag_us ago */
        bool has_after;
        bool has_before;
        int64_t after_us;
        int64_t before_us;
        unsigned limit;
        uint64_t page;
        /* Called with the IDs of the page about to be rendered; sets omit[i] to leave entry i out. */
        void (*miss)(const char *const *ids, size_t n, bool *omit);
};
int store_list(const struct store_list_query *q, int64_t now, const struct store_render *render,
               struct sbuf *out);

int store_execute(const char *runbook_id, const char *slug, json_object *param_values, int64_t now,
                  struct sbuf *ret_id);
int store_set_status(const char *id, const char *status, int64_t now, struct sbuf *out);
void store_dump_sessions(int64_t now, struct sbuf *out);
void store_dump_history(const char *only_id, int64_t now, struct sbuf *out);
void store_dump_counters(const char *only_id, bool times, struct sbuf *out);
void store_reset_counters(void);

/* faults.c: fault rules matched against API requests. */
enum fault_kind {
        FAULT_NONE,
        FAULT_500,
        FAULT_502,
        FAULT_503,
        FAULT_404,
        FAULT_403,
        FAULT_429,
        FAULT_DELAY,
        FAULT_RESET,
        FAULT_TRUNCATE,
        FAULT_INVALID_JSON,
        FAULT_WRONG_TYPE,
        FAULT_HUGE,
        FAULT_UNKNOWN_STATUS,
        FAULT_LIST_MISS,
        FAULT_401,
        FAULT_KIND_MAX,
};

enum endpoint {
        ENDPOINT_GET = 1 << 0,
        ENDPOINT_LIST = 1 << 1,
        ENDPOINT_EXECUTE = 1 << 2,
        ENDPOINT_ALL = ENDPOINT_GET | ENDPOINT_LIST | ENDPOINT_EXECUTE,
};

#define FAULT_STATUS_MAX 128

struct fault_action {
        enum fault_kind kind;
        unsigned retry_after;
        unsigned delay_ms;
        char status[FAULT_STATUS_MAX];
};

void faults_init(uint64_t seed);
void faults_free(void);
const char *faults_kind_name(enum fault_kind kind);
int faults_add(json_object *rule, struct sbuf *out, char *err, size_t errlen);
void faults_clear(void);
void faults_dump(struct sbuf *out);
bool faults_pick(enum endpoint ep, const char *session_id, struct fault_action *ret);
void faults_list_miss(const char *const *ids, size_t n, bool *omit);
void faults_dump_counters(struct sbuf *out);
void faults_reset_counters(void);

/* delay.c: suspended connections waiting to be answered later. */
int delay_start(void);
bool delay_suspend(struct MHD_Connection *conn, unsigned delay_ms);
void delay_stop(void);
