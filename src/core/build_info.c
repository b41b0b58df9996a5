/* The build description from the generated header (see build_info.h). */
#include "core/build_info.h"

#include "quiver_build_info.h"

static const qv_build_info info = {
    .version = QV_BUILD_VERSION,
    .commit = QV_BUILD_COMMIT,
    .build_type = QV_BUILD_TYPE,
    .compiler = QV_BUILD_COMPILER,
    .c_flags = QV_BUILD_C_FLAGS,
    .sanitize = QV_BUILD_SANITIZE,
    .backends = QV_BUILD_BACKENDS,
};

const qv_build_info *qv_build_info_get(void) { return &info; }
