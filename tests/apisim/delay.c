/* SPDX-License-Identifier: MIT */
/*
 * Delayed answers for the "delay" fault. A delayed request is suspended in
 * libmicrohttpd, so its server thread goes on serving other connections,
 * and one timer thread resumes it when its time comes; the access handler
 * then runs again and answers. Sleeping in the handler instead would stall
 * every connection sharing that server thread.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include <microhttpd.h>

#include "sim.h"

struct delay_item {
        int64_t due; /* monotonic microseconds */
        struct MHD_Connection *conn;
};

static struct {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        pthread_t thread;
        bool running;
        bool stopping;
        struct delay_item *heap;
        size_t n;
        size_t cap;
} delay = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
};

static void delay_swap(size_t a, size_t b)
{
        struct delay_item t = delay.heap[a];

        delay.heap[a] = delay.heap[b];
        delay.heap[b] = t;
}

static void delay_push(struct delay_item it)
{
        size_t i;

        if (delay.n == delay.cap) {
                delay.cap = delay.cap ? delay.cap * 2 : 64;
                delay.heap = xrealloc(delay.heap, delay.cap * sizeof(*delay.heap));
        }
        i = delay.n++;
        delay.heap[i] = it;
        while (i > 0 && delay.heap[(i - 1) / 2].due > delay.heap[i].due) {
                delay_swap(i, (i - 1) / 2);
                i = (i - 1) / 2;
        }
}

static struct delay_item delay_pop(void)
{
        struct delay_item top = delay.heap[0];
        size_t i = 0;

        delay.heap[0] = delay.heap[--delay.n];
        for (;;) {
                size_t l = 2 * i + 1, r = l + 1, m = i;

                if (l < delay.n && delay.heap[l].due < delay.heap[m].due)
                        m = l;
                if (r < delay.n && delay.heap[r].due < delay.heap[m].due)
                        m = r;
                if (m == i)
                        break;
                delay_swap(i, m);
                i = m;
        }
        return top;
}

/* Runs in the delay thread: resumes each connection when it is due, all of them at stop. */
static void *delay_main(void *arg)
{
        pthread_mutex_lock(&delay.lock);
        for (;;) {
                int64_t now = simtime_mono_us();

                if (delay.n > 0 && (delay.stopping || delay.heap[0].due <= now)) {
                        struct delay_item it = delay_pop();

                        /* Resume outside our lock; libmicrohttpd takes its own. */
                        pthread_mutex_unlock(&delay.lock);
                        MHD_resume_connection(it.conn);
                        pthread_mutex_lock(&delay.lock);
                        continue;
                }
                if (delay.stopping)
                        break;
                if (delay.n == 0) {
                        pthread_cond_wait(&delay.cond, &delay.lock);
                } else {
                        int64_t due = delay.heap[0].due;
                        struct timespec ts = {.tv_sec = (time_t)(due / 1000000),
                                              .tv_nsec = (long)(due % 1000000) * 1000};

                        pthread_cond_timedwait(&delay.cond, &delay.lock, &ts);
                }
        }
        pthread_mutex_unlock(&delay.lock);
        return NULL;
}

int delay_start(void)
{
        pthread_condattr_t attr;
        int r;

        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&delay.cond, &attr);
        pthread_condattr_destroy(&attr);
        r = pthread_create(&delay.thread, NULL, delay_main, NULL);
        if (r != 0)
                return -r;
        delay.running = true;
        return 0;
}

/*
 * Called from the access handler: suspends the connection and queues it.
 * Returns false once apisim is stopping, and the caller answers at once,
 * because libmicrohttpd must not be stopped with suspended connections.
 */
bool delay_suspend(struct MHD_Connection *conn, unsigned delay_ms)
{
        struct delay_item it = {.due = simtime_mono_us() + (int64_t)delay_ms * 1000, .conn = conn};

        pthread_mutex_lock(&delay.lock);
        if (delay.stopping || !delay.running) {
                pthread_mutex_unlock(&delay.lock);
                return false;
        }
        MHD_suspend_connection(conn);
        delay_push(it);
        pthread_cond_signal(&delay.cond);
        pthread_mutex_unlock(&delay.lock);
        return true;
}

void delay_stop(void)
{
        if (!delay.running)
                return;
        pthread_mutex_lock(&delay.lock);
        delay.stopping = true;
        pthread_cond_signal(&delay.cond);
        pthread_mutex_unlock(&delay.lock);
        pthread_join(delay.thread, NULL);
        delay.running = false;
        free(delay.heap);
        delay.heap = NULL;
        delay.n = delay.cap = 0;
        pthread_cond_destroy(&delay.cond);
}
