/* --dtype (vLLM's spelling) against a backend's compute type. Each backend computes in one
 * type (cpu: float32, cuda: bfloat16: see act_dtype in backend.h), so a request for another
 * is refused with a clear message rather than silently ignored. */
#include <string.h>

#include "backend/backend.h"

int qv_backend_check_dtype(const qv_backend *be, const char *dtype, qv_error *err) {
  if (!dtype || !strcmp(dtype, "auto")) return 0;
  static const struct {
    const char *name;
    qv_dtype t;
  } names[] = {{"float32", QV_DTYPE_F32}, {"bfloat16", QV_DTYPE_BF16}, {"float16", QV_DTYPE_F16}};
  qv_dtype act = be->ops->act_dtype;
  const char *act_name = "?";
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (names[i].t == act) act_name = names[i].name;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (!strcmp(dtype, names[i].name)) {
      if (names[i].t == act) return 0;
      return qv_error_set(err, QV_EUNSUPPORTED,
                          "--dtype %s is not supported by the %s backend, which computes in %s "
                          "(use --dtype auto or %s)",
                          dtype, be->ops->name ? be->ops->name : "selected", act_name, act_name);
    }
  return qv_error_set(err, QV_EINVAL, "unknown dtype '%s' (auto, float32, bfloat16, float16)", dtype);
}
