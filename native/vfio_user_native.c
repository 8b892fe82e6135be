/*
 * vfio_user_native.c - thin Node-API (NAPI_VERSION 8) bindings for the system calls the
 * vfio-user transport needs: UNIX stream sockets with SCM_RIGHTS fd passing, memfd/mmap,
 * eventfd and a libuv poll watcher.
 *
 * Design notes
 *  - No process-global mutable state: everything lives in a per-env addon_state set as
 *    instance data, so the addon can be loaded in several worker threads at once.
 *  - Every failing system call throws an Error carrying `errno` (positive), `code` (the errno
 *    name, e.g. 'EAGAIN') and `syscall`; argument errors throw TypeError/RangeError with
 *    Node-style codes (ERR_INVALID_ARG_TYPE / ERR_OUT_OF_RANGE).
 *  - mmap() returns an external ArrayBuffer; the mapping is tracked in a per-env registry
 *    (address -> mapping) so munmap() can detach the buffer and unmap it explicitly; otherwise
 *    the ArrayBuffer finalizer unmaps it when the buffer is garbage collected.
 *  - Pollers wrap a uv_poll_t. They hold a strong reference to themselves while started, and
 *    are closed by an async env cleanup hook so worker termination neither leaks nor leaves
 *    open handles behind (which would abort uv_loop_close()). Idle pollers dropped by JS are
 *    closed by their GC finalizer. Pollers are indexed by fd to work around libuv removing an
 *    fd from epoll when any poll handle on it is stopped/closed (see poller_rearm_others).
 */
#include <node_api.h>
#include <uv.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "fastpath.h"

#define VFU_SCM_MAX_FD 253
#define VFU_MAX_IOV 64
#define MAP_BUCKETS_MIN 64
#define POLL_BUCKETS 64
#define MAX_SAFE_INTEGER 9007199254740992.0 /* 2^53 */

/*
 * RETRY_EINTR(r, call): r = call, again while it fails with EINTR (a signal arrived before the
 * call did anything). The one place that retries; close() is the exception (never retried:
 * on Linux the fd is released even when it reports EINTR) and connect() retries through it
 * with one more rule (see js_connect).
 */
#define RETRY_EINTR(r, call) \
  do {                       \
    (r) = (call);            \
  } while ((r) < 0 && errno == EINTR)

/* --------------------------------------------------------------------------------- state */

typedef struct addon_state addon_state;
typedef struct signal_guard signal_guard;

typedef struct mapping {
  void* addr;
  size_t len;
  int unmapped;
  int uncounted; /* taken out of V8's external memory count (see uncount) */
  addon_state* st; /* NULL once the env state is gone */
  struct mapping* next;
  struct mapping** pprev; /* NULL when not in the registry */
} mapping;

typedef struct poller {
  uv_poll_t handle;
  addon_state* st;
  napi_env env;
  napi_ref self_ref; /* strong (1) while started, weak (0) otherwise */
  napi_ref cb_ref;   /* weak; the callback is kept alive by a property of the poller object */
  napi_async_context actx;
  int fd;
  int events;                  /* events of the last successful start */
  unsigned char active;        /* uv_poll_start'ed and holding the strong self reference */
  unsigned char closing;       /* uv_close called */
  unsigned char js_gone;       /* JS object finalized (or never created) */
  unsigned char refs_released; /* napi refs / async context released */
  unsigned char owns_fd;       /* close fd at env teardown if still open then (ownFd()) */
  struct poller* next;
  struct poller** pprev; /* in st->pollers[fd bucket] while the uv handle is not closed */
} poller;

struct addon_state {
  napi_env env;
  uv_loop_t* loop;
  napi_ref poller_ctor;
  int constructing;
  long page_size;
  mapping** maps;    /* live mappings by address: chained hash table, map_buckets (a power of 2) */
  size_t map_buckets; /* grows with map_count so lookups stay O(1) at 65,535+ mappings */
  size_t map_count;
  poller* pollers[POLL_BUCKETS]; /* by fd */
  napi_async_cleanup_hook_handle cleanup;
  signal_guard* guard; /* eventfdSignal's timer, created on first use */
  int tearing_down;
  int pending_closes;
};

static const napi_type_tag POLLER_TAG = {0x5f1c3a5e9b2d4c61ULL, 0x8e4f1a2b3c5d6e7fULL};

/* ------------------------------------------------------------------------------ errors */

static const char* errno_code(int err, char* buf, size_t n) {
  const char* name = strerrorname_np(err);
  if (name != NULL) return name;
  snprintf(buf, n, "E%d", err);
  return buf;
}

static void throw_full(napi_env env, int err, const char* code, const char* syscall, const char* msg) {
  napi_value c, m, e, v;
  if (napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &c) != napi_ok) return;
  if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m) != napi_ok) return;
  if (napi_create_error(env, c, m, &e) != napi_ok) return;
  if (napi_create_int32(env, err, &v) == napi_ok) napi_set_named_property(env, e, "errno", v);
  if (napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &v) == napi_ok) {
    napi_set_named_property(env, e, "syscall", v);
  }
  napi_throw(env, e);
}

/* Throws Error{errno, code, syscall} with message "syscall: strerror". */
static void throw_errno(napi_env env, int err, const char* syscall) {
  char codebuf[16], errbuf[128], msg[256];
  const char* code = errno_code(err, codebuf, sizeof codebuf);
  const char* text = strerror_r(err, errbuf, sizeof errbuf); /* GNU variant */
  snprintf(msg, sizeof msg, "%s: %s", syscall, text);
  throw_full(env, err, code, syscall, msg);
}

/* libuv errors are negative errno values on Linux. */
static void throw_uv(napi_env env, int uverr, const char* syscall) {
  char name[32], text[128], msg[256];
  uv_err_name_r(uverr, name, sizeof name);
  uv_strerror_r(uverr, text, sizeof text);
  snprintf(msg, sizeof msg, "%s: %s", syscall, text);
  throw_full(env, -uverr, name, syscall, msg);
}

/* A Node-API call failed: rethrow whatever is pending, or describe the failure. */
static void throw_napi(napi_env env) {
  const napi_extended_error_info* info = NULL;
  const char* text = "Node-API call failed";
  if (napi_get_last_error_info(env, &info) == napi_ok && info != NULL && info->error_message != NULL) {
    text = info->error_message;
  }
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) napi_throw_error(env, "ERR_NAPI", text);
}

#define NAPI_OK(call)              \
  do {                             \
    if ((call) != napi_ok) {       \
      throw_napi(env);             \
      return NULL;                 \
    }                              \
  } while (0)

static void throw_type(napi_env env, const char* name, const char* what) {
  char msg[160];
  snprintf(msg, sizeof msg, "The \"%s\" argument must be %s", name, what);
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
}

static void throw_range(napi_env env, const char* name, const char* what) {
  char msg[160];
  snprintf(msg, sizeof msg, "The value of \"%s\" is out of range. It must be %s", name, what);
  napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
}

/* --------------------------------------------------------------------- argument helpers */

/* Integer in [min, max] (max <= 2^53). */
static bool get_integer(napi_env env, napi_value v, const char* name, double min, double max, int64_t* out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) {
    throw_type(env, name, "of type number");
    return false;
  }
  if (!(d >= min && d <= max) || d != (double)(int64_t)d) {
    char what[96];
    snprintf(what, sizeof what, "an integer >= %.0f and <= %.0f. Received %g", min, max, d);
    throw_range(env, name, what);
    return false;
  }
  *out = (int64_t)d;
  return true;
}

/* An eventfd counter value in [min, 2^64 - 2] (the largest the counter holds; the kernel
 * refuses 2^64 - 1): a bigint, or an integer number up to 2^53. */
#define EVENTFD_MAX 0xfffffffffffffffeULL
static bool get_eventfd_value(napi_env env, napi_value v, const char* name, uint64_t min, uint64_t* out) {
  napi_valuetype t;
  bool lossless = false;
  if (napi_typeof(env, v, &t) != napi_ok) {
    throw_napi(env);
    return false;
  }
  if (t == napi_bigint) {
    if (napi_get_value_bigint_uint64(env, v, out, &lossless) != napi_ok) {
      throw_napi(env);
      return false;
    }
    if (lossless && *out >= min && *out <= EVENTFD_MAX) return true;
  } else {
    int64_t x;
    if (!get_integer(env, v, name, (double)min, MAX_SAFE_INTEGER, &x)) return false;
    *out = (uint64_t)x;
    return true;
  }
  char what[96];
  snprintf(what, sizeof what, "an integer >= %llu and <= %llu (a number or a bigint)", (unsigned long long)min, EVENTFD_MAX);
  throw_range(env, name, what);
  return false;
}

static bool get_fd(napi_env env, napi_value v, const char* name, int* out) {
  int64_t x;
  if (!get_integer(env, v, name, (double)INT32_MIN, (double)INT32_MAX, &x)) return false;
  *out = (int)x;
  return true;
}

