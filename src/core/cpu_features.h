/* What the CPU can run, detected once (cpuid through the compiler's __builtin_cpu_supports,
 * which also checks that the OS saves the wide registers), and which SIMD path the CPU kernels
 * use: the best the CPU has, or the one forced by the environment variable QUIVER_CPU_ISA
 * (avx512 | avx2 | portable | neon | auto). Every path computes each output value by its own
 * fixed sequence of float operations, so results are reproducible per path, not across paths.
 *
 * The kernels of each path are compiled with that path's target flags in their own files
 * (src/backend/cpu/cpu_kern_<isa>.c), so the binary itself runs on any x86-64. */
#ifndef QV_CORE_CPU_FEATURES_H
#define QV_CORE_CPU_FEATURES_H

#include <stddef.h>

#include "quiver/error.h"

typedef enum qv_cpu_isa {
  QV_CPU_ISA_PORTABLE = 0, /* plain C, any CPU */
  QV_CPU_ISA_AVX2,         /* x86-64 AVX2 + FMA + F16C */
  QV_CPU_ISA_AVX512,       /* x86-64 AVX-512 F/BW/VL (+ BF16/VNNI reported when present) */
  QV_CPU_ISA_NEON,         /* aarch64 Advanced SIMD */
  QV_CPU_ISA_COUNT
} qv_cpu_isa;

typedef struct qv_cpu_features {
  char model[64]; /* brand string ("AMD EPYC ..."), "unknown" when the CPU does not say */
  int avx2, fma, f16c;
  int avx512f, avx512bw, avx512vl, avx512_bf16, avx512_vnni;
  int neon;
} qv_cpu_features;

/* The features of this CPU; detected on the first call (thread-safe), immutable afterwards. */
const qv_cpu_features *qv_cpu_features_get(void);
/* Whether this CPU (and this build) can run the path. */
int qv_cpu_isa_supported(qv_cpu_isa isa);
/* NULL when the CPU backend's opt-in bf16 dot-product matmul (qv_backend_opts.cpu_bf16_dot,
 * AVX512_BF16) can run with path isa on this CPU, else why not (a static string). */
const char *qv_cpu_bf16_dot_unusable(qv_cpu_isa isa);
/* The best supported path. */
qv_cpu_isa qv_cpu_isa_best(void);
/* "avx512", "avx2", "portable", "neon". */
const char *qv_cpu_isa_name(qv_cpu_isa isa);
/* The path to use: QUIVER_CPU_ISA when set (and not "auto"), else the best. An unknown name or
 * a path this CPU cannot run is QV_EINVAL with the reason in err. */
int qv_cpu_isa_select(qv_cpu_isa *out, qv_error *err);
/* One line for logs and `quiver info`: model and the flags that matter, e.g.
 * "AMD EPYC 9R14 (avx2 fma f16c avx512f avx512bw avx512vl avx512_bf16 avx512_vnni)". */
void qv_cpu_features_describe(char *buf, size_t cap);

#endif
