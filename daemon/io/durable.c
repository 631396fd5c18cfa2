/* durable: the folder, the file, the atomic replace and the one-job-at-a-time
 * threadpool queue of the state file and the webhook outboxes. See
 * durable.h. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "durable.h"

static int fault_check(DurableFault fault, const char *op)
{
        return fault ? fault(op) : 0;
}

int durable_open_folder(const char *path, DurableFault fault, int *ret_fd)
{
        char *copy;
        int fd, r;

        fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
                *ret_fd = fd;
                return 0;
        }
        if (errno != ENOENT)
                return -errno;

        copy = strdup(path);
        if (!copy)
                return -ENOMEM;
        for (char *p = copy + 1;; p++) {
                bool last = *p == '\0';

                if (*p != '/' && !last)
                        continue;
                *p = '\0';
                r = fault_check(fault, "mkdir");
                if (r == 0 && mkdir(copy, 0700) < 0 && errno != EEXIST)
                        r = -errno;
                if (r < 0) {
                        free(copy);
                        return r;
                }
                if (last)
                        break;
                *p = '/';
        }
        free(copy);

        fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        *ret_fd = fd;
        return 0;
}

int durable_openat(int dir_fd, const char *name, int flags, mode_t mode, DurableFault fault)
{
        int r = fault_check(fault, "open");
        int fd;

        if (r < 0)
                return r;
        fd = openat(dir_fd, name, flags, mode);
        return fd < 0 ? -errno : fd;
}

int durable_write(int fd, const void *buf, size_t n, size_t *ret_written, DurableFault fault)
{
        const char *p = buf;
        size_t done = 0;
        int r = fault_check(fault, "write");

        if (ret_written)
                *ret_written = 0;
        if (r < 0)
                return r;
        while (done < n) {
                ssize_t k = write(fd, p + done, n - done);

                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        break;
                }
                if (k == 0) {
                        r = -EIO;
                        break;
                }
                done += (size_t)k;
        }
        if (ret_written)
                *ret_written = done;
        return r;
}

int durable_sync(int fd, bool data_only, DurableFault fault)
{
        int r = fault_check(fault, data_only ? "fdatasync" : "fsync");

        if (r < 0)
                return r;
        if ((data_only ? fdatasync(fd) : fsync(fd)) < 0)
                return -errno;
        return 0;
}

int durable_truncate(int fd, off_t size, DurableFault fault)
{
        int r = fault_check(fault, "ftruncate");

        if (r < 0)
                return r;
        return ftruncate(fd, size) < 0 ? -errno : 0;
}

void durable_close_fd(int *fd)
{
        if (*fd >= 0)
                close(*fd);
        *fd = -1;
}

/* ---- Atomic replace ---- */

int durable_replace_begin(int dir_fd, const char *tmp, DurableFault fault)
{
        (void)unlinkat(dir_fd, tmp, 0);
        return durable_openat(dir_fd, tmp, O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600, fault);
}

void durable_replace_abort(int dir_fd, int *tmp_fd, const char *tmp)
{
        if (*tmp_fd < 0)
                return;
        close(*tmp_fd);
        *tmp_fd = -1;
        (void)unlinkat(dir_fd, tmp, 0);
}

int durable_replace_commit(int dir_fd, int tmp_fd, const char *tmp, const char *name, DurableFault fault,
                           int (*before_rename)(void *userdata, int dir_fd), void *userdata,
                           DurableStep *ret_step)
{
        DurableStep step = DURABLE_STEP_SYNC;
        int r;

        r = durable_sync(tmp_fd, false, fault);
        if (r == 0 && before_rename) {
                step = DURABLE_STEP_PREPARE;
                r = before_rename(userdata, dir_fd);
        }
        if (r == 0) {
                step = DURABLE_STEP_RENAME;
                r = fault_check(fault, "rename");
                if (r == 0 && renameat(dir_fd, tmp, dir_fd, name) < 0)
                        r = -errno;
        }
        if (r < 0) {
                durable_replace_abort(dir_fd, &tmp_fd, tmp);
                if (ret_step)
                        *ret_step = step;
                return r;
        }
        /* The new file is complete and in place; without this the rename
         * itself might not survive a crash (the old file would). */
        r = durable_sync(dir_fd, false, fault);
        if (ret_step)
                *ret_step = r < 0 ? DURABLE_STEP_SYNC_FOLDER : DURABLE_STEP_NONE;
        return r;
}

int durable_replace(int dir_fd, const char *name, const char *tmp, int (*fill)(void *userdata, int fd),
                    void *userdata, DurableFault fault, int *ret_fd)
{
        DurableStep step;
        int fd, r;

        fd = durable_replace_begin(dir_fd, tmp, fault);
        if (fd < 0)
                return fd;
        r = fill(userdata, fd);
        if (r < 0) {
                durable_replace_abort(dir_fd, &fd, tmp);
                return r;
        }
        r = durable_replace_commit(dir_fd, fd, tmp, name, fault, NULL, NULL, &step);
        if (r < 0 && step != DURABLE_STEP_SYNC_FOLDER)
                return r;
        *ret_fd = fd;
        return r;
}

