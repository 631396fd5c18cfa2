#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "log.h"

static int max_level = LOG_INFO;
static LogTarget target = LOG_TARGET_STDERR;

static bool stderr_is_journal(void)
{
        /* systemd sets JOURNAL_STREAM=DEV:INODE for the stream it connected;
         * only when stderr is still that very stream are we talking to journald. */
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return false;
        if (fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_setup(LogTarget t)
{
        if (t == LOG_TARGET_AUTO)
                t = stderr_is_journal() ? LOG_TARGET_JOURNAL : LOG_TARGET_STDERR;
        target = t;
}

void log_set_max_level(int level)
{
        max_level = level;
}

int log_get_max_level(void)
{
        return max_level;
}

int log_level_from_string(const char *s)
{
        static const char *const names[] = {
            [LOG_EMERG] = "emerg",     [LOG_ALERT] = "alert",   [LOG_CRIT] = "crit", [LOG_ERR] = "err",
            [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice", [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
        };

        if (!s)
                return -EINVAL;
        for (int i = 0; i <= LOG_DEBUG; i++)
                if (strcmp(s, names[i]) == 0)
                        return i;
        if (strcmp(s, "error") == 0)
                return LOG_ERR;
        if (strcmp(s, "warn") == 0)
                return LOG_WARNING;
        if (s[0] >= '0' && s[0] <= '7' && s[1] == '\0')
                return s[0] - '0';
        return -EINVAL;
}

int log_internal(int level, int error, const char *file, int line, const char *func, const char *format, ...)
{
        static const char *const prefixes[] = {
            [LOG_EMERG] = "emerg", [LOG_ALERT] = "alert",     [LOG_CRIT] = "critical",
            [LOG_ERR] = "error",   [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
            [LOG_INFO] = "info",   [LOG_DEBUG] = "debug",
        };
        char buf[2048];
        int saved_errno = errno;
        va_list ap;

        if (error < 0)
                error = -error;
        if (level > max_level)
                return -error;

        /* %m in the format refers to `error`, not to whatever errno happens to be. */
        errno = error;
        va_start(ap, format);
        vsnprintf(buf, sizeof(buf), format, ap);
        va_end(ap);

        if (target == LOG_TARGET_JOURNAL) {
                char code_line[32];

                snprintf(code_line, sizeof(code_line), "CODE_LINE=%d", line);
                if (error)
                        sd_journal_send("MESSAGE=%s", buf, "PRIORITY=%d", level, "CODE_FILE=%s", file, "%s",
                                        code_line, "CODE_FUNC=%s", func, "ERRNO=%d", error,
                                        "SYSLOG_IDENTIFIER=sessionwatchd", NULL);
                else
                        sd_journal_send("MESSAGE=%s", buf, "PRIORITY=%d", level, "CODE_FILE=%s", file, "%s",
                                        code_line, "CODE_FUNC=%s", func, "SYSLOG_IDENTIFIER=sessionwatchd",
                                        NULL);
        } else
                fprintf(stderr, "sessionwatchd: %s: %s\n", prefixes[level & 7], buf);

        errno = saved_errno;
        return -error;
}

bool log_ratelimit_ok(LogRateLimit *rl, uint64_t now_ms, unsigned *ret_suppressed)
{
        if (rl->begin_ms == 0 || now_ms >= rl->begin_ms + rl->interval_ms) {
                *ret_suppressed = rl->suppressed;
                rl->begin_ms = now_ms ? now_ms : 1;
                rl->num = 1;
                rl->suppressed = 0;
                return true;
        }
        if (rl->num < rl->burst) {
                rl->num++;
                *ret_suppressed = 0;
                return true;
        }
        rl->suppressed++;
        *ret_suppressed = 0;
        return false;
}

bool log_ratelimited_internal(LogRateLimit *rl, uint64_t now_ms, int level, int error, const char *file,
                              int line, const char *func, const char *format, ...)
{
        char buf[2048];
        unsigned suppressed;
        int saved_errno = errno;
        size_t len;
        bool stop;
        va_list ap;

        if (!log_ratelimit_ok(rl, now_ms, &suppressed))
                return false;
        if (level > max_level)
                return true;

        /* The message is formatted here, so %m has to see `error` now. */
        errno = error < 0 ? -error : error;
        va_start(ap, format);
        vsnprintf(buf, sizeof(buf), format, ap);
        va_end(ap);
        errno = saved_errno;

        if (suppressed > 0) {
                len = strlen(buf);
                stop = len > 0 && buf[len - 1] == '.';
                if (stop)
                        buf[--len] = '\0';
                snprintf(buf + len, sizeof(buf) - len, " (%u similar message%s suppressed)%s", suppressed,
                         suppressed == 1 ? "" : "s", stop ? "." : "");
        }
        (void)log_internal(level, error, file, line, func, "%s", buf);
        return true;
}