static bool get_bool(napi_env env, napi_value v, const char* name, bool* out) {
  if (napi_get_value_bool(env, v, out) != napi_ok) {
    throw_type(env, name, "of type boolean");
    return false;
  }
  return true;
}

/* Copies a string argument into buf (NUL-terminated); *len receives its byte length,
 * which is >= n - 1 when it did not fit. */
static bool get_string(napi_env env, napi_value v, const char* name, char* buf, size_t n, size_t* len) {
  if (napi_get_value_string_utf8(env, v, buf, n, len) != napi_ok) {
    throw_type(env, name, "of type string");
    return false;
  }
  return true;
}

static size_t typedarray_elem_size(napi_typedarray_type t) {
  switch (t) {
    case napi_int8_array:
    case napi_uint8_array:
    case napi_uint8_clamped_array:
      return 1;
    case napi_int16_array:
    case napi_uint16_array:
      return 2;
    case napi_int32_array:
    case napi_uint32_array:
    case napi_float32_array:
      return 4;
    default:
      return 8; /* float64, bigint64, biguint64 */
  }
}

/* Any ArrayBufferView (TypedArray incl. Buffer, or DataView) -> pointer and byte length. */
static bool get_view(napi_env env, napi_value v, void** data, size_t* bytes) {
  napi_typedarray_type type;
  size_t length;
  if (napi_get_typedarray_info(env, v, &type, &length, data, NULL, NULL) == napi_ok) {
    *bytes = length * typedarray_elem_size(type);
    return true;
  }
  if (napi_get_dataview_info(env, v, &length, data, NULL, NULL) == napi_ok) {
    *bytes = length;
    return true;
  }
  return false;
}

static napi_value make_int(napi_env env, int64_t v) {
  napi_value r;
  if (v >= INT32_MIN && v <= INT32_MAX) {
    if (napi_create_int32(env, (int32_t)v, &r) != napi_ok) return NULL;
  } else if (napi_create_int64(env, v, &r) != napi_ok) {
    return NULL;
  }
  return r;
}

static napi_value make_bool(napi_env env, bool b) {
  napi_value r;
  if (napi_get_boolean(env, b, &r) != napi_ok) return NULL;
  return r;
}

#define GET_ARGS(n)                                                        \
  size_t argc = (n);                                                       \
  napi_value argv[(n) > 0 ? (n) : 1];                                      \
  addon_state* st = NULL;                                                  \
  NAPI_OK(napi_get_cb_info(env, info, &argc, argv, NULL, (void**)&st));    \
  (void)st /* napi_get_cb_info pads missing arguments with undefined */

/* -------------------------------------------------------------------------------- fds */

static int set_fl(int fd, int get, int set, int flag, bool on) {
  int fl = fcntl(fd, get);
  if (fl < 0) return -1;
  int nfl = on ? (fl | flag) : (fl & ~flag);
  if (nfl != fl && fcntl(fd, set, nfl) < 0) return -1;
  return 0;
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], "fd", &fd)) return NULL;
  /* On Linux the fd is released even when close() reports EINTR: never retry. */
  if (close(fd) < 0 && errno != EINTR) throw_errno(env, errno, "close");
  return NULL;
}

static napi_value js_dup(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], "fd", &fd)) return NULL;
  int r = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (r < 0) {
    throw_errno(env, errno, "dup");
    return NULL;
  }
  return make_int(env, r);
}

static napi_value js_set_nonblocking(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int fd;
  bool on;
  if (!get_fd(env, argv[0], "fd", &fd) || !get_bool(env, argv[1], "on", &on)) return NULL;
  if (set_fl(fd, F_GETFL, F_SETFL, O_NONBLOCK, on) < 0) throw_errno(env, errno, "fcntl");
  return NULL;
}

static napi_value js_set_cloexec(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int fd;
  bool on;
  if (!get_fd(env, argv[0], "fd", &fd) || !get_bool(env, argv[1], "on", &on)) return NULL;
  if (set_fl(fd, F_GETFD, F_SETFD, FD_CLOEXEC, on) < 0) throw_errno(env, errno, "fcntl");
  return NULL;
}

/* ---------------------------------------------------------------------------- sockets */

#define SOCK_FLAGS (SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK)

static napi_value js_socketpair(napi_env env, napi_callback_info info) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_FLAGS, 0, sv) < 0) {
    throw_errno(env, errno, "socketpair");
    return NULL;
  }
  napi_value arr, a, b;
  if (napi_create_array_with_length(env, 2, &arr) != napi_ok || napi_create_int32(env, sv[0], &a) != napi_ok ||
      napi_create_int32(env, sv[1], &b) != napi_ok || napi_set_element(env, arr, 0, a) != napi_ok ||
      napi_set_element(env, arr, 1, b) != napi_ok) {
    close(sv[0]);
    close(sv[1]);
    throw_napi(env);
    return NULL;
  }
  return arr;
}

/* Fills a sockaddr_un from a path argument; a leading NUL selects the abstract namespace. */
static bool get_sockaddr(napi_env env, napi_value v, const char* syscall, struct sockaddr_un* sa, socklen_t* salen) {
  char path[sizeof(sa->sun_path) + 2];
  size_t len = 0;
  if (!get_string(env, v, "path", path, sizeof path, &len)) return false;
  if (len == 0) {
    throw_errno(env, ENOENT, syscall);
    return false;
  }
  bool abstract = path[0] == '\0';
  /* a filesystem path needs room for its terminating NUL */
  if (len > sizeof(sa->sun_path) - (abstract ? 0 : 1)) {
    throw_errno(env, ENAMETOOLONG, syscall);
    return false;
  }
  if (!abstract && memchr(path, '\0', len) != NULL) {
    throw_type(env, "path", "a string without null bytes");
    return false;
  }
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  memcpy(sa->sun_path, path, len);
  *salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (abstract ? 0 : 1));
  return true;
}

static napi_value js_listen(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  struct sockaddr_un sa;
  socklen_t salen;
  int64_t backlog;
  if (!get_sockaddr(env, argv[0], "bind", &sa, &salen)) return NULL;
  if (!get_integer(env, argv[1], "backlog", 0, INT32_MAX, &backlog)) return NULL;
  int fd = socket(AF_UNIX, SOCK_FLAGS, 0);
  if (fd < 0) {
    throw_errno(env, errno, "socket");
    return NULL;
  }
  if (bind(fd, (struct sockaddr*)&sa, salen) < 0) {
    int e = errno;
    close(fd);
    throw_errno(env, e, "bind");
    return NULL;
  }
  if (listen(fd, (int)backlog) < 0) {
    int e = errno;
    close(fd);
    throw_errno(env, e, "listen");
    return NULL;
  }
  return make_int(env, fd);
}

static napi_value js_accept(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], "fd", &fd)) return NULL;
  int r;
  do { /* a connection aborted before we took it: take the next one */
    RETRY_EINTR(r, accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK));
  } while (r < 0 && errno == ECONNABORTED);
  if (r < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_int(env, -1);
    throw_errno(env, errno, "accept");
    return NULL;
  }
  return make_int(env, r);
}

static napi_value js_connect(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  struct sockaddr_un sa;
  socklen_t salen;
  if (!get_sockaddr(env, argv[0], "connect", &sa, &salen)) return NULL;
  /* Blocking connect (a UNIX stream connect only blocks while the backlog is full),
   * then switch the connected socket to non-blocking mode. */
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw_errno(env, errno, "socket");
    return NULL;
  }
  /* An interrupted connect() goes on in the background: a retry may then find it done
   * (EISCONN), which is success. */
  int r = connect(fd, (struct sockaddr*)&sa, salen);
  if (r < 0 && errno == EINTR) {
    RETRY_EINTR(r, connect(fd, (struct sockaddr*)&sa, salen));
    if (r < 0 && errno == EISCONN) r = 0;
  }
  if (r < 0) {
    int e = errno;
    close(fd);
    throw_errno(env, e, "connect");
    return NULL;
  }
  if (set_fl(fd, F_GETFL, F_SETFL, O_NONBLOCK, true) < 0) {
    int e = errno;
    close(fd);
    throw_errno(env, e, "fcntl");
    return NULL;
  }
  return make_int(env, fd);
}

typedef union {
  struct cmsghdr align;
  char buf[CMSG_SPACE(sizeof(int) * VFU_SCM_MAX_FD)];
} fd_control;

/*
 * send(fd, buf, offset, length): one send(MSG_NOSIGNAL|MSG_DONTWAIT) of buf[offset, offset+length)
 * without fds: the hot path for replies, with no array to unpack. Bytes sent, or -1 on EAGAIN.
 */
static napi_value js_send(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int fd;
  void* data;
  size_t blen;
  int64_t offset, length;
  if (!get_fd(env, argv[0], "fd", &fd)) return NULL;
  if (!get_view(env, argv[1], &data, &blen)) {
    throw_type(env, "buf", "an ArrayBufferView");
    return NULL;
  }
  if (!get_integer(env, argv[2], "offset", 0, (double)blen, &offset)) return NULL;
  if (!get_integer(env, argv[3], "length", 1, (double)(blen - (size_t)offset), &length)) return NULL;
  ssize_t r;
  RETRY_EINTR(r, send(fd, (char*)data + offset, (size_t)length, MSG_NOSIGNAL | MSG_DONTWAIT));
  if (r < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) r = -1;
    else {
      throw_errno(env, errno, "send");
      return NULL;
    }
  }
  napi_value v;
  NAPI_OK(napi_create_int64(env, (int64_t)r, &v));
  return v;
}

