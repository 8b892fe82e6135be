{
  "targets": [
    {
      "target_name": "vfio_user_native",
      "sources": ["native/vfio_user_native.c", "native/fastpath.c"],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["NAPI_VERSION=8", "_GNU_SOURCE"]
    }
  ]
}
