/* Generated from the JSON files in tests/vectors by ffi/tests/vectors_header.rs: do not edit.
 * Regenerate: FG_BLESS=1 cargo test -p floodgate-ffi --test vectors_header */
#ifndef FG_VECTORS_H
#define FG_VECTORS_H
#include "floodgate.h"

typedef struct {
  int op; /* 0 check, 1 peek, 2 reset */
  uint64_t now_ns;
  const char *key;
  size_t key_len;
  uint64_t cost;
  uint32_t expect_error; /* an FG_RESULT_*, or 0 */
  fg_decision expect; /* for a reset, expect.allowed = whether the key was held */
} fgv_step;

typedef struct {
  const char *name;
  fg_quota quotas[8];
  size_t quota_count;
  size_t max_key_bytes;
  const fgv_step *steps;
  size_t step_count;
} fgv_vector;

static const fgv_step fgv_steps_0[] = {
  {0, 0ULL, "\x6b", 1, 1ULL, 0, {true, 3ULL, 2ULL, 0ULL, 1000000000ULL, 0}},
  {0, 500000000ULL, "\x6b", 1, 2ULL, 0, {true, 3ULL, 0ULL, 0ULL, 500000000ULL, 0}},
  {0, 600000000ULL, "\x6b", 1, 1ULL, 0, {false, 3ULL, 0ULL, 400000000ULL, 400000000ULL, 0}},
  {0, 999999999ULL, "\x6b", 1, 1ULL, 0, {false, 3ULL, 0ULL, 1ULL, 1ULL, 0}},
  {0, 1000000000ULL, "\x6b", 1, 3ULL, 0, {true, 3ULL, 0ULL, 0ULL, 1000000000ULL, 0}},
  {0, 1000000000ULL, "\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87", 8, 1ULL, 0, {true, 3ULL, 2ULL, 0ULL, 1000000000ULL, 0}},
  {1, 1500000000ULL, "\x6b", 1, 0ULL, 0, {false, 3ULL, 0ULL, 500000000ULL, 500000000ULL, 0}},
  {0, 2500000000ULL, "\x6b", 1, 1ULL, 0, {true, 3ULL, 2ULL, 0ULL, 500000000ULL, 0}},
};

static const fgv_step fgv_steps_1[] = {
  {0, 0ULL, "\x61\x6c\x69\x63\x65", 5, 1ULL, 0, {true, 3ULL, 2ULL, 0ULL, 100000000ULL, 0}},
  {0, 0ULL, "\x61\x6c\x69\x63\x65", 5, 1ULL, 0, {true, 3ULL, 1ULL, 0ULL, 200000000ULL, 0}},
  {0, 0ULL, "\x61\x6c\x69\x63\x65", 5, 1ULL, 0, {true, 3ULL, 0ULL, 0ULL, 300000000ULL, 0}},
  {0, 0ULL, "\x61\x6c\x69\x63\x65", 5, 1ULL, 0, {false, 3ULL, 0ULL, 100000000ULL, 300000000ULL, 0}},
  {0, 99999999ULL, "\x61\x6c\x69\x63\x65", 5, 1ULL, 0, {false, 3ULL, 0ULL, 1ULL, 200000001ULL, 0}},
  {0, 100000000ULL, "\x61\x6c\x69\x63\x65", 5, 1ULL, 0, {true, 3ULL, 0ULL, 0ULL, 300000000ULL, 0}},
  {0, 100000000ULL, "\x62\x6f\x62", 3, 1ULL, 0, {true, 3ULL, 2ULL, 0ULL, 100000000ULL, 0}},
  {0, 1000000000ULL, "\x61\x6c\x69\x63\x65", 5, 2ULL, 0, {true, 3ULL, 1ULL, 0ULL, 200000000ULL, 0}},
  {0, 1000000000ULL, "\x61\x6c\x69\x63\x65", 5, 3ULL, 0, {false, 3ULL, 1ULL, 200000000ULL, 200000000ULL, 0}},
  {0, 1000000000ULL, "\x61\x6c\x69\x63\x65", 5, 4ULL, FG_RESULT_COST_EXCEEDS_BURST, {false, 0ULL, 0ULL, 0ULL, 0ULL, 0}},
  {1, 1000000000ULL, "\x61\x6c\x69\x63\x65", 5, 0ULL, 0, {true, 3ULL, 1ULL, 0ULL, 200000000ULL, 0}},
  {0, 1000000000ULL, "\x61\x6c\x69\x63\x65", 5, 0ULL, 0, {true, 3ULL, 1ULL, 0ULL, 200000000ULL, 0}},
};