/*
 * sendmsg(fd, bufs, fds): one sendmsg(MSG_NOSIGNAL|MSG_DONTWAIT) of the views in bufs with fds
 * as SCM_RIGHTS. Reading an array element can run JS (a getter, on the array or its prototype
 * for a hole) that could detach or shrink a buffer, so every element of both arrays is read
 * first, and only then are buffer pointers taken: nothing runs between taking them and the
 * system call.
 */
static napi_value js_sendmsg(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int fd;
  if (!get_fd(env, argv[0], "fd", &fd)) return NULL;

  bool is_array = false;
  uint32_t nbufs = 0, nfds = 0;
  if (napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array) {
    throw_type(env, "bufs", "an array of ArrayBufferViews");
    return NULL;
  }
  NAPI_OK(napi_get_array_length(env, argv[1], &nbufs));
  if (nbufs > VFU_MAX_IOV) {
    throw_range(env, "bufs.length", "<= 64");
    return NULL;
  }
  napi_value bufv[VFU_MAX_IOV];
  for (uint32_t i = 0; i < nbufs; i++) NAPI_OK(napi_get_element(env, argv[1], i, &bufv[i]));

  napi_value fdv[VFU_SCM_MAX_FD];
  napi_valuetype t;
  NAPI_OK(napi_typeof(env, argv[2], &t));
  if (t != napi_null && t != napi_undefined) {
    if (napi_is_array(env, argv[2], &is_array) != napi_ok || !is_array) {
      throw_type(env, "fds", "an array of numbers or null");
      return NULL;
    }
    NAPI_OK(napi_get_array_length(env, argv[2], &nfds));
    if (nfds > VFU_SCM_MAX_FD) {
      throw_errno(env, EINVAL, "sendmsg");
      return NULL;
    }
    for (uint32_t i = 0; i < nfds; i++) NAPI_OK(napi_get_element(env, argv[2], i, &fdv[i]));
  }

  /* From here on no JS runs (reading a number or a view's info calls none). */
  int fds[VFU_SCM_MAX_FD];
  for (uint32_t i = 0; i < nfds; i++) {
    if (!get_fd(env, fdv[i], "fds[i]", &fds[i])) return NULL;
  }
  struct iovec iov[VFU_MAX_IOV];
  size_t total = 0;
  for (uint32_t i = 0; i < nbufs; i++) {
    if (!get_view(env, bufv[i], &iov[i].iov_base, &iov[i].iov_len)) {
      throw_type(env, "bufs", "an array of ArrayBufferViews");
      return NULL;
    }
    total += iov[i].iov_len;
  }

  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = iov;
  msg.msg_iovlen = nbufs;

  fd_control ctl;
  if (nfds > 0) {
    if (total == 0) { /* a stream socket would silently drop the fds */
      throw_errno(env, EINVAL, "sendmsg");
      return NULL;
    }
    msg.msg_control = ctl.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }

  ssize_t n;
  RETRY_EINTR(n, sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT));
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_int(env, -1);
    throw_errno(env, errno, "sendmsg");
    return NULL;
  }
  return make_int(env, n);
}

static void close_fds(const int32_t* fds, size_t n) {
  for (size_t i = 0; i < n; i++) close(fds[i]);
}

/*
 * One recvmsg(MSG_DONTWAIT) into buf[0, len) with its SCM_RIGHTS fds in out[1..cap] (count in
 * out[0]). Returns the bytes read (0 at EOF), -1 on EAGAIN, or -2 after throwing (a failed
 * recvmsg, or fds lost: ancillary data truncated or more than cap; the fds that came are
 * closed). Shared by recvmsg() and the fast path's exchange() (fastpath.c).
 */
ssize_t vfu_recv_fds(napi_env env, int fd, void* buf, size_t len, int32_t* out, size_t cap) {
  out[0] = 0;
  struct iovec iov = {buf, len};
  fd_control ctl;
  struct msghdr msg;
  msg.msg_name = NULL;
  msg.msg_namelen = 0;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl.buf;
  msg.msg_controllen = sizeof ctl.buf;
  msg.msg_flags = 0;

  ssize_t n;
  /* syscall(): libc's recvmsg() is a cancellation point, which costs two calls per read */
  RETRY_EINTR(n, syscall(SYS_recvmsg, fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT));
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return -1;
    throw_errno(env, errno, "recvmsg");
    return -2;
  }

  if (msg.msg_controllen > 0 || (msg.msg_flags & MSG_CTRUNC)) {
    size_t got = 0;
    bool overflow = false;
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0)) continue;
      size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const unsigned char* p = CMSG_DATA(c);
      for (size_t i = 0; i < k; i++) {
        int x;
        memcpy(&x, p + i * sizeof(int), sizeof(int));
        if (got < cap) {
          out[1 + got++] = x;
        } else {
          overflow = true;
          close(x);
        }
      }
    }
    if (msg.msg_flags & MSG_CTRUNC) {
      close_fds(out + 1, got);
      throw_full(env, EMSGSIZE, "ECTRUNC", "recvmsg",
                 "recvmsg: ancillary data truncated, received file descriptors were lost");
      return -2;
    }
    if (overflow) {
      close_fds(out + 1, got);
      throw_full(env, EMSGSIZE, "ECTRUNC", "recvmsg", "recvmsg: too many file descriptors for fdsOut");
      return -2;
    }
    out[0] = (int32_t)got;
  }
  return n;
}

/* The errors of this addon, for fastpath.c. */
void vfu_throw_errno(napi_env env, int err, const char* syscall) { throw_errno(env, err, syscall); }

static napi_value js_recvmsg(napi_env env, napi_callback_info info) {
  GET_ARGS(5);
  int fd;
  if (!get_fd(env, argv[0], "fd", &fd)) return NULL;
  void* base;
  size_t blen;
  if (!get_view(env, argv[1], &base, &blen)) {
    throw_type(env, "buf", "an ArrayBufferView");
    return NULL;
  }
  int64_t offset, length;
  if (!get_integer(env, argv[2], "offset", 0, (double)blen, &offset)) return NULL;
  if (!get_integer(env, argv[3], "length", 1, (double)(blen - (size_t)offset), &length)) return NULL;

  napi_typedarray_type type;
  size_t outlen = 0;
  void* outp = NULL;
  if (napi_get_typedarray_info(env, argv[4], &type, &outlen, &outp, NULL, NULL) != napi_ok ||
      type != napi_int32_array || outlen < 1 + VFU_SCM_MAX_FD) {
    throw_type(env, "fdsOut", "an Int32Array with at least 254 elements");
    return NULL;
  }
  ssize_t n = vfu_recv_fds(env, fd, (char*)base + offset, (size_t)length, (int32_t*)outp, VFU_SCM_MAX_FD);
  if (n == -2) return NULL;
  return make_int(env, n);
}

/* ------------------------------------------------------------------------ memfd, fstat */

static napi_value js_memfd_create(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  char name[256];
  size_t len;
  if (!get_string(env, argv[0], "name", name, sizeof name, &len)) return NULL;
  if (len >= sizeof name - 1 || memchr(name, '\0', len) != NULL) {
    throw_errno(env, EINVAL, "memfd_create");
    return NULL;
  }
  int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) {
    throw_errno(env, errno, "memfd_create");
    return NULL;
  }
  return make_int(env, fd);
}

static napi_value js_ftruncate(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int fd;
  int64_t size;
  if (!get_fd(env, argv[0], "fd", &fd) || !get_integer(env, argv[1], "size", 0, MAX_SAFE_INTEGER, &size)) return NULL;
  int r;
  RETRY_EINTR(r, ftruncate(fd, (off_t)size));
  if (r < 0) throw_errno(env, errno, "ftruncate");
  return NULL;
}

/*
 * sealShrink(fd): makes sure the file behind fd can no longer shrink (F_SEAL_SHRINK), so a
 * mapping of it cannot start faulting (SIGBUS) because its owner truncated it. Returns true
 * when the file is (now) sealed against shrinking, false when it cannot be sealed (not a
 * memfd, or a memfd created without MFD_ALLOW_SEALING, or sealing itself is sealed).
 */
static napi_value js_seal_shrink(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], "fd", &fd)) return NULL;
  bool sealed = false;
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals >= 0 && (seals & F_SEAL_SHRINK)) {
    sealed = true;
  } else if (seals >= 0 && !(seals & F_SEAL_SEAL)) {
    sealed = fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) == 0;
  }
  napi_value v;
  NAPI_OK(napi_get_boolean(env, sealed, &v));
  return v;
}

