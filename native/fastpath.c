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
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

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

/* The wait of waitReadable() and exchange(): 2, 1 or 0 as waitReadable() returns. */
static int wait_ready(uv_loop_t* loop, int fd, int32_t max_ms, int32_t spin_us) {
  if (watchers_pending(loop)) return 0;
  uv_update_time(loop);
  int timeout = uv_backend_timeout(loop); /* -1: no timer; 0: the loop has work now */
  if (max_ms >= 0 && (timeout < 0 || timeout > max_ms)) timeout = max_ms;
  if (timeout == 0) return 0;
  struct pollfd p[2] = {{fd, POLLIN, 0}, {uv_backend_fd(loop), POLLIN, 0}};
  int spun = spin_us > 0 ? spin_wait(p, timeout < 0 || spin_us < timeout * 1000 ? spin_us : timeout * 1000) : -1;
  if (spun >= 0) return spun ? 2 : 0;
  if (spin_us > 0 && timeout > 0) {
    uv_update_time(loop);
    timeout = uv_backend_timeout(loop);
    if (max_ms >= 0 && (timeout < 0 || timeout > max_ms)) timeout = max_ms;
  }
  /* EINTR: a signal, which libuv's signal pipe will report; go back to the loop */
  int r = poll(p, 2, timeout);
  /* POLLHUP/POLLERR on the socket: the caller's recvmsg reports them */
  return r > 0 && p[0].revents != 0;
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
  if (napi_create_int32(env, wait_ready(loop, fd, max_ms, spin_us), &result) != napi_ok) return NULL;
  return result;
}

/* schedYield(): gives the CPU to whatever else is runnable on it (a poller between empty
 * passes, so a peer's thread queued behind it runs now rather than at the next tick). */
napi_value vfu_js_sched_yield(napi_env env, napi_callback_info info) {
  (void)env;
  (void)info;
  sched_yield();
  return NULL;
}

/*
 * exchange(io, buf?): the round trip of a server that has just handled a batch, in one call
 * from JS instead of two or three (the arguments are ArrayBuffers, the cheapest values
 * Node-API can unwrap; everything else sits in io; without buf, the receive buffer is in io
 * too):
 *
 *  1. send(MSG_DONTWAIT) of the staged replies, io's bytes [EXCHANGE_OUT_AT, +outLen)
 *     (nothing when outLen is 0); the bytes sent go to io[EXCHANGE_SENT] (-1: none). A short
 *     send returns -2 at once, nothing read (the caller queues the rest).
 *  2. one recvmsg(MSG_DONTWAIT) into buf[offset, offset+length), as recvmsg() does, its fds
 *     in io[1..253] (count in io[0]);
 *  3. when that found nothing and wait >= 0: waits as waitReadable(fd, -1, wait) does (the
 *     result in io[EXCHANGE_WAITED]) and, when the socket became readable, reads as in 2.
 *     The caller must have run nextTicks and microtasks before asking to wait.
 *
 * io's inputs: fd, outLen, offset, length, wait at io[EXCHANGE_FD...]. The result, in
 * io[EXCHANGE_RESULT] (the call returns undefined): the bytes read (0 at EOF), -1 when there
 * was nothing to read (or the event loop has work), -2 after a short send. Throws as send()
 * (err.syscall 'send': nothing was read) or recvmsg().
 */
#define SCM_MAX 253

static int bad_arg(napi_env env, const char* what) {
  napi_throw_range_error(env, "ERR_OUT_OF_RANGE", what);
  return 0;
}

napi_value vfu_js_exchange(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  void *iop = NULL, *bufp = NULL;
  size_t io_bytes = 0, buf_bytes = 0;
  bool ok = argc >= 1;
  if (ok) ok = napi_get_arraybuffer_info(env, argv[0], &iop, &io_bytes) == napi_ok && iop != NULL && io_bytes >= EXCHANGE_OUT_AT;
  if (ok && argc < 2) {
    bufp = iop; /* the receive buffer is in io */
    buf_bytes = io_bytes;
  } else if (ok) {
    ok = napi_get_arraybuffer_info(env, argv[1], &bufp, &buf_bytes) == napi_ok && bufp != NULL;
  }
  if (!ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "exchange(io, buf?) takes one or two ArrayBuffers (io of at least 2048 bytes)");
    return NULL;
  }
  int32_t* io = iop;
  int fd = io[EXCHANGE_FD];
  int32_t out_len = io[EXCHANGE_OUT_LEN], offset = io[EXCHANGE_OFFSET], length = io[EXCHANGE_LENGTH], wait = io[EXCHANGE_WAIT];
  if (fd < 0) return bad_arg(env, "exchange: io fd must be >= 0"), NULL;
  if (out_len < 0 || (size_t)out_len > io_bytes - EXCHANGE_OUT_AT) return bad_arg(env, "exchange: outLen outside io"), NULL;
  if (offset < 0 || length < 1 || (size_t)offset + (size_t)length > buf_bytes) return bad_arg(env, "exchange: [offset, offset+length) outside buf"), NULL;
  uint8_t* buf = (uint8_t*)bufp + offset;
  ssize_t n = 0;
  io[0] = 0;
  io[EXCHANGE_SENT] = 0;
  io[EXCHANGE_WAITED] = 0;
  if (out_len > 0) {
    /* syscall(): libc's send() is a cancellation point, which costs two calls per send */
    do {
      n = syscall(SYS_sendto, fd, (uint8_t*)iop + EXCHANGE_OUT_AT, (size_t)out_len, MSG_NOSIGNAL | MSG_DONTWAIT, NULL, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        vfu_throw_errno(env, errno, "send");
        return NULL;
      }
      n = -1;
    }
    io[EXCHANGE_SENT] = (int32_t)n;
    if (n != out_len) n = -2;
  }
  io[EXCHANGE_YIELDED] = 0;
  if (n != -2) {
    n = vfu_recv_fds(env, fd, buf, (size_t)length, io, SCM_MAX);
    if (n == -1 && io[EXCHANGE_YIELD] == 1 && out_len > 0) {
      /* The reply just sent woke the peer; when it shares our CPU and did not preempt us, let
       * it run now (it sends its next request and blocks) rather than after the round
       * through JS that waiting takes. Across CPUs this finds nothing (2) and the caller
       * stops asking for a while. Not a wait: nothing on this thread is held up longer than
       * by a preemption. */
      sched_yield();
      n = vfu_recv_fds(env, fd, buf, (size_t)length, io, SCM_MAX);
      io[EXCHANGE_YIELDED] = n == -1 ? 2 : 1;
    }
    if (n == -1 && wait >= 0) {
      uv_loop_t* loop = NULL;
      if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == NULL) return NULL;
      int r = wait_ready(loop, fd, -1, wait);
      io[EXCHANGE_WAITED] = r;
      if (r > 0) n = vfu_recv_fds(env, fd, buf, (size_t)length, io, SCM_MAX);
    }
    if (n == -2) return NULL;
  }
  io[EXCHANGE_RESULT] = (int32_t)n;
  return NULL; /* undefined: the result is in io (cheaper than making a number) */
}