static const fgv_step fgv_steps_2[] = {
  {0, 0ULL, "", 0, 1ULL, FG_RESULT_EMPTY_KEY, {false, 0ULL, 0ULL, 0ULL, 0ULL, 0}},
  {0, 0ULL, "\x31\x32\x33\x34\x35\x36\x37\x38\x39", 9, 1ULL, FG_RESULT_KEY_TOO_LONG, {false, 0ULL, 0ULL, 0ULL, 0ULL, 0}},
  {0, 0ULL, "\x31\x32\x33\x34\x35\x36\x37\x38", 8, 1ULL, 0, {true, 5ULL, 4ULL, 0ULL, 200000000ULL, 0}},
  {0, 0ULL, "\xff\x00\xfe", 3, 1ULL, 0, {true, 5ULL, 4ULL, 0ULL, 200000000ULL, 0}},
  {0, 0ULL, "\xc3\xbc\x6e\xc3\xaf", 5, 1ULL, 0, {true, 5ULL, 4ULL, 0ULL, 200000000ULL, 0}},
  {0, 0ULL, "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", 9, 1ULL, FG_RESULT_KEY_TOO_LONG, {false, 0ULL, 0ULL, 0ULL, 0ULL, 0}},
  {0, 0ULL, "\x61", 1, 6ULL, FG_RESULT_COST_EXCEEDS_BURST, {false, 0ULL, 0ULL, 0ULL, 0ULL, 0}},
  {0, 0ULL, "\x61", 1, 0ULL, 0, {true, 5ULL, 5ULL, 0ULL, 0ULL, 0}},
  {2, 0ULL, "\x31\x32\x33\x34\x35\x36\x37\x38", 8, 0ULL, 0, {true, 0ULL, 0ULL, 0ULL, 0ULL, 0}},
  {0, 0ULL, "\x31\x32\x33\x34\x35\x36\x37\x38", 8, 5ULL, 0, {true, 5ULL, 0ULL, 0ULL, 1000000000ULL, 0}},
  {2, 0ULL, "\x6e\x6f\x74\x68\x65\x72\x65", 7, 0ULL, 0, {false, 0ULL, 0ULL, 0ULL, 0ULL, 0}},
  {2, 0ULL, "", 0, 0ULL, FG_RESULT_EMPTY_KEY, {false, 0ULL, 0ULL, 0ULL, 0ULL, 0}},
};

static const fgv_step fgv_steps_3[] = {
  {0, 0ULL, "\x6b", 1, 2ULL, 0, {true, 2ULL, 0ULL, 0ULL, 1000000000ULL, 0}},
  {0, 0ULL, "\x6b", 1, 1ULL, 0, {false, 2ULL, 0ULL, 500000000ULL, 1000000000ULL, 0}},
  {0, 1000000000ULL, "\x6b", 1, 1ULL, 0, {true, 3ULL, 0ULL, 0ULL, 9000000000ULL, 1}},
  {0, 2000000000ULL, "\x6b", 1, 1ULL, 0, {false, 3ULL, 0ULL, 8000000000ULL, 8000000000ULL, 1}},
  {1, 2000000000ULL, "\x6b", 1, 0ULL, 0, {false, 3ULL, 0ULL, 8000000000ULL, 8000000000ULL, 1}},
  {0, 10000000000ULL, "\x6b", 1, 2ULL, 0, {true, 2ULL, 0ULL, 0ULL, 1000000000ULL, 0}},
};