static napi_value js_fstat(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], "fd", &fd)) return NULL;
  struct stat sb;
  if (fstat(fd, &sb) < 0) {
    throw_errno(env, errno, "fstat");
    return NULL;
  }
  napi_value o, v;
  NAPI_OK(napi_create_object(env, &o));
  NAPI_OK(napi_create_double(env, (double)sb.st_size, &v));
  NAPI_OK(napi_set_named_property(env, o, "size", v));
  NAPI_OK(napi_create_bigint_uint64(env, (uint64_t)sb.st_dev, &v));
  NAPI_OK(napi_set_named_property(env, o, "dev", v));
  NAPI_OK(napi_create_bigint_uint64(env, (uint64_t)sb.st_ino, &v));
  NAPI_OK(napi_set_named_property(env, o, "ino", v));
  NAPI_OK(napi_create_uint32(env, (uint32_t)sb.st_mode, &v));
  NAPI_OK(napi_set_named_property(env, o, "mode", v));
  return o;
}

/*
 * fstatInto(fd, out): fstat without building an object (a DMA_MAP per page under a guest
 * IOMMU does one): out, a Float64Array of at least 5, gets the size (at most 2^53 - 1: larger
 * reads as that, so a bound check against it never passes a byte past the end), then the
 * device and the inode, each as two exact 32-bit halves (high first).
 */
static napi_value js_fstat_into(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int fd;
  if (!get_fd(env, argv[0], "fd", &fd)) return NULL;
  napi_typedarray_type type;
  size_t len = 0;
  void* p = NULL;
  if (napi_get_typedarray_info(env, argv[1], &type, &len, &p, NULL, NULL) != napi_ok || type != napi_float64_array || len < 5) {
    throw_type(env, "out", "a Float64Array with at least 5 elements");
    return NULL;
  }
  struct stat sb;
  if (fstat(fd, &sb) < 0) {
    throw_errno(env, errno, "fstat");
    return NULL;
  }
  double* out = p;
  const uint64_t max_safe = (1ULL << 53) - 1;
  uint64_t size = sb.st_size < 0 ? 0 : (uint64_t)sb.st_size;
  out[0] = (double)(size > max_safe ? max_safe : size);
  out[1] = (double)((uint64_t)sb.st_dev >> 32);
  out[2] = (double)((uint64_t)sb.st_dev & 0xffffffffu);
  out[3] = (double)((uint64_t)sb.st_ino >> 32);
  out[4] = (double)((uint64_t)sb.st_ino & 0xffffffffu);
  return NULL;
}

/* ------------------------------------------------------------------------- mmap, munmap */

/* Mappings are page (often 2 MiB or 1 GiB) aligned: mix the address bits (Fibonacci hashing) so
 * aligned addresses spread over the buckets instead of all landing in one. */
static size_t map_bucket(const addon_state* st, const void* addr) {
  uint64_t x = ((uint64_t)(uintptr_t)addr >> 12) * 0x9E3779B97F4A7C15ULL;
  return (size_t)(x >> 32) & (st->map_buckets - 1);
}

static void map_insert(addon_state* st, mapping* m) {
  mapping** head = &st->maps[map_bucket(st, m->addr)];
  m->next = *head;
  if (m->next) m->next->pprev = &m->next;
  m->pprev = head;
  *head = m;
}

/* Doubles the table (keeps the old one if memory is short: lookups just get longer). */
static void map_grow(addon_state* st) {
  size_t n = st->map_buckets * 2;
  mapping** table = (mapping**)calloc(n, sizeof *table);
  if (table == NULL) return;
  mapping** old = st->maps;
  size_t old_n = st->map_buckets;
  st->maps = table;
  st->map_buckets = n;
  for (size_t b = 0; b < old_n; b++) {
    for (mapping* m = old[b]; m != NULL;) {
      mapping* next = m->next;
      map_insert(st, m);
      m = next;
    }
  }
  free(old);
}

static void map_link(addon_state* st, mapping* m) {
  if (st->map_count >= st->map_buckets * 2) map_grow(st);
  map_insert(st, m);
  st->map_count++;
}

static void map_unlink(mapping* m) {
  if (m->pprev == NULL) return;
  *m->pprev = m->next;
  if (m->next) m->next->pprev = m->pprev;
  m->next = NULL;
  m->pprev = NULL;
  if (m->st != NULL) m->st->map_count--;
}

/* ArrayBuffer finalizer: GC'd (or env teardown) without an explicit munmap(). */
/*
 * V8 counts every ArrayBuffer's length as external memory and starts a GC each time the count
 * grows by some tens of MiB ("external memory pressure"). A mapping of a client's file is not
 * memory this process allocated (its pages belong to the file, and it is unmapped explicitly),
 * so mmap() takes a small mapping's length back out of the count before V8 adds it, and munmap
 * puts it back after V8 removed it: thousands of small windows then cost no GC at all. The
 * count dips by the length meanwhile, which V8 also reads as growth since its last GC; a dip
 * of a few MiB stays far below its thresholds, one of a GiB would not, so large mappings are
 * left counted as V8 counts them (one GC when made, none when unmapped).
 */
#define UNCOUNTED_MAX (32u << 20)
static void uncount(napi_env env, size_t len) {
  int64_t ignored;
  napi_adjust_external_memory(env, -(int64_t)len, &ignored);
}
static void recount(napi_env env, size_t len) {
  int64_t ignored;
  napi_adjust_external_memory(env, (int64_t)len, &ignored);
}

static void mapping_finalize(napi_env env, void* data, void* hint) {
  mapping* m = (mapping*)hint;
  if (!m->unmapped) {
    munmap(m->addr, m->len);
    m->unmapped = 1;
    if (m->uncounted && m->st != NULL && !m->st->tearing_down) recount(env, m->len); /* V8 uncounted the buffer */
  }
  if (m->st != NULL) map_unlink(m);
  free(m);
}

static napi_value js_mmap(napi_env env, napi_callback_info info) {
  GET_ARGS(5);
  int fd;
  int64_t offset, length, prot;
  bool priv = false;
  napi_valuetype t5;
  NAPI_OK(napi_typeof(env, argv[4], &t5));
  if (!get_fd(env, argv[0], "fd", &fd) || !get_integer(env, argv[1], "offset", 0, MAX_SAFE_INTEGER, &offset) ||
      !get_integer(env, argv[2], "length", 0, MAX_SAFE_INTEGER, &length) ||
      !get_integer(env, argv[3], "prot", 0, 0xffff, &prot) || (t5 != napi_undefined && !get_bool(env, argv[4], "private", &priv))) {
    return NULL;
  }
  /* offset page aligned, 0 < length < 4 GiB, prot PROT_READ or PROT_READ|PROT_WRITE (a
   * PROT_NONE or write-only mapping would crash the process on access from JS). */
  if (offset % st->page_size != 0 || length < 1 || length > 0xffffffffLL ||
      (prot != PROT_READ && prot != (PROT_READ | PROT_WRITE))) {
    throw_errno(env, EINVAL, "mmap");
    return NULL;
  }
  mapping* m = (mapping*)calloc(1, sizeof *m);
  if (m == NULL) {
    throw_errno(env, ENOMEM, "mmap");
    return NULL;
  }
  /* MAP_PRIVATE: stores land in private copies of the pages, never in the file */
  void* a = mmap(NULL, (size_t)length, (int)prot, priv ? MAP_PRIVATE : MAP_SHARED, fd, (off_t)offset);
  if (a == MAP_FAILED) {
    int e = errno;
    free(m);
    throw_errno(env, e, "mmap");
    return NULL;
  }
  m->addr = a;
  m->len = (size_t)length;
  m->st = st;
  napi_value ab;
  m->uncounted = (size_t)length <= UNCOUNTED_MAX;
  if (m->uncounted) uncount(env, (size_t)length); /* before V8 counts the buffer: the count never jumps */
  if (napi_create_external_arraybuffer(env, a, (size_t)length, mapping_finalize, m, &ab) != napi_ok) {
    if (m->uncounted) recount(env, (size_t)length);
    munmap(a, (size_t)length);
    free(m);
    throw_napi(env);
    return NULL;
  }
  map_link(st, m);
  return ab;
}

static napi_value js_munmap(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  bool is_ab = false, detached = false;
  if (napi_is_arraybuffer(env, argv[0], &is_ab) != napi_ok || !is_ab) {
    throw_type(env, "buf", "an ArrayBuffer returned by mmap()");
    return NULL;
  }
  NAPI_OK(napi_is_detached_arraybuffer(env, argv[0], &detached));
  if (detached) return NULL; /* already unmapped (or detached otherwise): nothing to do */
  void* data = NULL;
  size_t len = 0;
  NAPI_OK(napi_get_arraybuffer_info(env, argv[0], &data, &len));
  mapping* m = data != NULL ? st->maps[map_bucket(st, data)] : NULL;
  while (m != NULL && !(m->addr == data && m->len == len)) m = m->next;
  if (m == NULL) {
    throw_type(env, "buf", "an ArrayBuffer returned by mmap()");
    return NULL;
  }
  void* addr = m->addr;
  size_t mlen = m->len;
  int uncounted = m->uncounted;
  /* Mark first: once detached, the finalizer may run and must not unmap a second time. */
  map_unlink(m);
  m->unmapped = 1;
  if (napi_detach_arraybuffer(env, argv[0]) != napi_ok) {
    m->unmapped = 0;
    map_link(st, m);
    throw_napi(env);
    return NULL;
  }
  /* No JS view can reach the memory any more: unmap it. (m may be freed by now.) */
  if (uncounted) recount(env, mlen); /* V8 uncounted the buffer when it was detached */
  if (munmap(addr, mlen) < 0) throw_errno(env, errno, "munmap");
  return NULL;
}

