/* The load generator's outputs: the summary table (stdout) and the --result-file JSON with every
 * setting, the aggregates under vLLM's key names, and one record per request. */
#ifndef QV_BENCH_REPORT_H
#define QV_BENCH_REPORT_H

#include <stdio.h>

#include "bench.h"
#include "runner.h"

/* Converts the records to timelines and aggregates them. */
int bench_report_summarize(const bench_opts *o, const bench_run_result *res, bench_summary *s, qv_error *err);

void bench_report_table(FILE *f, const bench_opts *o, const char *model, const bench_run_result *res,
                        const bench_summary *s);

int bench_report_write_json(const char *path, const bench_opts *o, const char *model, const bench_run_result *res,
                            const bench_summary *s, qv_error *err);

#endif