static const fgv_step fgv_steps_4[] = {
  {0, 0ULL, "\x6b", 1, 1ULL, 0, {true, 3ULL, 2ULL, 0ULL, 1000000000ULL, 0}},
  {0, 100000000ULL, "\x6b", 1, 1ULL, 0, {true, 3ULL, 1ULL, 0ULL, 1000000000ULL, 0}},
  {0, 200000000ULL, "\x6b", 1, 1ULL, 0, {true, 3ULL, 0ULL, 0ULL, 1000000000ULL, 0}},
  {0, 300000000ULL, "\x6b", 1, 1ULL, 0, {false, 3ULL, 0ULL, 700000000ULL, 900000000ULL, 0}},
  {0, 999999999ULL, "\x6b", 1, 1ULL, 0, {false, 3ULL, 0ULL, 1ULL, 200000001ULL, 0}},
  {0, 1000000000ULL, "\x6b", 1, 1ULL, 0, {true, 3ULL, 0ULL, 0ULL, 1000000000ULL, 0}},
  {0, 1000000000ULL, "\x6b", 1, 2ULL, 0, {false, 3ULL, 0ULL, 200000000ULL, 1000000000ULL, 0}},
  {0, 1200000000ULL, "\x6b", 1, 2ULL, 0, {true, 3ULL, 0ULL, 0ULL, 1000000000ULL, 0}},
};

static const fgv_step fgv_steps_5[] = {
  {0, 0ULL, "\x6b", 1, 10ULL, 0, {true, 10ULL, 0ULL, 0ULL, 2000000000ULL, 0}},
  {0, 1250000000ULL, "\x6b", 1, 2ULL, 0, {true, 10ULL, 0ULL, 0ULL, 1750000000ULL, 0}},
  {0, 1250000000ULL, "\x6b", 1, 1ULL, 0, {false, 10ULL, 0ULL, 50000000ULL, 1750000000ULL, 0}},
  {0, 1299999999ULL, "\x6b", 1, 1ULL, 0, {false, 10ULL, 0ULL, 1ULL, 1700000001ULL, 0}},
  {0, 1300000000ULL, "\x6b", 1, 1ULL, 0, {true, 10ULL, 0ULL, 0ULL, 1700000000ULL, 0}},
  {0, 1300000000ULL, "\x6b", 1, 5ULL, 0, {false, 10ULL, 0ULL, 500000000ULL, 1700000000ULL, 0}},
  {0, 1300000000ULL, "\x6b", 1, 10ULL, 0, {false, 10ULL, 0ULL, 1700000000ULL, 1700000000ULL, 0}},
  {0, 5000000000ULL, "\x6b", 1, 1ULL, 0, {true, 10ULL, 9ULL, 0ULL, 2000000000ULL, 0}},
};

static const fgv_vector fgv_vectors[] = {
  {"fixed_window", {{FG_ALGORITHM_FIXED_WINDOW, 3ULL, 1000000000ULL, 3ULL}}, 1, 0, fgv_steps_0, 8},
  {"gcra_burst_and_refill", {{FG_ALGORITHM_GCRA, 10ULL, 1000000000ULL, 3ULL}}, 1, 0, fgv_steps_1, 12},
  {"keys_and_errors", {{FG_ALGORITHM_GCRA, 5ULL, 1000000000ULL, 5ULL}}, 1, 8, fgv_steps_2, 12},
  {"multi_quota_all_or_nothing", {{FG_ALGORITHM_GCRA, 2ULL, 1000000000ULL, 2ULL}, {FG_ALGORITHM_FIXED_WINDOW, 3ULL, 10000000000ULL, 3ULL}}, 2, 0, fgv_steps_3, 6},
  {"sliding_log", {{FG_ALGORITHM_SLIDING_LOG, 3ULL, 1000000000ULL, 3ULL}}, 1, 0, fgv_steps_4, 8},
  {"sliding_window_counter", {{FG_ALGORITHM_SLIDING_WINDOW, 10ULL, 1000000000ULL, 10ULL}}, 1, 0, fgv_steps_5, 8},
};
#define FGV_VECTOR_COUNT 6

#endif
