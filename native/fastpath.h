/* fastpath.h - the serving fast path (fastpath.c), registered by vfio_user_native.c */
#ifndef VFU_FASTPATH_H
#define VFU_FASTPATH_H
#include <node_api.h>

/* waitReadable(fd, maxMs?) -> boolean: see fastpath.c */
napi_value vfu_js_wait_readable(napi_env env, napi_callback_info info);

#endif
