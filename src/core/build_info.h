/* What this binary is: version, the git commit it was built from, how it was built and which
 * backends it contains. Baked in at build time (scripts/build-info.cmake); reported by
 * `quiver --version` and GET /version. */
#ifndef QV_CORE_BUILD_INFO_H
#define QV_CORE_BUILD_INFO_H

typedef struct qv_build_info {
  const char *version;   /* "0.1.0" */
  const char *commit;    /* short git hash (+ "-dirty"), or "unknown" outside a git tree */
  const char *build_type;/* CMake build type: Release, Debug, ... */
  const char *compiler;  /* "GNU 12.2.0" */
  const char *c_flags;   /* the C flags of that build type */
  const char *sanitize;  /* "ON" for ASan/UBSan builds */
  const char *backends;  /* comma-separated: "cpu" or "cpu,cuda" */
} qv_build_info;

/* A static description (never freed). */
const qv_build_info *qv_build_info_get(void);

#endif
