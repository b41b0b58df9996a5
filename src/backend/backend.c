/* Backend selection by name. */
#include "backend/backend.h"

#include <string.h>

int qv_backend_create(const char *name, const qv_backend_opts *opts, qv_backend **out, qv_error *err) {
  qv_backend_opts def = {0};
  if (!opts) opts = &def;
  if (!name || !strcmp(name, "cpu")) return qv_backend_cpu_create(opts, out, err);
  if (!strcmp(name, "cuda")) {
#ifdef QV_HAVE_CUDA
    return qv_backend_cuda_create(opts, out, err);
#else
    return qv_error_set(err, QV_EUNSUPPORTED, "this quiver was built without the CUDA backend (QV_CUDA=OFF or no nvcc)");
#endif
  }
  return qv_error_set(err, QV_EINVAL, "unknown device '%s' (expected cpu or cuda)", name);
}

void qv_backend_destroy(qv_backend *be) {
  if (be) be->ops->destroy(be);
}