/* --------------------------------------------------------------- SIGBUS-safe copies */

/*
 * copyFromMapping / copyToMapping copy between a mapping made by mmap() and a buffer, turning a
 * SIGBUS (the client truncated a file it shared and the page is gone) into a failed copy
 * instead of the death of the process. A process-wide SIGBUS handler siglongjmps back into the
 * copy when a thread-local jump buffer says one of our copies is running on this thread;
 * otherwise it hands the signal to the handler that was there before (or restores the default
 * action and returns, so the faulting access runs again and kills the process as before).
 * SA_NODEFER keeps SIGBUS unblocked after the jump, without saving the signal mask (which
 * would cost a system call per copy).
 */
static __thread sigjmp_buf* volatile bus_jmp; /* volatile: the stores around memcpy must stay */
static struct sigaction bus_old;
static pthread_once_t bus_once = PTHREAD_ONCE_INIT;
static int bus_installed;

static void bus_handler(int sig, siginfo_t* si, void* uc) {
  sigjmp_buf* j = bus_jmp;
  if (j != NULL) {
    bus_jmp = NULL;
    siglongjmp(*j, 1);
  }
  if (bus_old.sa_flags & SA_SIGINFO) {
    if (bus_old.sa_sigaction != NULL) {
      bus_old.sa_sigaction(sig, si, uc);
      return;
    }
  } else if (bus_old.sa_handler != SIG_DFL && bus_old.sa_handler != SIG_IGN) {
    bus_old.sa_handler(sig);
    return;
  }
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGBUS, &dfl, NULL);
}

static void bus_install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = bus_handler;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  bus_installed = sigaction(SIGBUS, &sa, &bus_old) == 0;
}

/* memcpy that returns 0, or EFAULT when a page faulted with SIGBUS on the way. */
static int guarded_copy(void* dst, const void* src, size_t n) {
  sigjmp_buf j;
  bus_jmp = NULL; /* first touch of the thread-local outside any signal handler */
  if (sigsetjmp(j, 0) != 0) return EFAULT; /* the handler cleared bus_jmp */
  bus_jmp = &j;
  memcpy(dst, src, n);
  bus_jmp = NULL;
  return 0;
}

/* copyFromMapping(buf, offset, dst) / copyToMapping(buf, offset, src): buf from mmap(). */
static napi_value mapping_copy(napi_env env, napi_callback_info info, bool to_mapping) {
  GET_ARGS(3);
  const char* name = to_mapping ? "copyToMapping" : "copyFromMapping";
  bool is_ab = false, detached = false;
  if (napi_is_arraybuffer(env, argv[0], &is_ab) != napi_ok || !is_ab) {
    throw_type(env, "buf", "an ArrayBuffer returned by mmap()");
    return NULL;
  }
  NAPI_OK(napi_is_detached_arraybuffer(env, argv[0], &detached));
  void* base = NULL;
  size_t blen = 0;
  if (!detached) NAPI_OK(napi_get_arraybuffer_info(env, argv[0], &base, &blen));
  int64_t offset;
  if (!get_integer(env, argv[1], "offset", 0, MAX_SAFE_INTEGER, &offset)) return NULL;
  void* data = NULL;
  size_t n = 0;
  if (!get_view(env, argv[2], &data, &n)) {
    throw_type(env, to_mapping ? "src" : "dst", "an ArrayBufferView");
    return NULL;
  }
  mapping* m = base != NULL ? st->maps[map_bucket(st, base)] : NULL;
  while (m != NULL && !(m->addr == base && m->len == blen)) m = m->next;
  if (m == NULL) {
    if (detached) throw_errno(env, EFAULT, name); /* unmapped meanwhile */
    else throw_type(env, "buf", "an ArrayBuffer returned by mmap()");
    return NULL;
  }
  if ((uint64_t)offset > blen || n > blen - (size_t)offset) {
    throw_range(env, "offset", "within the mapping");
    return NULL;
  }
  if (n == 0) return make_bool(env, true);
  pthread_once(&bus_once, bus_install);
  if (!bus_installed) {
    throw_errno(env, ENOTSUP, name);
    return NULL;
  }
  char* at = (char*)base + offset;
  int err = to_mapping ? guarded_copy(at, data, n) : guarded_copy(data, at, n);
  return make_bool(env, err == 0);
}

static napi_value js_copy_from_mapping(napi_env env, napi_callback_info info) { return mapping_copy(env, info, false); }
static napi_value js_copy_to_mapping(napi_env env, napi_callback_info info) { return mapping_copy(env, info, true); }

/* ------------------------------------------------------------------------------ eventfd */

static napi_value js_eventfd(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int64_t initval;
  bool sem;
  if (!get_integer(env, argv[0], "initval", 0, 4294967295.0, &initval) || !get_bool(env, argv[1], "semaphore", &sem)) {
    return NULL;
  }
  int fd = eventfd((unsigned int)initval, EFD_CLOEXEC | EFD_NONBLOCK | (sem ? EFD_SEMAPHORE : 0));
  if (fd < 0) {
    throw_errno(env, errno, "eventfd");
    return NULL;
  }
  return make_int(env, fd);
}

/* Reads (and so resets) the counter of the eventfd argv[0] into *v; 0 when it was zero
 * (EAGAIN: a successful read never gives 0). False with an exception pending on error. */
static bool eventfd_read_arg(napi_env env, napi_callback_info info, uint64_t* v) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
    throw_napi(env);
    return false;
  }
  int fd;
  if (!get_fd(env, argv[0], "fd", &fd)) return false; /* a missing argument is padded with undefined */
  ssize_t n;
  RETRY_EINTR(n, read(fd, v, sizeof *v));
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      *v = 0;
      return true;
    }
    throw_errno(env, errno, "read");
    return false;
  }
  if (n != (ssize_t)sizeof *v) {
    throw_errno(env, EIO, "read");
    return false;
  }
  return true;
}

static napi_value js_eventfd_read(napi_env env, napi_callback_info info) {
  uint64_t v;
  if (!eventfd_read_arg(env, info, &v)) return NULL;
  napi_value r;
  NAPI_OK(napi_create_bigint_uint64(env, v, &r));
  return r;
}

static napi_value js_eventfd_drain(napi_env env, napi_callback_info info) {
  uint64_t v;
  if (!eventfd_read_arg(env, info, &v)) return NULL;
  return make_bool(env, v != 0);
}

static napi_value js_eventfd_write(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int fd;
  uint64_t v;
  if (!get_fd(env, argv[0], "fd", &fd) || !get_eventfd_value(env, argv[1], "value", 0, &v)) return NULL;
  ssize_t n;
  RETRY_EINTR(n, write(fd, &v, sizeof v));
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_bool(env, false);
    throw_errno(env, errno, "write");
    return NULL;
  }
  return make_bool(env, true);
}

/* Is fd an eventfd? /proc/self/fd/N of an eventfd reads "anon_inode:[eventfd]" (a file's link
 * is an absolute path, a pipe's "pipe:[ino]", a socket's "socket:[ino]"). */
static napi_value js_is_eventfd(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  int fd;
  if (!get_fd(env, argv[0], "fd", &fd)) return NULL;
  if (fd < 0) return make_bool(env, false);
  char path[48], link[32];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, link, sizeof link - 1);
  if (n < 0) {
    throw_errno(env, errno == ENOENT ? EBADF : errno, "readlink");
    return NULL;
  }
  link[n] = '\0';
  return make_bool(env, strcmp(link, "anon_inode:[eventfd]") == 0);
}

/*
 * eventfdSignal: adds to an eventfd counter without ever waiting.
 *
 * write() on an eventfd blocks while the counter cannot take the value (it is at most
 * 2^64 - 2), unless the fd is O_NONBLOCK; that flag belongs to the open file description we
 * share with the peer, which can clear it at any time, eventfds cannot be reopened (ENXIO)
 * and pwritev2(RWF_NOWAIT) is not supported on them (EOPNOTSUPP). So a write that would block
 * is cut short instead: a one-shot per-thread POSIX timer (SIGEV_THREAD_ID) delivers a
 * real-time signal whose handler, when it lands inside our write, siglongjmps out of it; the
 * kernel abandons a write interrupted while waiting, with nothing written. The timer is armed
 * for GUARD_NS and only re-armed when less than GUARD_REARM_NS is left, so a stream of writes
 * costs one clock_gettime (vDSO) each and a timer_settime every few milliseconds. When it
 * expires outside a write the handler returns at once (SA_RESTART: an interrupted system call
 * restarts, as with the signals libuv handles). The signal number is picked once per process
 * (the highest real-time signal nobody handles) and its handler is process-wide; everything
 * else is per env.
 */
