/* durable: the file machinery under the state file and the webhook outboxes.
 *
 * It owns the steps that make one file in one folder crash-safe, whatever
 * its format:
 *   - the folder, created (mode 0700, with missing parents) and opened as a
 *     directory descriptor that every other call is relative to;
 *   - appends and syncs on the file (with short writes and EINTR handled);
 *   - the atomic replace: a temporary copy is created next to the file,
 *     filled, fsynced, renamed over the file, and the folder is fsynced, so
 *     that after a crash the file is either all old or all new content;
 *   - moving an unreadable file aside to `<name>.corrupt-<UTC time>`,
 *     never replacing another file;
 *   - a queue that runs one blocking job at a time in libuv's threadpool,
 *     takes its results in on the loop thread, and lets a clean stop wait
 *     for the job in flight.
 *
 * Every call that takes a `fault` hook calls it (when not NULL) with the
 * name of the operation ("open", "write", "fsync", "fdatasync", "rename",
 * "ftruncate", "mkdir") just before making it; a negative return is taken
 * as that operation's -errno. Only tests set one.
 *
 * The calls are blocking: run them in a queue job or at start-up. They
 * return 0 (or a descriptor) or a negative errno; none of them logs. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

typedef int (*DurableFault)(const char *op);

/* Opens the folder `path`, first creating it and its missing parents (mode
 * 0700) when it does not exist. */
int durable_open_folder(const char *path, DurableFault fault, int *ret_fd);

/* openat(2) relative to the folder: the descriptor or -errno. */
int durable_openat(int dir_fd, const char *name, int flags, mode_t mode, DurableFault fault);

/* Writes all of buf; *ret_written (optional) says how far it got, also on
 * failure (a partial record may then be in the file). -EIO when write(2)
 * returned 0. */
int durable_write(int fd, const void *buf, size_t n, size_t *ret_written, DurableFault fault);

/* fsync(2), or fdatasync(2) when data_only. */
int durable_sync(int fd, bool data_only, DurableFault fault);

int durable_truncate(int fd, off_t size, DurableFault fault);

/* Closes *fd when open and sets it to -1. */
void durable_close_fd(int *fd);

/* ---- Atomic replace ---- */

/* Creates the temporary copy `tmp` in the folder (mode 0600, open for
 * reading and appending), first removing a stale one a crash left behind.
 * Returns the new descriptor or -errno. */
int durable_replace_begin(int dir_fd, const char *tmp, DurableFault fault);

/* The step of durable_replace_commit() that failed. */
typedef enum DurableStep {
        DURABLE_STEP_NONE,
        DURABLE_STEP_SYNC,        /* fsync of the temporary copy */
        DURABLE_STEP_PREPARE,     /* the caller's before_rename */
        DURABLE_STEP_RENAME,      /* the rename over the file */
        DURABLE_STEP_SYNC_FOLDER, /* fsync of the folder, after the rename */
} DurableStep;

/* Completes a replace whose temporary copy `tmp_fd` is filled: fsyncs it,
 * calls before_rename (optional; a negative return fails the replace),
 * renames `tmp` over `name` and fsyncs the folder.
 *
 * Returns 0 with the temporary copy now being `name` (tmp_fd stays open).
 * On a failure before the rename, tmp_fd is closed and `tmp` removed, and
 * `name` is untouched. When only the folder sync failed, the rename is done
 * (tmp_fd stays open and is the file) but might not survive a crash; the
 * error is returned all the same. *ret_step (optional) says which step
 * failed. */
int durable_replace_commit(int dir_fd, int tmp_fd, const char *tmp, const char *name, DurableFault fault,
                           int (*before_rename)(void *userdata, int dir_fd), void *userdata,
                           DurableStep *ret_step);

/* Closes an unfinished temporary copy and removes it. */
void durable_replace_abort(int dir_fd, int *tmp_fd, const char *tmp);

/* The whole replace in one call: begin, `fill` (writes the content into the
 * descriptor it is given, returns 0 or -errno), commit. *ret_fd is the new
 * file, open for reading and appending. A failure before the rename closes
 * the new descriptor and returns the error, leaving *ret_fd as it was. When
 * only the folder sync failed, the rename is done: *ret_fd is the new file
 * all the same (it is the file now, whatever the error) and the error is
 * returned. */
int durable_replace(int dir_fd, const char *name, const char *tmp, int (*fill)(void *userdata, int fd),
                    void *userdata, DurableFault fault, int *ret_fd);

/* Renames the unreadable `name` to `name.corrupt-<UTC time>` (or
 * `...-<n>` when that exists), never replacing an existing file; ret_name
 * gets the new name (relative to the folder). -ENOENT when `name` is gone. */
int durable_move_aside(int dir_fd, const char *name, DurableFault fault, char *ret_name, size_t size);

/* ---- The job queue ---- */

/* One job at a time: `run` in a threadpool thread (it owns whatever the
 * loop thread handed it, until it returns), then `done` on the loop thread.
 * `done` runs with the queue already free, so it may submit the next job. */
typedef struct DurableQueue DurableQueue;
struct DurableQueue {
        uv_loop_t *loop;
        void (*run)(DurableQueue *q);
        void (*done)(DurableQueue *q);
        void *userdata;

        bool in_flight;  /* loop thread: a job was submitted and its `done` has not run */
        uint64_t run_us; /* how long the last `run` took */

        /* Internal. */
        uv_work_t req;
        bool finished; /* under lock: `run` returned */
        uv_mutex_t lock;
        uv_cond_t cond;
};

/* Returns 0 or -ENOMEM. */
int durable_queue_init(DurableQueue *q, uv_loop_t *loop, void (*run)(DurableQueue *q),
                       void (*done)(DurableQueue *q), void *userdata);

/* Hands the next job to the threadpool; only while !q->in_flight. */
void durable_queue_submit(DurableQueue *q);

/* Blocks until the job in flight (if any) has run; its `done` still comes
 * later, from the loop. For a clean stop, which then takes the results in
 * itself. */
void durable_queue_wait(DurableQueue *q);

/* Only when no job is in flight. */
void durable_queue_destroy(DurableQueue *q);

/* ---- Teardown ---- */

/* The asynchronous end of a module with a file, its folder and libuv
 * handles: the descriptors are closed first, then the handles; once the
 * last handle is closed, `release(owner)` frees the module and then
 * `closed(closed_userdata)` tells its user. */
typedef struct DurableTeardown {
        bool closing; /* durable_teardown_begin() was called */
        unsigned n_handles;
        void (*closed)(void *userdata);
        void *closed_userdata;
        void (*release)(void *owner);
        void *owner;
} DurableTeardown;

/* Marks the module as closing and keeps `closed` (may be NULL) for later. */
void durable_teardown_begin(DurableTeardown *t, void (*closed)(void *userdata), void *userdata);

/* Closes *fd and *dir_fd (those that are open; both become -1), then the n
 * handles (whose `data` it takes over). */
void durable_teardown_finish(DurableTeardown *t, int *fd, int *dir_fd, void (*release)(void *owner),
                             void *owner, uv_handle_t *const *handles, unsigned n);
