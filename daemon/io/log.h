/* Diagnostics: the daemon's own log lines (not the session events).
 *
 * Under systemd (stderr connected to the journal, as JOURNAL_STREAM tells)
 * lines go to the journal with their priority and source location; in a
 * terminal or a pipe they go to stderr with a level prefix. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <syslog.h>

typedef enum LogTarget {
        LOG_TARGET_AUTO,
        LOG_TARGET_STDERR,
        LOG_TARGET_JOURNAL,
} LogTarget;

void log_setup(LogTarget target);
void log_set_max_level(int level);
int log_get_max_level(void);
/* Parses "err", "warning", "notice", "info", "debug" (or syslog numbers). */
int log_level_from_string(const char *s);

/* Logs when `level` is enabled; returns -abs(error) (or 0 when error is 0) so
 * callers can write `return log_error_errno(r, "...: %m");`. `%m` prints
 * strerror(abs(error)). */
int log_internal(int level, int error, const char *file, int line, const char *func, const char *format, ...)
    __attribute__((format(printf, 6, 7)));

#define log_full_errno(level, error, ...)                                                                   \
        log_internal(level, error, __FILE__, __LINE__, __func__, __VA_ARGS__)
#define log_full(level, ...) log_full_errno(level, 0, __VA_ARGS__)

#define log_debug(...) log_full(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_full(LOG_INFO, __VA_ARGS__)
#define log_notice(...) log_full(LOG_NOTICE, __VA_ARGS__)
#define log_warning(...) log_full(LOG_WARNING, __VA_ARGS__)
#define log_error(...) log_full(LOG_ERR, __VA_ARGS__)
#define log_debug_errno(error, ...) log_full_errno(LOG_DEBUG, error, __VA_ARGS__)
#define log_warning_errno(error, ...) log_full_errno(LOG_WARNING, error, __VA_ARGS__)
#define log_error_errno(error, ...) log_full_errno(LOG_ERR, error, __VA_ARGS__)

/* A token-bucket style limiter for messages that an outside party can cause
 * at a high rate (bad bodies, a full disk): at most `burst` lines per
 * `interval_ms`; the first line after a quiet period says how many were
 * suppressed. */
typedef struct LogRateLimit {
        uint64_t interval_ms;
        unsigned burst;
        uint64_t begin_ms;
        unsigned num;
        unsigned suppressed;
} LogRateLimit;

#define LOG_RATELIMIT_INIT(interval, b)                                                                     \
        {                                                                                                   \
                .interval_ms = (interval), .burst = (b)                                                     \
        }

/* Returns true when a line may be logged now; *ret_suppressed is set to the
 * number of lines dropped since the last allowed one. */
bool log_ratelimit_ok(LogRateLimit *rl, uint64_t now_ms, unsigned *ret_suppressed);

/* Logs like log_full_errno() when `rl` lets a line through at `now_ms`, and
 * says how many lines it held back before, as " (N similar messages
 * suppressed)" ahead of the final full stop, only when there were any.
 * Returns true when the line was let through (whatever the level). */
bool log_ratelimited_internal(LogRateLimit *rl, uint64_t now_ms, int level, int error, const char *file,
                              int line, const char *func, const char *format, ...)
    __attribute__((format(printf, 8, 9)));

#define log_ratelimited_errno(rl, now_ms, level, error, ...)                                                \
        log_ratelimited_internal(rl, now_ms, level, error, __FILE__, __LINE__, __func__, __VA_ARGS__)
#define log_ratelimited(rl, now_ms, level, ...) log_ratelimited_errno(rl, now_ms, level, 0, __VA_ARGS__)
