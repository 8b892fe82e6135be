/*
 * fastpath.c - the serving fast path (issue 15): waiting for a socket without going back
 * to the libuv event loop, as long as the loop has nothing else to do.
 *
 * A server thread that has just answered a batch of messages would normally return to libuv,
 * which runs its timer, idle, prepare and check phases, polls every fd (epoll_wait), and calls
 * back into JS through the poller (napi_make_callback). At depth 1 that round costs about as
 * much as the protocol work itself. waitReadable(fd, maxMs, spinUs) lets the JS read loop wait
 * for the next message right where it is, in poll(2) on the socket and on the loop's own epoll
 * fd together. It returns
 *
 *  - 2: the socket became readable while spinning (see spin_wait), 1: after sleeping; the
 *    caller reads and serves on;
 *  - 0: the loop has something to do, and the caller goes back to it: anything the loop
 *    watches became ready (another fd, a signal, a worker message or a threadpool completion,
 *    which all end in the loop's epoll set), or the next timer is due (the poll timeout is
 *    libuv's own), or the loop has work it would not block for (immediates, pending
 *    callbacks, closing handles: uv_backend_timeout() is then 0), or JS started or changed a
 *    watcher that libuv only registers in its next poll phase.
 *
 * So nothing on the thread waits longer than it would have in the event loop; the one thing a
 * caller must do itself is run nextTicks and microtasks before waiting (see
 * src/transport/connection.ts).
 */
#include <node_api.h>
#include <uv.h>

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <time.h>
#include <stdint.h>

#include "fastpath.h"

/* libuv registers new or changed watchers in epoll only in its own poll phase; until then
 * they sit in loop->watcher_queue (a field of the public uv_loop_t, stable across libuv 1.x). */
static int watchers_pending(const uv_loop_t* loop) {
  return loop->watcher_queue.next != &loop->watcher_queue;
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Polls without sleeping for up to spin_us (yielding the CPU between polls, so a peer on the
 * same CPU runs): 1 when fd is readable, 0 when the loop has something, -1 when time ran out.
 * Waking a thread whose CPU went idle costs tens of microseconds on a virtual machine; a
 * message that arrives while we spin costs none of that. */
static int spin_wait(struct pollfd* p, int32_t spin_us) {
  int64_t end = now_ns() + (int64_t)spin_us * 1000;
  do {
    if (poll(p, 2, 0) > 0) return p[0].revents != 0;
    sched_yield();
  } while (now_ns() < end);
  return -1;
}

napi_value vfu_js_wait_readable(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], result;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  int32_t fd = -1, max_ms = -1;
  napi_valuetype t = napi_undefined;
  if (argc < 1 || napi_typeof(env, argv[0], &t) != napi_ok || t != napi_number ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "The \"fd\" argument must be a non-negative integer");
    return NULL;
  }
  int32_t spin_us = 0;
  if (argc >= 2 && napi_typeof(env, argv[1], &t) == napi_ok && t == napi_number &&
      napi_get_value_int32(env, argv[1], &max_ms) != napi_ok) {
    return NULL;
  }
  if (argc >= 3 && napi_typeof(env, argv[2], &t) == napi_ok && t == napi_number &&
      napi_get_value_int32(env, argv[2], &spin_us) != napi_ok) {
    return NULL;
  }
  uv_loop_t* loop = NULL;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == NULL) return NULL;

  int ready = 0;
  if (!watchers_pending(loop)) {
    uv_update_time(loop);
    int timeout = uv_backend_timeout(loop); /* -1: no timer; 0: the loop has work now */
    if (max_ms >= 0 && (timeout < 0 || timeout > max_ms)) timeout = max_ms;
    if (timeout != 0) {
      struct pollfd p[2] = {{fd, POLLIN, 0}, {uv_backend_fd(loop), POLLIN, 0}};
      int spun = spin_us > 0 ? spin_wait(p, timeout < 0 || spin_us < timeout * 1000 ? spin_us : timeout * 1000) : -1;
      if (spun >= 0) {
        ready = spun ? 2 : 0;
      } else {
        if (spin_us > 0 && timeout > 0) {
          uv_update_time(loop);
          timeout = uv_backend_timeout(loop);
          if (max_ms >= 0 && (timeout < 0 || timeout > max_ms)) timeout = max_ms;
        }
        /* EINTR: a signal, which libuv's signal pipe will report; go back to the loop */
        int r = poll(p, 2, timeout);
        /* POLLHUP/POLLERR on the socket: the caller's recvmsg reports them */
        ready = r > 0 && p[0].revents != 0;
      }
    }
  }
  if (napi_create_int32(env, ready, &result) != napi_ok) return NULL;
  return result;
}
