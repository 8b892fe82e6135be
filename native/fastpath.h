/* fastpath.h - the serving fast path (fastpath.c), registered by vfio_user_native.c */
#ifndef VFU_FASTPATH_H
#define VFU_FASTPATH_H
#include <node_api.h>
#include <stdint.h>

/* waitReadable(fd, maxMs?) -> boolean: see fastpath.c */
napi_value vfu_js_wait_readable(napi_env env, napi_callback_info info);

/* exchange(io, buf) -> number: see fastpath.c. io's layout (int32 indexes; the staged
 * bytes to send start at byte EXCHANGE_OUT_AT), shared with src/transport/connection.ts: */
#define EXCHANGE_SENT 254   /* out: bytes sent, -1 none */
#define EXCHANGE_WAITED 255 /* out: 0 no wait or the loop has work, 1 slept, 2 spun */
#define EXCHANGE_FD 256     /* in */
#define EXCHANGE_OUT_LEN 257
#define EXCHANGE_OFFSET 258
#define EXCHANGE_LENGTH 259
#define EXCHANGE_WAIT 260 /* in: -1 do not wait; else spin this many microseconds, then sleep */
#define EXCHANGE_RESULT 261 /* out: what the call returns (see fastpath.c) */
#define EXCHANGE_YIELD 262   /* in: 1 yield the CPU once when there was nothing to read, and read again */
#define EXCHANGE_YIELDED 263 /* out: 0 did not yield, 1 yielded and then read something, 2 yielded in vain */
#define EXCHANGE_OUT_AT 2048
napi_value vfu_js_exchange(napi_env env, napi_callback_info info);

/* schedYield(): sched_yield(2) */
napi_value vfu_js_sched_yield(napi_env env, napi_callback_info info);

/* from vfio_user_native.c */
#include <sys/types.h>
ssize_t vfu_recv_fds(napi_env env, int fd, void* buf, size_t len, int32_t* out, size_t cap);
void vfu_throw_errno(napi_env env, int err, const char* syscall);

#endif