#define GUARD_NS 2000000LL       /* a write that would block is cut short within 2 ms */
#define GUARD_REARM_NS 1000000LL /* re-arm when less than this is left */

struct signal_guard {
  timer_t timer;
  int64_t armed_until; /* CLOCK_MONOTONIC ns; the timer does not expire before */
  volatile sig_atomic_t in_write;
  volatile sig_atomic_t expired; /* the timer fired during this write, outside the system call */
  sigjmp_buf jmp;
};

/*
 * Where the write may be cut short. A jump is only safe while the write has not happened: the
 * signal can also land just after the system call returned (a thread preempted there for the
 * whole GUARD_NS), and jumping then would report a completed write as cut short, so it would
 * be written twice (one interrupt delivered twice). So the write is a tiny assembly routine
 * with known bounds, as musl does for cancellation points: the handler jumps only when the
 * interrupted PC lies in [guard_cp_begin, guard_cp_end), that is before the system call
 * instruction, or on it (the kernel rewinds the PC to it when a waiting write is interrupted
 * with SA_RESTART: nothing was written). Anywhere else it sets `expired`, which the routine
 * checks before it enters the kernel, so a timer that fired early cannot leave the write
 * blocked without a guard. guard_write(flag, fd, buf, len) returns the raw result (-errno on
 * failure, -EINTR when `flag` was set).
 */
#if defined(__x86_64__) || defined(__aarch64__)
#include <ucontext.h>
#define GUARD_HAVE_CP 1
long vfu_guard_write(volatile sig_atomic_t* expired, long fd, const void* buf, long len)
    __attribute__((visibility("hidden")));
extern const char vfu_guard_cp_begin[] __attribute__((visibility("hidden")));
extern const char vfu_guard_cp_end[] __attribute__((visibility("hidden")));
#if defined(__x86_64__)
__asm__(
    ".text\n"
    ".globl vfu_guard_write\n.hidden vfu_guard_write\n.type vfu_guard_write,@function\n"
    ".globl vfu_guard_cp_begin\n.hidden vfu_guard_cp_begin\n"
    ".globl vfu_guard_cp_end\n.hidden vfu_guard_cp_end\n"
    "vfu_guard_write:\n"
    "vfu_guard_cp_begin:\n"
    "  movl (%rdi), %eax\n"
    "  testl %eax, %eax\n"
    "  jnz 1f\n"
    "  mov %rsi, %rdi\n"
    "  mov %rdx, %rsi\n"
    "  mov %rcx, %rdx\n"
    "  mov $1, %eax\n" /* SYS_write */
    "  syscall\n"
    "vfu_guard_cp_end:\n"
    "  ret\n"
    "1:\n"
    "  mov $-4, %rax\n" /* -EINTR */
    "  ret\n"
    ".size vfu_guard_write, .-vfu_guard_write\n");
#define GUARD_PC(uc) ((uintptr_t)((ucontext_t*)(uc))->uc_mcontext.gregs[REG_RIP])
#else
__asm__(
    ".text\n"
    ".globl vfu_guard_write\n.hidden vfu_guard_write\n.type vfu_guard_write,%function\n"
    ".globl vfu_guard_cp_begin\n.hidden vfu_guard_cp_begin\n"
    ".globl vfu_guard_cp_end\n.hidden vfu_guard_cp_end\n"
    "vfu_guard_write:\n"
    "vfu_guard_cp_begin:\n"
    "  ldr w9, [x0]\n"
    "  cbnz w9, 1f\n"
    "  mov x0, x1\n"
    "  mov x1, x2\n"
    "  mov x2, x3\n"
    "  mov x8, #64\n" /* SYS_write */
    "  svc #0\n"
    "vfu_guard_cp_end:\n"
    "  ret\n"
    "1:\n"
    "  mov x0, #-4\n" /* -EINTR */
    "  ret\n"
    ".size vfu_guard_write, .-vfu_guard_write\n");
#define GUARD_PC(uc) ((uintptr_t)((ucontext_t*)(uc))->uc_mcontext.pc)
#endif
#else
#define GUARD_HAVE_CP 0 /* other CPUs: the jump is taken anywhere in the write (the old rule) */
#endif

static pthread_once_t guard_once = PTHREAD_ONCE_INIT;
static int guard_signo; /* set once by guard_install; 0 when no signal was free */

static void guard_handler(int sig, siginfo_t* si, void* uc) {
  (void)sig;
  (void)uc; /* unused where GUARD_HAVE_CP is 0 */
  if (si == NULL || si->si_code != SI_TIMER) return;
  signal_guard* g = (signal_guard*)si->si_value.sival_ptr;
  if (g == NULL || !g->in_write) return;
#if GUARD_HAVE_CP
  uintptr_t pc = GUARD_PC(uc);
  if (pc < (uintptr_t)vfu_guard_cp_begin || pc >= (uintptr_t)vfu_guard_cp_end) {
    g->expired = 1;
    return;
  }
#endif
  g->in_write = 0;
  siglongjmp(g->jmp, 1);
}

static void guard_install(void) {
  for (int s = SIGRTMAX - 1; s > SIGRTMIN + 2; s--) {
    struct sigaction old;
    if (sigaction(s, NULL, &old) < 0 || old.sa_handler != SIG_DFL) continue;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = guard_handler;
    /* SA_NODEFER: the signal is not blocked in the handler, so jumping out of it (without
     * restoring a signal mask, which would cost a system call per write) leaves it usable */
    sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(s, &sa, NULL) == 0) {
      guard_signo = s;
      return;
    }
  }
}

static signal_guard* guard_get(addon_state* st, int* err) {
  if (st->guard != NULL) return st->guard;
  pthread_once(&guard_once, guard_install);
  if (guard_signo == 0) {
    *err = EAGAIN;
    return NULL;
  }
  signal_guard* g = (signal_guard*)calloc(1, sizeof *g);
  if (g == NULL) {
    *err = ENOMEM;
    return NULL;
  }
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = guard_signo;
  sev.sigev_value.sival_ptr = g;
  sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
  if (timer_create(CLOCK_MONOTONIC, &sev, &g->timer) < 0) {
    *err = errno;
    free(g);
    return NULL;
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, guard_signo);
  pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  st->guard = g;
  return g;
}

/* timer_delete discards a pending signal of the timer, so the handler never sees g again. */
static void guard_free(signal_guard* g) {
  if (g == NULL) return;
  timer_delete(g->timer);
  free(g);
}

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* One write attempt: 1 added; 0 cut short by the timer; 2 EAGAIN; -errno failed. */
static int guarded_write_once(signal_guard* g, int fd, uint64_t v) {
  if (sigsetjmp(g->jmp, 0) != 0) {
    g->armed_until = 0; /* the timer has expired */
    return 0;
  }
  g->expired = 0;
  g->in_write = 1;
  int64_t now = mono_ns();
  if (g->armed_until - now < GUARD_REARM_NS) {
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    its.it_value.tv_nsec = GUARD_NS;
    if (timer_settime(g->timer, 0, &its, NULL) < 0) {
      int e = errno;
      g->in_write = 0;
      return -e;
    }
    g->armed_until = now + GUARD_NS;
  }
  /* the raw system call: glibc's write() is a cancellation point whose bookkeeping a jump
   * out of it would skip */
  long n;
  int e;
#if GUARD_HAVE_CP
  do {
    n = vfu_guard_write(&g->expired, fd, &v, (long)sizeof v);
  } while (n == -EINTR && !g->expired); /* another signal without SA_RESTART: try again */
  g->in_write = 0;
  e = n < 0 ? (int)-n : 0;
  if (n < 0) n = -1;
  if (n == -1 && e == EINTR) { /* the timer fired before the system call: nothing written */
    g->armed_until = 0;
    return 0;
  }
#else
  RETRY_EINTR(n, syscall(SYS_write, fd, &v, sizeof v));
  e = errno;
  g->in_write = 0;
#endif
  if (n == (long)sizeof v) return 1;
  if (n < 0 && (e == EAGAIN || e == EWOULDBLOCK)) return 2;
  return n < 0 ? -e : -EIO;
}

/* 1: added; 0: the counter is full (it is then readable: the peer is signalled already);
 * -errno: failed. A cut-short write counts as "full" only when poll() confirms the counter has
 * no room; otherwise the timer merely expired at a bad moment (a preempted thread) and the
 * write is tried again. */
static int guarded_write(signal_guard* g, int fd, uint64_t v) {
  for (int attempt = 0; attempt < 4; attempt++) {
    int r = guarded_write_once(g, fd, v);
    if (r == 1) return 1;
    if (r == 2) return 0;
    if (r < 0) return r;
    struct pollfd p = {fd, POLLOUT, 0};
    int k;
    RETRY_EINTR(k, poll(&p, 1, 0));
    if (k < 0) return -errno;
    if (k == 0 || !(p.revents & POLLOUT)) return 0;
  }
  return 0;
}