int durable_move_aside(int dir_fd, const char *name, DurableFault fault, char *ret_name, size_t size)
{
        char stamp[32];
        struct tm tm;
        time_t now = time(NULL);
        int r;

        if (!gmtime_r(&now, &tm) || strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm) == 0)
                return -EINVAL;
        r = fault_check(fault, "rename");
        if (r < 0)
                return r;
        for (unsigned n = 0; n < 1000; n++) {
                if (n == 0)
                        snprintf(ret_name, size, "%s.corrupt-%s", name, stamp);
                else
                        snprintf(ret_name, size, "%s.corrupt-%s-%u", name, stamp, n);
                if (renameat2(dir_fd, name, dir_fd, ret_name, RENAME_NOREPLACE) == 0)
                        return 0;
                if (errno == EEXIST)
                        continue;
                if (errno != EINVAL && errno != ENOSYS)
                        return -errno;
                /* A file system without RENAME_NOREPLACE: link() refuses to
                 * replace too; only then does the old name go. */
                if (linkat(dir_fd, name, dir_fd, ret_name, 0) < 0) {
                        if (errno == EEXIST)
                                continue;
                        return -errno;
                }
                if (unlinkat(dir_fd, name, 0) < 0)
                        return -errno;
                return 0;
        }
        return -EEXIST;
}

/* ---- The job queue ---- */

/* Runs in a threadpool thread. */
static void on_queue_work(uv_work_t *req)
{
        DurableQueue *q = req->data;
        uint64_t start = uv_hrtime();

        q->run(q);
        q->run_us = (uv_hrtime() - start) / 1000;
        uv_mutex_lock(&q->lock);
        q->finished = true;
        uv_cond_signal(&q->cond);
        uv_mutex_unlock(&q->lock);
}

/* Runs on the loop thread. */
static void on_queue_done(uv_work_t *req, int status)
{
        DurableQueue *q = req->data;

        (void)status; /* jobs are never cancelled */
        q->in_flight = false;
        q->done(q);
}

int durable_queue_init(DurableQueue *q, uv_loop_t *loop, void (*run)(DurableQueue *q),
                       void (*done)(DurableQueue *q), void *userdata)
{
        *q = (DurableQueue){.loop = loop, .run = run, .done = done, .userdata = userdata};
        q->req.data = q;
        if (uv_mutex_init(&q->lock) < 0)
                return -ENOMEM;
        if (uv_cond_init(&q->cond) < 0) {
                uv_mutex_destroy(&q->lock);
                return -ENOMEM;
        }
        return 0;
}

void durable_queue_submit(DurableQueue *q)
{
        int r;

        q->finished = false;
        q->in_flight = true;
        r = uv_queue_work(q->loop, &q->req, on_queue_work, on_queue_done);
        /* uv_queue_work() only fails for a NULL work callback. */
        assert(r == 0);
        (void)r;
}

void durable_queue_wait(DurableQueue *q)
{
        if (!q->in_flight)
                return;
        uv_mutex_lock(&q->lock);
        while (!q->finished)
                uv_cond_wait(&q->cond, &q->lock);
        uv_mutex_unlock(&q->lock);
}

void durable_queue_destroy(DurableQueue *q)
{
        uv_mutex_destroy(&q->lock);
        uv_cond_destroy(&q->cond);
}

/* ---- Teardown ---- */

void durable_teardown_begin(DurableTeardown *t, void (*closed)(void *userdata), void *userdata)
{
        assert(!t->closing);
        t->closing = true;
        t->closed = closed;
        t->closed_userdata = userdata;
}

/* Runs on the loop thread, once per handle being closed. */
static void on_teardown_handle_closed(uv_handle_t *h)
{
        DurableTeardown *t = h->data;
        void (*closed)(void *);
        void *userdata;

        if (--t->n_handles > 0)
                return;
        closed = t->closed;
        userdata = t->closed_userdata;
        t->release(t->owner); /* frees t too */
        if (closed)
                closed(userdata);
}

void durable_teardown_finish(DurableTeardown *t, int *fd, int *dir_fd, void (*release)(void *owner),
                             void *owner, uv_handle_t *const *handles, unsigned n)
{
        durable_close_fd(fd);
        durable_close_fd(dir_fd);
        t->release = release;
        t->owner = owner;
        assert(n > 0);
        t->n_handles = n;
        for (unsigned i = 0; i < n; i++) {
                handles[i]->data = t;
                uv_close(handles[i], on_teardown_handle_closed);
        }
}
