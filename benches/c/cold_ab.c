/* What one request's check costs with its code cold, for two builds of the
 * C library loaded into one process (benches/http/cold_ab.mjs is the Node
 * one; benches/README.md says why). Between two checks a server (nginx)
 * parses a request, runs its modules and the kernel; here a stand-in does
 * other work touching ~1 MB (formatting, parsing, sorting, copying), then
 * the check is timed alone (CLOCK_MONOTONIC) and
 * again at once (warm). The builds take turns; with one build it is
 * compared with itself (an A/A run: the spread that is noise).
 *
 *   cargo build --release -p floodgate-ffi; cp target/release/libfloodgate.so /tmp/a.so
 *   (change, rebuild, copy to /tmp/b.so)
 *   gcc -O2 -Iinclude benches/c/cold_ab.c -ldl -o /tmp/cold_ab
 *   /tmp/cold_ab benches/http/policy.toml /tmp/a.so /tmp/b.so [rounds]
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "floodgate.h"

typedef fg_result (*from_file_fn)(const char *, const fg_engine **);
typedef fg_result (*check_fn)(const fg_engine *, const fg_request *, fg_verdict *);

struct build {
  const fg_engine *engine;
  check_fn check;
};

static int load(const char *path, const char *policy, struct build *b) {
  /* dlmopen: a namespace of its own, so two copies of one library (same
   * SONAME) are two libraries. */
  void *h = dlmopen(LM_ID_NEWLM, path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "%s: %s\n", path, dlerror());
    return -1;
  }
  from_file_fn from_file = (from_file_fn)dlsym(h, "fg_engine_from_file");
  b->check = (check_fn)dlsym(h, "fg_engine_check_request");
  if (!from_file || !b->check || from_file(policy, &b->engine) != FG_RESULT_OK) {
    fprintf(stderr, "%s: no engine from %s\n", path, policy);
    return -1;
  }
  return 0;
}

static unsigned char scratch[1 << 20];
static int numbers[4096];
static volatile unsigned long sink;

static int cmp(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

/* The work between two requests' checks. */
static void between(unsigned round) {
  char line[256];
  for (int i = 0; i < 40; i++) {
    int n = snprintf(line, sizeof line, "GET /api/items/%u?page=%d HTTP/1.1\r\nHost: example.com:%d\r\n%e", round, i,
                     8000 + i, (double)round / (i + 1));
    sink += (unsigned long)n + (unsigned long)strtod(line + n - 12, NULL);
  }
  for (int i = 0; i < 4096; i++) numbers[i] = (int)((round * 2654435761u + (unsigned)i * 40503u) >> 8);
  qsort(numbers, 4096, sizeof numbers[0], cmp);
  memset(scratch, (int)round, sizeof scratch / 2);
  memcpy(scratch + sizeof scratch / 2, scratch, sizeof scratch / 2);
  sink += numbers[round % 4096] + scratch[round % sizeof scratch];
}

static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp_ll(const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return (x > y) - (x < y);
}

/* Median of a[from..to), which it sorts. */
static long long median(long long *a, size_t from, size_t to) {
  qsort(a + from, to - from, sizeof a[0], cmp_ll);
  return a[from + (to - from) / 2];
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s POLICY A.so [B.so] [rounds]\n", argv[0]);
    return 2;
  }
  /* POLICY A [B] [ROUNDS]: an argument of digits only is the rounds. */
  const char *b_path = argv[2];
  size_t n = 4000;
  for (int i = 3; i < argc && i < 5; i++) {
    if (strspn(argv[i], "0123456789") == strlen(argv[i]))
      n = (size_t)atol(argv[i]);
    else
      b_path = argv[i];
  }
  if (n < 40) n = 40;
  struct build builds[2];
  if (load(argv[2], argv[1], &builds[0]) || load(b_path, argv[1], &builds[1])) return 1;
  long long *cold[2], *warm[2];
  for (int k = 0; k < 2; k++) {
    cold[k] = calloc(n, sizeof(long long));
    warm[k] = calloc(n, sizeof(long long));
  }
  fg_header headers[] = {{"host", 4, "example.com", 11}, {"user-agent", 10, "wrk", 3}};
  fg_request req = {"GET", 3, "/api/items", 10, "127.0.0.1", 9, headers, 2, NULL, 0};
  for (size_t i = 0; i < n; i++) {
    for (int k = 0; k < 2; k++) {
      int j = (int)((k + i) % 2); /* A first, then B first */
      fg_verdict v;
      between((unsigned)(i * 2 + k));
      long long t0 = now_ns();
      fg_result rc = builds[j].check(builds[j].engine, &req, &v);
      cold[j][i] = now_ns() - t0;
      t0 = now_ns();
      rc |= builds[j].check(builds[j].engine, &req, &v);
      warm[j][i] = now_ns() - t0;
      if (rc != FG_RESULT_OK || !v.allowed) {
        fprintf(stderr, "check failed (%d)\n", (int)rc);
        return 1;
      }
    }
  }
  /* Per fifth (after the first quarter, the warm-up): the spread of B/A. */
  size_t skip = n / 4, step = (n - skip) / 5;
  double fifths[5];
  for (int f = 0; f < 5; f++) {
    size_t s = skip + (size_t)f * step;
    fifths[f] = (double)median(cold[1], s, s + step) / (double)median(cold[0], s, s + step);
  }
  long long ca = median(cold[0], skip, n), cb = median(cold[1], skip, n);
  printf("%zu rounds; A %s, B %s; medians in ns\n", n, argv[2], b_path == argv[2] ? "(A again)" : b_path);
  printf("request check: A cold %lld, warm %lld | B cold %lld, warm %lld | cold B/A %.3f (by fifths: %.2f %.2f %.2f %.2f %.2f)\n",
         ca, median(warm[0], skip, n), cb, median(warm[1], skip, n), (double)cb / (double)ca, fifths[0], fifths[1],
         fifths[2], fifths[3], fifths[4]);
  return 0;
}