static napi_value js_eventfd_signal(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int fd;
  uint64_t value;
  if (!get_fd(env, argv[0], "fd", &fd) || !get_eventfd_value(env, argv[1], "value", 1, &value)) return NULL;
  int err = 0;
  signal_guard* g = guard_get(st, &err);
  if (g == NULL) {
    throw_errno(env, err, "timer_create");
    return NULL;
  }
  int r = guarded_write(g, fd, value);
  if (r < 0) {
    throw_errno(env, -r, "write");
    return NULL;
  }
  return make_bool(env, r == 1);
}

/* ------------------------------------------------------------------------------ pollers */

static size_t poll_bucket(int fd) { return (unsigned)fd % POLL_BUCKETS; }

static void poller_link(addon_state* st, poller* p) {
  poller** head = &st->pollers[poll_bucket(p->fd)];
  p->next = *head;
  if (p->next) p->next->pprev = &p->next;
  p->pprev = head;
  *head = p;
}

/* The started poller of this env watching fd, other than p. */
static poller* poller_active_on(addon_state* st, int fd, const poller* p) {
  for (poller* q = st->pollers[poll_bucket(fd)]; q != NULL; q = q->next) {
    if (q != p && q->fd == fd && q->active && !q->closing) return q;
  }
  return NULL;
}

/* libuv's uv_poll_stop()/uv_close() of ANY poll handle removes its fd from the epoll set
 * (uv__platform_invalidate_fd), which silently disarms another handle that is started on
 * the same fd (e.g. an old poller being closed or garbage collected after the fd number was
 * reused). Re-register that handle. */
static void poller_rearm_others(poller* p) {
  if (p->st == NULL || p->st->tearing_down) return;
  poller* q = poller_active_on(p->st, p->fd, p);
  if (q != NULL) uv_poll_start(&q->handle, q->events, q->handle.poll_cb);
}

static void poller_unlink(poller* p) {
  if (p->pprev == NULL) return;
  *p->pprev = p->next;
  if (p->next) p->next->pprev = p->pprev;
  p->next = NULL;
  p->pprev = NULL;
}

/* Drops the Node-API references; needs a live env. */
static void poller_release_js(poller* p) {
  if (p->refs_released) return;
  p->refs_released = 1;
  p->active = 0;
  if (p->self_ref) napi_delete_reference(p->env, p->self_ref);
  if (p->cb_ref) napi_delete_reference(p->env, p->cb_ref);
  if (p->actx) napi_async_destroy(p->env, p->actx);
  p->self_ref = NULL;
  p->cb_ref = NULL;
  p->actx = NULL;
}

/* uv close callback: may run after the env is gone, so it touches no Node-API state except
 * removing the async cleanup hook (whose handle keeps the env alive until then). */
static void poller_on_close(uv_handle_t* h) {
  poller* p = (poller*)h->data;
  addon_state* st = p->st;
  poller_unlink(p);
  if (st != NULL && st->tearing_down && st->cleanup != NULL && --st->pending_closes == 0) {
    napi_async_cleanup_hook_handle hh = st->cleanup;
    st->cleanup = NULL;
    napi_remove_async_cleanup_hook(hh);
  }
  if (p->js_gone) {
    free(p);
  } else {
    p->pprev = NULL;
    p->closing = 2; /* closed; the wrap finalizer frees */
  }
}

static void poller_begin_close(poller* p) {
  if (p->closing) return;
  p->closing = 1;
  p->active = 0;
  uv_close((uv_handle_t*)&p->handle, poller_on_close);
  poller_rearm_others(p);
}

/* napi_wrap finalizer: the JS object is gone (GC or env teardown). */
static void poller_finalize(napi_env env, void* data, void* hint) {
  poller* p = (poller*)data;
  poller_release_js(p);
  p->js_gone = 1;
  if (p->closing == 2) {
    free(p);
  } else {
    poller_begin_close(p);
  }
}

static void poller_on_poll(uv_poll_t* h, int status, int events) {
  poller* p = (poller*)h->data;
  if (p->closing || p->refs_released) return;
  napi_env env = p->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value self = NULL, cb = NULL, argv[2], result;
  napi_get_reference_value(env, p->self_ref, &self);
  napi_get_reference_value(env, p->cb_ref, &cb);
  if (status < 0 && p->active) {
    /* libuv stopped the handle after an error: drop the keep-alive (self is on the stack). */
    p->active = 0;
    napi_reference_unref(env, p->self_ref, NULL);
  }
  if (self != NULL && cb != NULL && napi_create_int32(env, status, &argv[0]) == napi_ok &&
      napi_create_int32(env, events, &argv[1]) == napi_ok) {
    /* make_callback runs nextTicks and the microtask queue afterwards. p is not used after it
     * returns (the callback may have closed the poller). */
    if (napi_make_callback(env, p->actx, self, cb, 2, argv, &result) != napi_ok) {
      bool pending = false;
      napi_value exc;
      if (napi_is_exception_pending(env, &pending) == napi_ok && pending &&
          napi_get_and_clear_last_exception(env, &exc) == napi_ok) {
        /* surfaces as process 'uncaughtException' (or crashes the process as usual) */
        napi_fatal_exception(env, exc);
      }
    }
  }
  napi_close_handle_scope(env, scope);
}

static poller* this_poller(napi_env env, napi_callback_info info, size_t* argc, napi_value* argv) {
  napi_value thisv;
  void* data = NULL;
  bool ok = false;
  if (napi_get_cb_info(env, info, argc, argv, &thisv, NULL) != napi_ok) {
    throw_napi(env);
    return NULL;
  }
  if (napi_check_object_type_tag(env, thisv, &POLLER_TAG, &ok) != napi_ok || !ok ||
      napi_unwrap(env, thisv, &data) != napi_ok || data == NULL) {
    napi_throw_type_error(env, "ERR_INVALID_THIS", "Value of \"this\" must be of type NativePoller");
    return NULL;
  }
  return (poller*)data;
}

static void poller_do_stop(poller* p) {
  /* Not started (or stopped by libuv after an error): nothing to do, and calling
   * uv_poll_stop would disarm another handle on the same fd. */
  if (p->closing || !p->active) return;
  uv_poll_stop(&p->handle);
  p->active = 0;
  napi_reference_unref(p->env, p->self_ref, NULL);
  poller_rearm_others(p);
}

static napi_value poller_start(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  poller* p = this_poller(env, info, &argc, argv);
  if (p == NULL) return NULL;
  if (argc < 1) napi_get_undefined(env, &argv[0]);
  int64_t events;
  if (!get_integer(env, argv[0], "events", 0, UV_READABLE | UV_WRITABLE | UV_DISCONNECT, &events)) return NULL;
  if (p->closing || p->refs_released) {
    napi_throw_error(env, "ERR_INVALID_STATE", "NativePoller is closed");
    return NULL;
  }
  if (events == 0) {
    poller_do_stop(p);
    return NULL;
  }
  if (!p->active && poller_active_on(p->st, p->fd, p) != NULL) {
    /* libuv supports one started poll handle per fd and loop */
    throw_uv(env, UV_EEXIST, "uv_poll_start");
    return NULL;
  }
  int r = uv_poll_start(&p->handle, (int)events, poller_on_poll);
  if (r != 0) {
    throw_uv(env, r, "uv_poll_start");
    return NULL;
  }
  p->events = (int)events;
  if (!p->active) {
    p->active = 1;
    NAPI_OK(napi_reference_ref(env, p->self_ref, NULL));
  }
  return NULL;
}

static napi_value poller_stop(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  poller* p = this_poller(env, info, &argc, NULL);
  if (p != NULL) poller_do_stop(p);
  return NULL;
}

static napi_value poller_close(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  poller* p = this_poller(env, info, &argc, NULL);
  if (p == NULL || p->closing) return NULL;
  poller_do_stop(p);
  poller_begin_close(p);
  return NULL;
}

/* ownFd(): the poller's owner closes the fd right after the poller; if the env is torn down
 * first (a worker thread that died or was terminated), the cleanup hook closes it, so a client
 * of a dead worker sees its connection end instead of hanging on a leaked fd. */
static napi_value poller_own_fd(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  poller* p = this_poller(env, info, &argc, NULL);
  if (p != NULL && !p->closing) p->owns_fd = 1;
  return NULL;
}

static napi_value poller_ref(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  poller* p = this_poller(env, info, &argc, NULL);
  if (p != NULL && !p->closing) uv_ref((uv_handle_t*)&p->handle);
  return NULL;
}

static napi_value poller_unref(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  poller* p = this_poller(env, info, &argc, NULL);
  if (p != NULL && !p->closing) uv_unref((uv_handle_t*)&p->handle);
  return NULL;
}

static napi_value poller_constructor(napi_env env, napi_callback_info info) {
  napi_value thisv;
  addon_state* st = NULL;
  NAPI_OK(napi_get_cb_info(env, info, NULL, NULL, &thisv, (void**)&st));
  if (st == NULL || !st->constructing) {
    napi_throw_type_error(env, "ERR_ILLEGAL_CONSTRUCTOR", "Illegal constructor: use createPoller()");
    return NULL;
  }
  return thisv;
}

