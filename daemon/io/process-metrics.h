/* process-metrics: the standard process_* metrics of Prometheus client
 * libraries (CPU time, memory, file descriptors, start time), read from the
 * small files under /proc/self.
 *
 * The parsers are pure and take the text of a file, so tests can feed them
 * made-up contents; process_metrics_write() reads the real files (a few
 * hundred bytes each, no blocking beyond that) and appends the samples. */
#pragma once

#include <stdint.h>

#include "metrics.h"

typedef struct ProcessStat {
        uint64_t utime_ticks; /* user CPU time, in clock ticks */
        uint64_t stime_ticks; /* system CPU time, in clock ticks */
        uint64_t start_ticks; /* start, in clock ticks after boot */
        uint64_t vsize_bytes; /* virtual memory size */
        uint64_t rss_pages;   /* resident set size */
} ProcessStat;

/* Parses the text of /proc/PID/stat (a command name may hold spaces and
 * parentheses). Returns 0 or -EINVAL. */
int process_stat_parse(const char *text, ProcessStat *ret);

/* Finds the soft "Max open files" limit in the text of /proc/PID/limits;
 * "unlimited" gives UINT64_MAX. Returns 0, -ENOENT without that line, or
 * -EINVAL. */
int process_limits_parse_max_fds(const char *text, uint64_t *ret);

/* Wall-clock start time in seconds since the epoch, from the clocks read now
 * (realtime and time since boot, both in seconds) and the start in ticks
 * after boot. */
double process_start_time(double realtime_s, double boottime_s, uint64_t start_ticks, long ticks_per_sec);

/* Appends process_cpu_seconds_total, process_resident_memory_bytes,
 * process_virtual_memory_bytes, process_open_fds, process_max_fds and
 * process_start_time_seconds for the calling process. A file that cannot be
 * read leaves its metrics out. Returns 0 or the first -errno met. */
int process_metrics_write(MetricsText *m);
