#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "process-metrics.h"

/* /proc/self/stat and /proc/self/limits are well under this. */
#define PROC_FILE_MAX 8192

/* Reads a whole /proc file into buf (NUL-terminated). Returns 0 or -errno;
 * -EFBIG when it does not fit, so a parser never sees a cut line. */
static int read_proc_file(const char *path, char *buf, size_t size)
{
        size_t len = 0;
        int fd = open(path, O_RDONLY | O_CLOEXEC), r = 0;

        if (fd < 0)
                return -errno;
        for (;;) {
                ssize_t n;

                if (len + 1 >= size) {
                        r = -EFBIG;
                        break;
                }
                n = read(fd, buf + len, size - 1 - len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        break;
                }
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        close(fd);
        buf[len] = '\0';
        return r;
}

static int parse_u64(const char *s, char **end, uint64_t *ret)
{
        unsigned long long v;

        if (!isdigit((unsigned char)*s))
                return -EINVAL;
        errno = 0;
        v = strtoull(s, end, 10);
        if (errno != 0)
                return -EINVAL;
        *ret = v;
        return 0;
}

int process_stat_parse(const char *text, ProcessStat *ret)
{
        /* The fields after the command name, counted from field 3 (state):
         * utime is field 14, stime 15, starttime 22, vsize 23, rss 24. */
        enum { UTIME = 11, STIME = 12, STARTTIME = 19, VSIZE = 20, RSS = 21 };
        const char *p = strrchr(text, ')');
        ProcessStat st = {};
        unsigned field = 0;

        if (!p)
                return -EINVAL;
        p++;
        while (field <= RSS) {
                uint64_t v = 0;
                char *end;

                while (*p == ' ')
                        p++;
                if (*p == '\0' || *p == '\n')
                        return -EINVAL;
                if (field == UTIME || field == STIME || field == STARTTIME || field == VSIZE ||
                    field == RSS) {
                        if (parse_u64(p, &end, &v) < 0)
                                return -EINVAL;
                        p = end;
                } else
                        p += strcspn(p, " \n");
                switch (field) {
                case UTIME:
                        st.utime_ticks = v;
                        break;
                case STIME:
                        st.stime_ticks = v;
                        break;
                case STARTTIME:
                        st.start_ticks = v;
                        break;
                case VSIZE:
                        st.vsize_bytes = v;
                        break;
                case RSS:
                        st.rss_pages = v;
                        break;
                }
                field++;
        }
        *ret = st;
        return 0;
}

int process_limits_parse_max_fds(const char *text, uint64_t *ret)
{
        static const char key[] = "Max open files";
        const char *p = text;

        /* "Max open files            1024                 524288               files" */
        while (p && *p) {
                if (strncmp(p, key, sizeof(key) - 1) == 0) {
                        char *end;

                        p += sizeof(key) - 1;
                        while (*p == ' ' || *p == '\t')
                                p++;
                        if (strncmp(p, "unlimited", 9) == 0) {
                                *ret = UINT64_MAX;
                                return 0;
                        }
                        return parse_u64(p, &end, ret);
                }
                p = strchr(p, '\n');
                if (p)
                        p++;
        }
        return -ENOENT;
}

double process_start_time(double realtime_s, double boottime_s, uint64_t start_ticks, long ticks_per_sec)
{
        if (ticks_per_sec <= 0)
                ticks_per_sec = 100;
        return realtime_s - boottime_s + (double)start_ticks / (double)ticks_per_sec;
}

static double clock_seconds(clockid_t id)
{
        struct timespec ts;

        if (clock_gettime(id, &ts) < 0)
                return 0;
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Entries of /proc/self/fd, not counting the one opendir() holds. */
static int count_open_fds(uint64_t *ret)
{
        DIR *dir = opendir("/proc/self/fd");
        struct dirent *de;
        uint64_t n = 0;

        if (!dir)
                return -errno;
        while ((de = readdir(dir)))
                if (de->d_name[0] != '.')
                        n++;
        closedir(dir);
        *ret = n > 0 ? n - 1 : 0;
        return 0;
}

int process_metrics_write(MetricsText *m)
{
        char buf[PROC_FILE_MAX];
        long ticks = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
        ProcessStat st;
        uint64_t v = 0;
        int r, ret = 0;

        if (ticks <= 0)
                ticks = 100;
        if (page <= 0)
                page = 4096;

        r = read_proc_file("/proc/self/stat", buf, sizeof(buf));
        if (r == 0)
                r = process_stat_parse(buf, &st);
        if (r == 0) {
                metrics_text_family(m, "process_cpu_seconds_total", "counter",
                                    "Total user and system CPU time spent in seconds.");
                metrics_text_value(m, "process_cpu_seconds_total",
                                   (double)(st.utime_ticks + st.stime_ticks) / (double)ticks);
                metrics_text_family(m, "process_resident_memory_bytes", "gauge",
                                    "Resident memory size in bytes.");
                metrics_text_value(m, "process_resident_memory_bytes", (double)st.rss_pages * (double)page);
                metrics_text_family(m, "process_virtual_memory_bytes", "gauge",
                                    "Virtual memory size in bytes.");
                metrics_text_value(m, "process_virtual_memory_bytes", (double)st.vsize_bytes);
                metrics_text_family(m, "process_start_time_seconds", "gauge",
                                    "Start time of the process since unix epoch in seconds.");
                metrics_text_value(m, "process_start_time_seconds",
                                   process_start_time(clock_seconds(CLOCK_REALTIME),
                                                      clock_seconds(CLOCK_BOOTTIME), st.start_ticks, ticks));
        } else
                ret = r;

        r = count_open_fds(&v);
        if (r == 0) {
                metrics_text_family(m, "process_open_fds", "gauge", "Number of open file descriptors.");
                metrics_text_value(m, "process_open_fds", (double)v);
        } else if (ret == 0)
                ret = r;

        r = read_proc_file("/proc/self/limits", buf, sizeof(buf));
        if (r == 0)
                r = process_limits_parse_max_fds(buf, &v);
        if (r == 0) {
                metrics_text_family(m, "process_max_fds", "gauge",
                                    "Maximum number of open file descriptors.");
                /* "unlimited" cannot be a count: +Inf says it. */
                metrics_text_value(m, "process_max_fds", v == UINT64_MAX ? INFINITY : (double)v);
        } else if (ret == 0)
                ret = r;
        return ret;
}