static napi_value js_create_poller(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int fd;
  if (!get_fd(env, argv[0], "fd", &fd)) return NULL;
  napi_valuetype t;
  NAPI_OK(napi_typeof(env, argv[1], &t));
  if (t != napi_function) {
    throw_type(env, "callback", "of type function");
    return NULL;
  }
  if (st->tearing_down) {
    napi_throw_error(env, "ERR_INVALID_STATE", "environment is shutting down");
    return NULL;
  }
  poller* p = (poller*)calloc(1, sizeof *p);
  if (p == NULL) {
    throw_errno(env, ENOMEM, "uv_poll_init");
    return NULL;
  }
  int r = uv_poll_init(st->loop, &p->handle, fd);
  if (r != 0) {
    free(p);
    throw_uv(env, r, "uv_poll_init");
    return NULL;
  }
  p->handle.data = p;
  p->st = st;
  p->env = env;
  p->fd = fd;
  p->js_gone = 1; /* until the wrap succeeds, closing the handle frees p */
  poller_link(st, p);

  napi_value ctor, obj, name;
  napi_status s = napi_get_reference_value(env, st->poller_ctor, &ctor);
  if (s == napi_ok) {
    st->constructing = 1;
    s = napi_new_instance(env, ctor, 0, NULL, &obj);
    st->constructing = 0;
  }
  if (s == napi_ok) {
    napi_property_descriptor d = {"callback", NULL, NULL, NULL, NULL, argv[1], napi_default, NULL};
    s = napi_define_properties(env, obj, 1, &d);
  }
  if (s == napi_ok) s = napi_type_tag_object(env, obj, &POLLER_TAG);
  if (s == napi_ok) s = napi_create_reference(env, obj, 0, &p->self_ref);
  if (s == napi_ok) s = napi_create_reference(env, argv[1], 0, &p->cb_ref);
  if (s == napi_ok) s = napi_create_string_utf8(env, "VfioUserPoller", NAPI_AUTO_LENGTH, &name);
  if (s == napi_ok) s = napi_async_init(env, obj, name, &p->actx);
  if (s == napi_ok) s = napi_wrap(env, obj, p, poller_finalize, NULL, NULL);
  if (s != napi_ok) {
    throw_napi(env);
    poller_release_js(p);
    poller_begin_close(p);
    return NULL;
  }
  p->js_gone = 0;
  return obj;
}

/* ------------------------------------------------------------------ env lifecycle, init */

/* Runs at env teardown (worker exit/terminate, process exit): close every uv handle and keep
 * the env alive until their close callbacks have run. */
static void on_env_cleanup(napi_async_cleanup_hook_handle handle, void* arg) {
  addon_state* st = (addon_state*)arg;
  st->tearing_down = 1;
  st->cleanup = handle;
  int pending = 0;
  for (size_t b = 0; b < POLL_BUCKETS; b++) {
    for (poller* p = st->pollers[b]; p != NULL; p = p->next) {
      int fd = p->owns_fd && !p->closing ? p->fd : -1; /* JS never closed it (see ownFd) */
      poller_release_js(p);
      poller_begin_close(p);
      if (fd >= 0) close(fd); /* after uv_close took it out of the epoll set */
      pending++;
    }
  }
  st->pending_closes = pending;
  if (pending == 0) {
    st->cleanup = NULL;
    napi_remove_async_cleanup_hook(handle);
  }
}

static void state_finalize(napi_env env, void* data, void* hint) {
  addon_state* st = (addon_state*)data;
  for (size_t b = 0; b < st->map_buckets; b++) {
    mapping* m = st->maps[b];
    while (m != NULL) {
      mapping* next = m->next;
      /* The ArrayBuffers cannot be used any more; their finalizers (if they still run) see
       * unmapped = 1 and st = NULL and only free the record. */
      if (!m->unmapped) {
        munmap(m->addr, m->len);
        m->unmapped = 1;
      }
      m->st = NULL;
      m->next = NULL;
      m->pprev = NULL;
      m = next;
    }
  }
  for (size_t b = 0; b < POLL_BUCKETS; b++) {
    for (poller* p = st->pollers[b]; p != NULL;) { /* not expected: the cleanup hook closed them */
      poller* next = p->next;
      p->st = NULL;
      p->next = NULL;
      p->pprev = NULL;
      p = next;
    }
  }
  if (st->poller_ctor) napi_delete_reference(env, st->poller_ctor);
  guard_free(st->guard);
  free(st->maps);
  free(st);
}

#define METHOD(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_enumerable, st}

static napi_value define_const(napi_env env, int32_t v) {
  napi_value r;
  napi_create_int32(env, v, &r);
  return r;
}

NAPI_MODULE_INIT() {
  addon_state* st = (addon_state*)calloc(1, sizeof *st);
  if (st == NULL) {
    napi_throw_error(env, "ENOMEM", "vfio_user_native: out of memory");
    return NULL;
  }
  st->env = env;
  st->page_size = sysconf(_SC_PAGESIZE);
  st->map_buckets = MAP_BUCKETS_MIN;
  st->maps = (mapping**)calloc(st->map_buckets, sizeof *st->maps);
  if (st->maps == NULL) {
    free(st);
    napi_throw_error(env, "ENOMEM", "vfio_user_native: out of memory");
    return NULL;
  }
  if (napi_set_instance_data(env, st, state_finalize, NULL) != napi_ok) {
    free(st->maps);
    free(st);
    throw_napi(env);
    return NULL;
  }
  NAPI_OK(napi_get_uv_event_loop(env, &st->loop));

  napi_property_descriptor proto[] = {
      {"start", NULL, poller_start, NULL, NULL, NULL, napi_default_method, NULL},
      {"stop", NULL, poller_stop, NULL, NULL, NULL, napi_default_method, NULL},
      {"close", NULL, poller_close, NULL, NULL, NULL, napi_default_method, NULL},
      {"ref", NULL, poller_ref, NULL, NULL, NULL, napi_default_method, NULL},
      {"unref", NULL, poller_unref, NULL, NULL, NULL, napi_default_method, NULL},
      {"ownFd", NULL, poller_own_fd, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_value ctor;
  NAPI_OK(napi_define_class(env, "NativePoller", NAPI_AUTO_LENGTH, poller_constructor, st,
                            sizeof proto / sizeof proto[0], proto, &ctor));
  NAPI_OK(napi_create_reference(env, ctor, 1, &st->poller_ctor));
  NAPI_OK(napi_add_async_cleanup_hook(env, on_env_cleanup, st, &st->cleanup));

  napi_property_descriptor props[] = {
      METHOD("socketpair", js_socketpair),
      METHOD("listen", js_listen),
      METHOD("accept", js_accept),
      METHOD("connect", js_connect),
      METHOD("setNonBlocking", js_set_nonblocking),
      METHOD("setCloexec", js_set_cloexec),
      METHOD("sendmsg", js_sendmsg),
      METHOD("recvmsg", js_recvmsg),
      METHOD("close", js_close),
      METHOD("dup", js_dup),
      METHOD("memfdCreate", js_memfd_create),
      METHOD("ftruncate", js_ftruncate),
      METHOD("send", js_send),
      METHOD("sealShrink", js_seal_shrink),
      METHOD("fstat", js_fstat),
      METHOD("fstatInto", js_fstat_into),
      METHOD("mmap", js_mmap),
      METHOD("munmap", js_munmap),
      METHOD("copyFromMapping", js_copy_from_mapping),
      METHOD("copyToMapping", js_copy_to_mapping),
      METHOD("eventfd", js_eventfd),
      METHOD("eventfdRead", js_eventfd_read),
      METHOD("eventfdDrain", js_eventfd_drain),
      METHOD("eventfdWrite", js_eventfd_write),
      METHOD("eventfdSignal", js_eventfd_signal),
      METHOD("isEventfd", js_is_eventfd),
      METHOD("createPoller", js_create_poller),
      METHOD("waitReadable", vfu_js_wait_readable),
      METHOD("exchange", vfu_js_exchange),
      METHOD("schedYield", vfu_js_sched_yield),
      {"POLL_READABLE", NULL, NULL, NULL, NULL, define_const(env, UV_READABLE), napi_enumerable, NULL},
      {"POLL_WRITABLE", NULL, NULL, NULL, NULL, define_const(env, UV_WRITABLE), napi_enumerable, NULL},
      {"POLL_DISCONNECT", NULL, NULL, NULL, NULL, define_const(env, UV_DISCONNECT), napi_enumerable, NULL},
      {"PAGE_SIZE", NULL, NULL, NULL, NULL, define_const(env, (int32_t)st->page_size), napi_enumerable, NULL},
      {"SCM_MAX_FD", NULL, NULL, NULL, NULL, define_const(env, VFU_SCM_MAX_FD), napi_enumerable, NULL},
  };
  NAPI_OK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}
