/* CPU feature detection and the choice of SIMD path; see cpu_features.h. */
#include "core/cpu_features.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define QV_X86 1
#endif

static qv_cpu_features g_features; /* written once under g_once, read-only afterwards */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void trim(char *s) {
  size_t n = strlen(s);
  while (n && (s[n - 1] == ' ' || s[n - 1] == '\n')) s[--n] = 0;
  size_t i = 0;
  while (s[i] == ' ') i++;
  memmove(s, s + i, n - i + 1);
}

static void detect(void) {
  qv_cpu_features *f = &g_features;
  snprintf(f->model, sizeof f->model, "unknown");
#ifdef QV_X86
  __builtin_cpu_init();
  f->avx2 = __builtin_cpu_supports("avx2");
  f->fma = __builtin_cpu_supports("fma");
  f->avx512f = __builtin_cpu_supports("avx512f");
  f->avx512bw = __builtin_cpu_supports("avx512bw");
  f->avx512vl = __builtin_cpu_supports("avx512vl");
  f->avx512_vnni = __builtin_cpu_supports("avx512vnni");
  f->avx512_bf16 = __builtin_cpu_supports("avx512bf16");
  unsigned a, b, c, d;
  /* F16C: cpuid leaf 1, ecx bit 29 (the builtin has no name for it in every GCC). */
  if (__get_cpuid(1, &a, &b, &c, &d)) f->f16c = (c >> 29) & 1;
  unsigned brand[12];
  if (__get_cpuid(0x80000000u, &a, &b, &c, &d) && a >= 0x80000004u) {
    for (unsigned i = 0; i < 3; i++)
      __get_cpuid(0x80000002u + i, &brand[4 * i], &brand[4 * i + 1], &brand[4 * i + 2], &brand[4 * i + 3]);
    char s[49];
    memcpy(s, brand, 48);
    s[48] = 0;
    trim(s);
    if (s[0]) snprintf(f->model, sizeof f->model, "%s", s);
  }
#elif defined(__aarch64__)
  f->neon = 1; /* Advanced SIMD is mandatory on aarch64 */
#endif
}

const qv_cpu_features *qv_cpu_features_get(void) {
  pthread_once(&g_once, detect);
  return &g_features;
}

int qv_cpu_isa_supported(qv_cpu_isa isa) {
  const qv_cpu_features *f = qv_cpu_features_get();
  switch (isa) {
  case QV_CPU_ISA_PORTABLE: return 1;
#ifdef QV_X86
  case QV_CPU_ISA_AVX2: return f->avx2 && f->fma && f->f16c;
  case QV_CPU_ISA_AVX512: return f->avx512f && f->avx512bw && f->avx512vl && f->fma && f->f16c;
#endif
#ifdef __aarch64__
  case QV_CPU_ISA_NEON: return f->neon;
#endif
  default: return 0;
  }
}

const char *qv_cpu_bf16_dot_unusable(qv_cpu_isa isa) {
#ifdef QV_X86
  if (!qv_cpu_features_get()->avx512_bf16) return "this CPU has no avx512_bf16";
  if (isa != QV_CPU_ISA_AVX512) return "the chosen SIMD path is not avx512";
  return NULL;
#else
  (void)isa;
  return "not an x86-64 build";
#endif
}

qv_cpu_isa qv_cpu_isa_best(void) {
  static const qv_cpu_isa order[] = {QV_CPU_ISA_AVX512, QV_CPU_ISA_AVX2, QV_CPU_ISA_NEON};
  for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
    if (qv_cpu_isa_supported(order[i])) return order[i];
  return QV_CPU_ISA_PORTABLE;
}

const char *qv_cpu_isa_name(qv_cpu_isa isa) {
  switch (isa) {
  case QV_CPU_ISA_PORTABLE: return "portable";
  case QV_CPU_ISA_AVX2: return "avx2";
  case QV_CPU_ISA_AVX512: return "avx512";
  case QV_CPU_ISA_NEON: return "neon";
  default: return "?";
  }
}

int qv_cpu_isa_select(qv_cpu_isa *out, qv_error *err) {
  const char *env = getenv("QUIVER_CPU_ISA");
  if (!env || !env[0] || !strcmp(env, "auto")) {
    *out = qv_cpu_isa_best();
    return 0;
  }
  for (int i = 0; i < QV_CPU_ISA_COUNT; i++) {
    if (strcmp(env, qv_cpu_isa_name((qv_cpu_isa)i))) continue;
    if (!qv_cpu_isa_supported((qv_cpu_isa)i))
      return qv_error_set(err, QV_EINVAL, "QUIVER_CPU_ISA=%s: this CPU or build cannot run that path (best: %s)",
                          env, qv_cpu_isa_name(qv_cpu_isa_best()));
    *out = (qv_cpu_isa)i;
    return 0;
  }
  return qv_error_set(err, QV_EINVAL, "QUIVER_CPU_ISA=%.32s: expected avx512, avx2, portable, neon or auto", env);
}

void qv_cpu_features_describe(char *buf, size_t cap) {
  const qv_cpu_features *f = qv_cpu_features_get();
  struct {
    int on;
    const char *name;
  } flags[] = {{f->avx2, "avx2"},         {f->fma, "fma"},           {f->f16c, "f16c"},
               {f->avx512f, "avx512f"},   {f->avx512bw, "avx512bw"}, {f->avx512vl, "avx512vl"},
               {f->avx512_bf16, "avx512_bf16"}, {f->avx512_vnni, "avx512_vnni"}, {f->neon, "neon"}};
  size_t n = (size_t)snprintf(buf, cap, "%s (", f->model);
  int any = 0;
  for (size_t i = 0; i < sizeof flags / sizeof flags[0] && n < cap; i++) {
    if (!flags[i].on) continue;
    n += (size_t)snprintf(buf + n, cap - n, "%s%s", any ? " " : "", flags[i].name);
    any = 1;
  }
  if (n < cap) snprintf(buf + n, cap - n, "%s)", any ? "" : "no SIMD extensions");
}
