/* The C harness for include/floodgate.h: every function, the shared vectors,
 * NULL and invalid arguments for every pointer parameter, and a pthreads stress
 * test with exact totals. Built by scripts/test against the shared and the static
 * library, and run again under AddressSanitizer and valgrind.
 *
 * Environment: FG_TEST_REDIS_URL (optional) = a Redis to test fg_engine_new_redis
 * against; FG_TEST_SCALE (optional, default 1) divides the stress sizes (valgrind).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "floodgate.h"
#include "vectors.h"

static int failures = 0;
static int checks = 0;

#define CHECK(cond)                                                          \
  do {                                                                       \
    checks++;                                                                \
    if (!(cond)) {                                                           \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                            \
    }                                                                        \
  } while (0)

#define EQ(a, b) CHECK((a) == (b))

static const fg_quota Q_3_PER_SEC = {FG_ALGORITHM_GCRA, 3, 1000000000ULL, 0};

static const fg_engine *quota_engine(void) {
  const fg_engine *e = NULL;
  EQ(fg_engine_new_quotas(&Q_3_PER_SEC, 1, NULL, &e), FG_RESULT_OK);
  CHECK(e != NULL);
  return e;
}

static void test_version_and_messages(void) {
  char expect[32];
  snprintf(expect, sizeof expect, "%d.%d.%d", FG_VERSION_MAJOR, FG_VERSION_MINOR, FG_VERSION_PATCH);
  CHECK(strcmp(fg_version(), expect) == 0);
  const uint32_t codes[] = {FG_RESULT_OK, FG_RESULT_NULL_PARAMETER, FG_RESULT_PANIC, FG_RESULT_INVALID_UTF8,
                            FG_RESULT_BUFFER_TOO_SMALL, FG_RESULT_WRONG_ENGINE_KIND, FG_RESULT_INVALID_ARGUMENT,
                            FG_RESULT_INVALID_QUOTA, FG_RESULT_QUOTA_PARSE, FG_RESULT_UNKNOWN_ALGORITHM,
                            FG_RESULT_EMPTY_KEY, FG_RESULT_KEY_TOO_LONG, FG_RESULT_COST_EXCEEDS_BURST,
                            FG_RESULT_INVALID_COST, FG_RESULT_NO_QUOTAS, FG_RESULT_TOO_MANY_QUOTAS,
                            FG_RESULT_LOG_LIMIT_TOO_LARGE, FG_RESULT_INVALID_OPTION, FG_RESULT_INVALID_CONFIG,
                            FG_RESULT_INVALID_REQUEST, FG_RESULT_STORE_UNAVAILABLE,
                            FG_RESULT_STORE_MISMATCH};
  size_t n = sizeof codes / sizeof codes[0];
  for (size_t i = 0; i < n; i++) {
    const char *m = fg_result_message(codes[i]);
    CHECK(m != NULL && m[0] != '\0');
    for (size_t j = 0; j < i; j++) CHECK(strcmp(m, fg_result_message(codes[j])) != 0);
    CHECK(strcmp(m, "unknown result code") != 0);
  }
  CHECK(strcmp(fg_result_message(424242), "unknown result code") == 0);
}

static void test_quota_engine(void) {
  const fg_engine *e = quota_engine();
  fg_decision d;
  for (int i = 0; i < 3; i++) {
    EQ(fg_engine_check_at(e, (const uint8_t *)"k", 1, 1, 0, &d), FG_RESULT_OK);
    CHECK(d.allowed);
    EQ(d.remaining, (uint64_t)(2 - i));
  }
  EQ(fg_engine_check_at(e, (const uint8_t *)"k", 1, 1, 0, &d), FG_RESULT_OK);
  CHECK(!d.allowed);
  EQ(d.retry_after_ns, 333333334ULL); /* 1/3 s, rounded up */
  /* Peek: cost 0 charges nothing. */
  EQ(fg_engine_check_at(e, (const uint8_t *)"k", 1, 0, 333333334ULL, &d), FG_RESULT_OK);
  CHECK(d.allowed);
  EQ(fg_engine_reset(e, (const uint8_t *)"k", 1, NULL), FG_RESULT_OK);
  EQ(fg_engine_check_at(e, (const uint8_t *)"k", 1, 3, 0, &d), FG_RESULT_OK);
  CHECK(d.allowed);
  /* The clock-based check works and binary keys are fine. */
  const uint8_t bin[] = {0, 255, 0x80, 'x'};
  EQ(fg_engine_check(e, bin, sizeof bin, 1, &d), FG_RESULT_OK);
  CHECK(d.allowed);
  /* Errors, with the output untouched. */
  fg_decision untouched = {.quota = 99};
  EQ(fg_engine_check(e, (const uint8_t *)"k", 1, 4, &untouched), FG_RESULT_COST_EXCEEDS_BURST);
  EQ(untouched.quota, 99u);
  EQ(fg_engine_check(e, (const uint8_t *)"", 0, 1, &untouched), FG_RESULT_EMPTY_KEY);
  char big[300];
  memset(big, 'a', sizeof big);
  EQ(fg_engine_check(e, (const uint8_t *)big, sizeof big, 1, &untouched), FG_RESULT_KEY_TOO_LONG);
  char msg[256];
  size_t len = 0;
  EQ(fg_last_error(msg, sizeof msg, &len), FG_RESULT_OK);
  CHECK(len > 0 && strstr(msg, "256") != NULL);
  EQ(fg_last_error(msg, 2, &len), FG_RESULT_BUFFER_TOO_SMALL);
  CHECK(len > 2);
  EQ(untouched.quota, 99u);
  /* Quota-engine only calls. */
  fg_verdict v;
  fg_request req = {"GET", 3, "/", 1, NULL, 0, NULL, 0, NULL, 0};
  EQ(fg_engine_check_request(e, &req, &v), FG_RESULT_WRONG_ENGINE_KIND);
  EQ(fg_engine_set_event_callback(e, NULL, NULL), FG_RESULT_WRONG_ENGINE_KIND);
  EQ(fg_engine_metrics(e, msg, sizeof msg, &len), FG_RESULT_WRONG_ENGINE_KIND);
  EQ(fg_engine_may_block(e), false);
  EQ(fg_engine_may_block(NULL), false);
  fg_engine_free(e);

  /* Invalid quotas and options. */
  const fg_engine *bad = NULL;
  fg_quota q = {FG_ALGORITHM_GCRA, 0, 1000000000ULL, 0};
  EQ(fg_engine_new_quotas(&q, 1, NULL, &bad), FG_RESULT_INVALID_QUOTA);
  q = (fg_quota){77, 1, 1000000000ULL, 0};
  EQ(fg_engine_new_quotas(&q, 1, NULL, &bad), FG_RESULT_INVALID_ARGUMENT);
  EQ(fg_engine_new_quotas(&Q_3_PER_SEC, 0, NULL, &bad), FG_RESULT_NO_QUOTAS);
  fg_quota many[40];
  for (int i = 0; i < 40; i++) many[i] = Q_3_PER_SEC;
  EQ(fg_engine_new_quotas(many, 40, NULL, &bad), FG_RESULT_TOO_MANY_QUOTAS);
  CHECK(bad == NULL);
  fg_options o = {.max_keys = 10, .max_key_bytes = 4};
  EQ(fg_engine_new_quotas(&Q_3_PER_SEC, 1, &o, &bad), FG_RESULT_OK);
  EQ(fg_engine_check(bad, (const uint8_t *)"12345", 5, 1, &d), FG_RESULT_KEY_TOO_LONG);
  fg_engine_free(bad);
}

static void test_vectors(void) {
  for (size_t i = 0; i < FGV_VECTOR_COUNT; i++) {
    const fgv_vector *vec = &fgv_vectors[i];
    fg_options o = {.max_keys = 0, .max_key_bytes = vec->max_key_bytes};
    const fg_engine *e = NULL;
    EQ(fg_engine_new_quotas(vec->quotas, vec->quota_count, &o, &e), FG_RESULT_OK);
    for (size_t s = 0; s < vec->step_count; s++) {
      const fgv_step *st = &vec->steps[s];
      if (st->op == 2) {
        bool held = !st->expect.allowed;
        fg_result r = fg_engine_reset(e, (const uint8_t *)st->key, st->key_len, &held);
        EQ(r, st->expect_error ? st->expect_error : FG_RESULT_OK);
        if (!st->expect_error) EQ(held, st->expect.allowed);
        continue;
      }
      fg_decision d;
      uint64_t cost = st->op == 1 ? 0 : st->cost;
      fg_result r = fg_engine_check_at(e, (const uint8_t *)st->key, st->key_len, cost, st->now_ns, &d);
      if (st->expect_error) {
        if (r != st->expect_error) fprintf(stderr, "%s step %zu: got %u\n", vec->name, s, (unsigned)r);
        EQ(r, st->expect_error);
        continue;
      }
      EQ(r, FG_RESULT_OK);
      int same = d.allowed == st->expect.allowed && d.limit == st->expect.limit &&
                 d.remaining == st->expect.remaining && d.retry_after_ns == st->expect.retry_after_ns &&
                 d.reset_after_ns == st->expect.reset_after_ns && d.quota == st->expect.quota;
      if (!same)
        fprintf(stderr, "%s step %zu: got allowed=%d remaining=%llu retry=%llu reset=%llu quota=%u\n", vec->name, s,
                d.allowed, (unsigned long long)d.remaining, (unsigned long long)d.retry_after_ns,
                (unsigned long long)d.reset_after_ns, d.quota);
      CHECK(same);
    }
    fg_engine_free(e);
  }
}

static const char POLICY[] =
    "[settings]\nheaders = \"draft-10\"\n\n"
    "[[rule]]\nname = \"login\"\nmatch = \"POST /auth/login\"\nquotas = [\"2/min\"]\nkey = \"ip\"\n\n"
    "[[rule]]\nname = \"api\"\nmatch = \"/api/**\"\nquotas = [\"100/min\"]\nkey = \"ip\"\n";

static atomic_int events_seen;
static atomic_int denied_seen;

static void on_event(void *userdata, const fg_event *ev) {
  atomic_fetch_add((atomic_int *)userdata, 1);
  if (strcmp(ev->kind, "denied") == 0) {
    atomic_fetch_add(&denied_seen, 1);
    if (ev->rule_len != 5 || memcmp(ev->rule, "login", 5) != 0) failures++;
    if (ev->client_ip_len != 9 || memcmp(ev->client_ip, "192.0.2.7", 9) != 0) failures++;
    if (ev->status != 429 || ev->retry_after_ns == 0) failures++;
    if (fg_event_level(ev) != FG_LOG_DEBUG) failures++; /* counted, not logged one by one */
  }
}

static void test_policy_engine(void) {
  const fg_engine *e = NULL;
  EQ(fg_engine_from_str(POLICY, strlen(POLICY), FG_FORMAT_TOML, &e), FG_RESULT_OK);
  EQ(fg_engine_set_event_callback(e, on_event, &events_seen), FG_RESULT_OK);
  fg_header headers[] = {{"User-Agent", 10, "test", 4}, {"Accept", 6, "*/*", 3}};
  fg_request req = {"POST", 4, "/auth/login", 11, "192.0.2.7", 9, headers, 2, NULL, 0};
  fg_verdict v;
  for (int i = 0; i < 2; i++) {
    EQ(fg_engine_check_request_at(e, &req, 1700000000ULL * 1000000000ULL, &v), FG_RESULT_OK);
    CHECK(v.allowed);
    EQ(v.status, 200);
    CHECK(v.rule_len == 5 && strcmp(v.rule, "login") == 0);
    CHECK(strstr(v.headers, "RateLimit-Policy: ") != NULL);
    EQ(strlen(v.headers), v.headers_len);
  }
  EQ(fg_engine_check_request_at(e, &req, 1700000000ULL * 1000000000ULL, &v), FG_RESULT_OK);
  CHECK(!v.allowed);
  EQ(v.status, 429);
  CHECK(v.retry_after_ns >= 29000000000ULL);
  CHECK(strstr(v.headers, "Retry-After: 30\r\n") != NULL);
  /* Every line ends in CRLF and the count matches. */
  size_t lines = 0;
  for (const char *p = v.headers; (p = strstr(p, "\r\n")) != NULL; p += 2) lines++;
  EQ(lines, v.header_count);
  /* The fields every front end has: reason, identity, token problem, body. */
  CHECK(strcmp(v.reason, "rate_limited") == 0);
  CHECK(v.identity_len == 9 && strcmp(v.identity, "192.0.2.7") == 0);
  CHECK(strcmp(v.token_problem, "") == 0);
  CHECK(strcmp(v.body, "{\"error\":\"rate_limited\",\"retry_after\":30,\"rule\":\"login\"}") == 0);
  EQ(strlen(v.body), v.body_len);
  EQ(atomic_load(&denied_seen), 1);
  CHECK(atomic_load(&events_seen) >= 1);
  /* The clock-based call, another rule, no rule. */
  fg_request api = {"GET", 3, "/api/items", 10, "192.0.2.8", 9, NULL, 0, NULL, 0};
  EQ(fg_engine_check_request(e, &api, &v), FG_RESULT_OK);
  CHECK(v.allowed && strcmp(v.rule, "api") == 0);
  fg_request none = {"GET", 3, "/elsewhere", 10, NULL, 0, NULL, 0, NULL, 0};
  EQ(fg_engine_check_request(e, &none, &v), FG_RESULT_OK);
  CHECK(v.allowed && v.rule_len == 0 && v.headers_len == 0);
  CHECK(strcmp(v.reason, "no_rule") == 0 && v.body_len == 0 && v.identity_len == 0);
  /* Bad requests. */
  fg_verdict untouched = {.status = 7};
  fg_request bad = {"", 0, "/", 1, NULL, 0, NULL, 0, NULL, 0};
  EQ(fg_engine_check_request(e, &bad, &untouched), FG_RESULT_INVALID_REQUEST);
  bad = (fg_request){"G\xff", 2, "/", 1, NULL, 0, NULL, 0, NULL, 0};
  EQ(fg_engine_check_request(e, &bad, &untouched), FG_RESULT_INVALID_UTF8);
  bad = (fg_request){"GET", 3, "/", 1, "not-an-ip", 9, NULL, 0, NULL, 0};
  EQ(fg_engine_check_request(e, &bad, &untouched), FG_RESULT_INVALID_REQUEST);
  bad = (fg_request){"GET", 3, "/", 1, NULL, 0, NULL, 3, NULL, 0};
  EQ(fg_engine_check_request(e, &bad, &untouched), FG_RESULT_NULL_PARAMETER);
  EQ(untouched.status, 7);
  /* Metrics: ask for the size, then fetch. */
  size_t need = 0;
  EQ(fg_engine_metrics(e, NULL, 0, &need), FG_RESULT_BUFFER_TOO_SMALL);
  CHECK(need > 100);
  char *text = malloc(need + 1);
  size_t len = 0;
  EQ(fg_engine_metrics(e, text, need + 1, &len), FG_RESULT_OK);
  EQ(len, need);
  CHECK(strstr(text, "floodgate_requests_total{rule=\"login\",outcome=\"denied\"} 1") != NULL);
  free(text);
  /* Quota-only calls on a policy engine. */
  fg_decision d;
  EQ(fg_engine_check(e, (const uint8_t *)"k", 1, 1, &d), FG_RESULT_WRONG_ENGINE_KIND);
  EQ(fg_engine_reset(e, (const uint8_t *)"k", 1, NULL), FG_RESULT_WRONG_ENGINE_KIND);
  EQ(fg_engine_set_event_callback(e, NULL, NULL), FG_RESULT_OK);
  fg_engine_free(e);

  /* JSON, a file, and a bad policy with its line. */
  const char *json = "{\"rule\": [{\"name\": \"all\", \"match\": \"/**\", \"quotas\": [\"1/s\"]}]}";
  EQ(fg_engine_from_str(json, strlen(json), FG_FORMAT_JSON, &e), FG_RESULT_OK);
  fg_engine_free(e);
  EQ(fg_engine_from_str(json, strlen(json), 9, &e), FG_RESULT_INVALID_ARGUMENT);
  char path[] = "/tmp/fg-policy-XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  FILE *f = fdopen(fd, "w");
  fputs(POLICY, f);
  fclose(f);
  EQ(fg_engine_from_file(path, &e), FG_RESULT_OK);
  // Reload: the same file again, another file, a broken one (refused, the
  // running policy stays), and a quota engine (not a policy).
  fg_request one = {"GET", 3, "/one", 4, "192.0.2.9", 9, NULL, 0, NULL, 0};
  fg_verdict rv;
  EQ(fg_engine_check_request(e, &one, &rv), FG_RESULT_OK);
  CHECK(rv.allowed && strcmp(rv.reason, "no_rule") == 0);
  EQ(fg_engine_reload(e, NULL), FG_RESULT_OK);
  char path2[] = "/tmp/fg-policy-XXXXXX";
  int fd2 = mkstemp(path2);
  CHECK(fd2 >= 0);
  FILE *f2 = fdopen(fd2, "w");
  fputs(POLICY, f2);
  fputs("\n[[rule]]\nname = \"one\"\nmatch = \"/one\"\nquotas = [\"1/h\"]\n", f2);
  fclose(f2);
  EQ(fg_engine_reload(e, path2), FG_RESULT_OK);
  EQ(fg_engine_check_request(e, &one, &rv), FG_RESULT_OK);
  CHECK(rv.allowed && strcmp(rv.reason, "allowed") == 0);
  EQ(fg_engine_check_request(e, &one, &rv), FG_RESULT_OK);
  CHECK(!rv.allowed && rv.status == 429);
  f2 = fopen(path2, "w");
  fputs("[[rule]]\nname = \"one\"\nmatch = \"/one\"\nquotas = [\"many\"]\n", f2);
  fclose(f2);
  EQ(fg_engine_reload(e, NULL), FG_RESULT_INVALID_CONFIG);
  EQ(fg_engine_check_request(e, &one, &rv), FG_RESULT_OK);
  CHECK(!rv.allowed && rv.status == 429); /* the running policy and its counter stay */
  EQ(fg_engine_reload(NULL, NULL), FG_RESULT_NULL_PARAMETER);
  remove(path2);
  fg_engine_free(e);
  remove(path);
  EQ(fg_engine_from_file("/nonexistent/policy.toml", &e), FG_RESULT_INVALID_CONFIG);
  const char *broken = "[[rule]]\nname = \"x\"\nmatch = \"/**\"\nquotas = [\"ten per second\"]\n";
  const fg_engine *never = NULL;
  EQ(fg_engine_from_str(broken, strlen(broken), FG_FORMAT_TOML, &never), FG_RESULT_INVALID_CONFIG);
  CHECK(never == NULL);
  char msg[512];
  EQ(fg_last_error(msg, sizeof msg, &len), FG_RESULT_OK);
  CHECK(strstr(msg, "line 4") != NULL);
  EQ(fg_engine_from_str("\xff", 1, FG_FORMAT_TOML, &never), FG_RESULT_INVALID_UTF8);
}

static void test_nulls(void) {
  const fg_engine *e = quota_engine();
  const fg_engine *out = NULL;
  fg_decision d;
  fg_verdict v;
  size_t len;
  char buf[16];
  fg_request req = {"GET", 3, "/", 1, NULL, 0, NULL, 0, NULL, 0};
  EQ(fg_engine_new_quotas(NULL, 1, NULL, &out), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_new_quotas(&Q_3_PER_SEC, 1, NULL, NULL), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_new_redis(NULL, &Q_3_PER_SEC, 1, FG_FAIL_OPEN, 5, &out), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_new_redis("redis://127.0.0.1:1/", NULL, 1, FG_FAIL_OPEN, 5, &out), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_new_redis("redis://127.0.0.1:1/", &Q_3_PER_SEC, 1, FG_FAIL_OPEN, 5, NULL), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_from_file(NULL, &out), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_from_file("x", NULL), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_from_str(NULL, 5, FG_FORMAT_TOML, &out), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_from_str(POLICY, strlen(POLICY), FG_FORMAT_TOML, NULL), FG_RESULT_NULL_PARAMETER);
  CHECK(out == NULL);
  EQ(fg_engine_check(NULL, (const uint8_t *)"k", 1, 1, &d), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_check(e, NULL, 1, 1, &d), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_check(e, (const uint8_t *)"k", 1, 1, NULL), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_check_at(NULL, (const uint8_t *)"k", 1, 1, 0, &d), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_check_at(e, NULL, 1, 1, 0, &d), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_check_at(e, (const uint8_t *)"k", 1, 1, 0, NULL), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_reset(NULL, (const uint8_t *)"k", 1, NULL), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_reset(e, NULL, 1, NULL), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_check_request(NULL, &req, &v), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_check_request(e, NULL, &v), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_check_request(e, &req, NULL), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_check_request_at(NULL, &req, 0, &v), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_check_request_at(e, NULL, 0, &v), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_check_request_at(e, &req, 0, NULL), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_set_event_callback(NULL, NULL, NULL), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_metrics(NULL, buf, sizeof buf, &len), FG_RESULT_NULL_PARAMETER);
  EQ(fg_last_error(NULL, 5, &len), FG_RESULT_NULL_PARAMETER);
  EQ(fg_last_error(buf, sizeof buf, NULL), FG_RESULT_NULL_PARAMETER);
  /* NULL request fields. */
  const fg_engine *p = NULL;
  EQ(fg_engine_from_str(POLICY, strlen(POLICY), FG_FORMAT_TOML, &p), FG_RESULT_OK);
  fg_request nm = {NULL, 3, "/", 1, NULL, 0, NULL, 0, NULL, 0};
  EQ(fg_engine_check_request(p, &nm, &v), FG_RESULT_NULL_PARAMETER);
  fg_request np = {"GET", 3, NULL, 1, NULL, 0, NULL, 0, NULL, 0};
  EQ(fg_engine_check_request(p, &np, &v), FG_RESULT_NULL_PARAMETER);
  fg_header nh[] = {{NULL, 3, "v", 1}};
  fg_request nhr = {"GET", 3, "/", 1, NULL, 0, nh, 1, NULL, 0};
  EQ(fg_engine_check_request(p, &nhr, &v), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_metrics(p, NULL, 5, &len), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_metrics(p, buf, sizeof buf, NULL), FG_RESULT_NULL_PARAMETER);
  fg_engine_free(p);
  fg_engine_free(NULL);
  fg_engine_free(e);
}

static void test_redis(void) {
  const fg_engine *e = NULL;
  /* Unreachable: a clear error at startup, quickly. */
  EQ(fg_engine_new_redis("redis://127.0.0.1:1/", &Q_3_PER_SEC, 1, FG_FAIL_CLOSED, 50, &e), FG_RESULT_STORE_UNAVAILABLE);
  EQ(fg_engine_new_redis("not a url", &Q_3_PER_SEC, 1, FG_FAIL_CLOSED, 50, &e), FG_RESULT_STORE_UNAVAILABLE);
  EQ(fg_engine_new_redis("redis://127.0.0.1:1/", &Q_3_PER_SEC, 1, 9, 50, &e), FG_RESULT_INVALID_ARGUMENT);
  const char *url = getenv("FG_TEST_REDIS_URL");
  if (url == NULL) {
    fprintf(stderr, "FG_TEST_REDIS_URL not set: the Redis engine is only tested for bad endpoints\n");
    return;
  }
  fg_quota q = {FG_ALGORITHM_GCRA, 5, 60000000000ULL, 0};
  EQ(fg_engine_new_redis(url, &q, 1, FG_FAIL_CLOSED, 200, &e), FG_RESULT_OK);
  EQ(fg_engine_may_block(e), true); /* a pre-forking server builds it per worker */
  char key[64];
  snprintf(key, sizeof key, "c-test-%ld", (long)getpid());
  EQ(fg_engine_reset(e, (const uint8_t *)key, strlen(key), NULL), FG_RESULT_OK);
  int allowed = 0;
  for (int i = 0; i < 8; i++) {
    fg_decision d;
    EQ(fg_engine_check(e, (const uint8_t *)key, strlen(key), 1, &d), FG_RESULT_OK);
    allowed += d.allowed;
  }
  EQ(allowed, 5);
  fg_engine_free(e);
}

typedef struct {
  const fg_engine *engine;
  int thread;
  int iterations;
  int allowed_shared;
  int allowed_own;
} worker;

static void *work(void *arg) {
  worker *w = arg;
  char own[32];
  snprintf(own, sizeof own, "own-%d", w->thread);
  for (int i = 0; i < w->iterations; i++) {
    fg_decision d;
    if (fg_engine_check_at(w->engine, (const uint8_t *)"shared", 6, 1, 0, &d) == FG_RESULT_OK && d.allowed)
      w->allowed_shared++;
    if (fg_engine_check_at(w->engine, (const uint8_t *)own, strlen(own), 1, 0, &d) == FG_RESULT_OK && d.allowed)
      w->allowed_own++;
  }
  return NULL;
}

static void test_threads(int scale) {
  enum { THREADS = 4 };
  int iterations = 20000 / scale;
  uint64_t burst = (uint64_t)iterations; /* shared: 4 x iterations tries, burst admitted */
  fg_quota q = {FG_ALGORITHM_GCRA, 1, 3600000000000ULL, burst};
  const fg_engine *e = NULL;
  EQ(fg_engine_new_quotas(&q, 1, NULL, &e), FG_RESULT_OK);
  pthread_t t[THREADS];
  worker w[THREADS];
  for (int i = 0; i < THREADS; i++) {
    w[i] = (worker){e, i, iterations, 0, 0};
    pthread_create(&t[i], NULL, work, &w[i]);
  }
  int shared = 0;
  for (int i = 0; i < THREADS; i++) {
    pthread_join(t[i], NULL);
    shared += w[i].allowed_shared;
    EQ(w[i].allowed_own, iterations); /* its own key: every try within the burst */
  }
  EQ((uint64_t)shared, burst); /* exactly the burst, never more */
  fg_engine_free(e);
}

/* A verdict buffer the caller owns: its verdict stays valid while the same
 * thread decides other requests with the thread's own buffer or another one. */
static void test_event_levels(void) {
  EQ(fg_event_level(NULL), FG_LOG_DEBUG);
  fg_event e = {0};
  EQ(fg_event_level(&e), FG_LOG_DEBUG);
  e.kind = "store_fallback"; /* the codes are compared as text */
  EQ(fg_event_level(&e), FG_LOG_WARNING);
  e.kind = "store_recovered";
  EQ(fg_event_level(&e), FG_LOG_INFO);
  e.kind = "banned";
  EQ(fg_event_level(&e), FG_LOG_DEBUG);
}

static void test_verdict_buffers(void) {
  const fg_engine *e = NULL;
  EQ(fg_engine_from_str(POLICY, strlen(POLICY), FG_FORMAT_TOML, &e), FG_RESULT_OK);
  fg_verdict_buf *a = fg_verdict_buf_new(), *b = fg_verdict_buf_new();
  CHECK(a != NULL && b != NULL);
  const uint64_t t = 1700000000ULL * 1000000000ULL;
  fg_request login = {"POST", 4, "/auth/login", 11, "192.0.2.77", 10, NULL, 0, NULL, 0};
  fg_request api = {"GET", 3, "/api/items", 10, "192.0.2.78", 10, NULL, 0, NULL, 0};
  fg_verdict kept, other, tl;
  EQ(fg_engine_check_request_buf(e, &login, t, a, &kept), FG_RESULT_OK);
  CHECK(kept.allowed && strcmp(kept.rule, "login") == 0);
  char copy[512];
  CHECK(kept.headers_len < sizeof copy);
  memcpy(copy, kept.headers, kept.headers_len + 1);
  /* Other decisions on this thread, with another buffer and the thread's own. */
  for (int i = 0; i < 5; i++) {
    EQ(fg_engine_check_request_buf(e, &api, t, b, &other), FG_RESULT_OK);
    EQ(fg_engine_check_request_at(e, &login, t, &tl), FG_RESULT_OK);
  }
  CHECK(other.allowed && strcmp(other.rule, "api") == 0);
  CHECK(!tl.allowed && tl.status == 429 && strstr(tl.headers, "Retry-After: ") != NULL);
  CHECK(strcmp(kept.rule, "login") == 0 && strcmp(kept.identity, "192.0.2.77") == 0);
  CHECK(strcmp(kept.headers, copy) == 0);
  /* now_ns 0: the engine's clock. A denial into a buffer, then an allowed one. */
  EQ(fg_engine_check_request_buf(e, &login, 0, a, &kept), FG_RESULT_OK);
  EQ(fg_engine_check_request_buf(e, &login, 0, a, &kept), FG_RESULT_OK);
  EQ(fg_engine_check_request_buf(e, &login, 0, a, &kept), FG_RESULT_OK);
  CHECK(!kept.allowed && kept.body_len > 0 && strstr(kept.headers, "Retry-After: ") != NULL);
  EQ(fg_engine_check_request_buf(e, &api, 0, a, &kept), FG_RESULT_OK);
  CHECK(kept.allowed && kept.body_len == 0 && strstr(kept.headers, "Retry-After") == NULL);
  /* NULLs. */
  EQ(fg_engine_check_request_buf(e, &api, 0, NULL, &kept), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_check_request_buf(e, &api, 0, a, NULL), FG_RESULT_NULL_PARAMETER);
  EQ(fg_engine_check_request_buf(NULL, &api, 0, a, &kept), FG_RESULT_NULL_PARAMETER);
  fg_verdict_buf_free(a);
  fg_verdict_buf_free(b);
  fg_verdict_buf_free(NULL);
  fg_engine_free(e);
}

/* Shared memory: 4 forked processes on one table admit exactly the limit
 * between them; a table made for other quotas is FG_RESULT_STORE_MISMATCH. */
static void test_shared_memory(void) {
  char path[128];
  snprintf(path, sizeof path, "/dev/shm/fg-c-test-%d", (int)getpid());
  unlink(path);
  static const fg_quota Q_100_PER_HOUR = {FG_ALGORITHM_GCRA, 100, 3600000000000ULL, 0};
  const fg_engine *e = NULL;
  fg_options small = {.max_keys = 1000};
  EQ(fg_engine_new_shared(path, &Q_100_PER_HOUR, 1, &small, &e), FG_RESULT_OK);
  fg_engine_free(e);
  pid_t kids[4];
  for (int k = 0; k < 4; k++) {
    kids[k] = fork();
    if (kids[k] == 0) {
      const fg_engine *c = NULL;
      if (fg_engine_new_shared(path, &Q_100_PER_HOUR, 1, &small, &c) != FG_RESULT_OK) _exit(255);
      int allowed = 0;
      fg_decision d;
      for (int i = 0; i < 80; i++) {
        if (fg_engine_check(c, (const uint8_t *)"hot", 3, 1, &d) == FG_RESULT_OK && d.allowed) allowed++;
      }
      fg_engine_free(c);
      _exit(allowed);
    }
  }
  int total = 0;
  for (int k = 0; k < 4; k++) {
    int status = 0;
    waitpid(kids[k], &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) != 255);
    total += WEXITSTATUS(status);
  }
  EQ(total, 100);
  static const fg_quota Q_OTHER = {FG_ALGORITHM_GCRA, 50, 3600000000000ULL, 0};
  e = NULL;
  EQ(fg_engine_new_shared(path, &Q_OTHER, 1, &small, &e), FG_RESULT_STORE_MISMATCH);
  CHECK(e == NULL);
  static const fg_quota Q_LOG = {FG_ALGORITHM_SLIDING_LOG, 5, 1000000000ULL, 0};
  EQ(fg_engine_new_shared("/dev/shm/fg-c-test-log", &Q_LOG, 1, NULL, &e), FG_RESULT_INVALID_OPTION);
  EQ(fg_engine_new_shared(NULL, &Q_OTHER, 1, NULL, &e), FG_RESULT_NULL_PARAMETER);
  unlink(path);
}

/* Settlement: only failed logins count; a parallel burst is held to the limit;
 * places in flight are capped and come back when settled. */
static void test_settle(void) {
  const char *policy =
      "[[rule]]\nname = \"login\"\nmatch = \"POST /login\"\nkey = \"header:x-user\"\n"
      "algorithm = \"fixed_window\"\nquotas = [\"3/h\"]\ncount = \"failures\"\n"
      "[[rule]]\nname = \"export\"\nmatch = \"GET /export\"\nkey = \"ip\"\n"
      "quotas = [\"100/s\"]\nmax_in_flight = 1\n";
  const fg_engine *e = NULL;
  EQ(fg_engine_from_str(policy, strlen(policy), FG_FORMAT_TOML, &e), FG_RESULT_OK);
  EQ(fg_engine_may_block(e), false); /* in memory: safe to build before fork */
  const uint64_t now = 1800000000ull * 1000000000ull;
  fg_header h[] = {{"x-user", 6, "mallory", 7}};
  fg_request login = {"POST", 4, "/login", 6, "192.0.2.1", 9, h, 1, NULL, 0};
  fg_settlement *held[10];
  int admitted = 0;
  fg_verdict v;
  for (int i = 0; i < 10; i++) {
    EQ(fg_engine_check_request_at(e, &login, now, &v), FG_RESULT_OK);
    held[i] = v.settlement;
    if (v.allowed) {
      admitted++;
      CHECK(v.settlement != NULL);
    } else {
      CHECK(v.settlement == NULL);
    }
  }
  EQ(admitted, 3);
  /* One success (given back), two failures (kept). */
  int n = 0;
  for (int i = 0; i < 10; i++) {
    if (held[i]) {
      EQ(fg_engine_settle(e, held[i], n == 0 ? 200 : 401, -1, now), FG_RESULT_OK);
      n++;
    }
  }
  EQ(fg_engine_check_request_at(e, &login, now, &v), FG_RESULT_OK);
  CHECK(v.allowed);
  EQ(fg_engine_settle(e, v.settlement, 999, -1, now), FG_RESULT_INVALID_REQUEST);
  EQ(fg_engine_check_request_at(e, &login, now, &v), FG_RESULT_OK);
  CHECK(!v.allowed);
  EQ(fg_engine_settle(e, NULL, 200, -1, now), FG_RESULT_OK);
  /* In flight: one at a time. */
  fg_request exp = {"GET", 3, "/export", 7, "192.0.2.1", 9, NULL, 0, NULL, 0};
  EQ(fg_engine_check_request_at(e, &exp, now, &v), FG_RESULT_OK);
  CHECK(v.allowed);
  fg_settlement *first = v.settlement;
  EQ(fg_engine_check_request_at(e, &exp, now, &v), FG_RESULT_OK);
  EQ(v.status, 429);
  CHECK(strcmp(v.reason, "concurrency") == 0);
  EQ(fg_engine_settle(e, first, 200, -1, now), FG_RESULT_OK);
  EQ(fg_engine_check_request_at(e, &exp, now, &v), FG_RESULT_OK);
  CHECK(v.allowed);
  fg_settlement_free(v.settlement); /* never settled: the store releases it later */
  fg_settlement_free(NULL);
  EQ(fg_engine_check_request_at(e, &exp, now + 1000000000ull, &v), FG_RESULT_OK);
  CHECK(!v.allowed);
  EQ(fg_engine_check_request_at(e, &exp, now + 120000000000ull, &v), FG_RESULT_OK);
  CHECK(v.allowed);
  EQ(fg_engine_settle(e, v.settlement, 200, -5, now), FG_RESULT_INVALID_ARGUMENT);
  const fg_engine *q = quota_engine();
  EQ(fg_engine_settle(q, NULL, 200, -1, 0), FG_RESULT_WRONG_ENGINE_KIND);
  fg_engine_free(q);
  fg_engine_free(e);
}

/* Rules keyed by a body field: the caller asks whether to read the body and
 * passes it; the username is one key however it is spelled, from any address. */
static void test_body_keys(void) {
  const char *policy =
      "[[rule]]\nname = \"login-user\"\nmatch = \"POST /auth/login\"\nkey = \"body:username\"\n"
      "algorithm = \"fixed_window\"\nquotas = [\"3/h\"]\n"
      "[[rule]]\nname = \"api\"\nmatch = \"/api/**\"\nkey = \"ip\"\nquotas = [\"100/s\"]\n";
  const fg_engine *e = NULL;
  EQ(fg_engine_from_str(policy, strlen(policy), FG_FORMAT_TOML, &e), FG_RESULT_OK);
  EQ(fg_engine_reads_body(e, "POST", 4, "/auth/login?next=/", 18), true);
  EQ(fg_engine_reads_body(e, "GET", 3, "/auth/login", 11), false);
  EQ(fg_engine_reads_body(e, "POST", 4, "/api/items", 10), false);
  EQ(fg_engine_reads_body(NULL, "POST", 4, "/auth/login", 11), false);
  EQ(fg_engine_reads_body(e, NULL, 4, "/auth/login", 11), false);
  EQ(fg_engine_reads_body(e, "P\xff", 2, "/auth/login", 11), false);
  EQ(FG_MAX_BODY_BYTES, 65536);
  CHECK(strcmp(fg_too_large_body(), "{\"error\":\"payload_too_large\"}") == 0);
  const uint64_t now = 1800000000ull * 1000000000ull;
  const char *json = "{\"password\":\"x\",\"username\":\" Victim \"}";
  const char *form = "username=VICTIM&password=y";
  fg_header as_json[] = {{"Content-Type", 12, "application/json", 16}};
  fg_header as_form[] = {{"Content-Type", 12, "application/x-www-form-urlencoded", 33}};
  const char *ips[] = {"192.0.2.31", "192.0.2.32", "192.0.2.33", "192.0.2.34"};
  fg_verdict v;
  for (int i = 0; i < 4; i++) {
    const char *body = i % 2 ? form : json;
    fg_request r = {"POST", 4, "/auth/login", 11, ips[i], strlen(ips[i]), i % 2 ? as_form : as_json, 1,
                    (const uint8_t *)body, strlen(body)};
    EQ(fg_engine_check_request_at(e, &r, now, &v), FG_RESULT_OK);
    EQ(v.status, i < 3 ? 200 : 429);
    CHECK(v.identity_len == 6 && strcmp(v.identity, "victim") == 0);
  }
  /* Another name has its own quota. */
  const char *other = "{\"username\":\"alice\"}";
  fg_request r = {"POST", 4, "/auth/login", 11, "192.0.2.31", 10, as_json, 1, (const uint8_t *)other, strlen(other)};
  EQ(fg_engine_check_request_at(e, &r, now, &v), FG_RESULT_OK);
  CHECK(v.allowed);
  /* Ambiguous: named twice, or no name at all: refused, never skipped. */
  const char *twice = "username=decoy&username=victim";
  r = (fg_request){"POST", 4, "/auth/login", 11, "192.0.2.35", 10, as_form, 1, (const uint8_t *)twice, strlen(twice)};
  EQ(fg_engine_check_request_at(e, &r, now, &v), FG_RESULT_INVALID_REQUEST);
  const char *nosql = "{\"username\":{\"$ne\":null}}";
  r = (fg_request){"POST", 4, "/auth/login", 11, "192.0.2.35", 10, as_json, 1, (const uint8_t *)nosql, strlen(nosql)};
  EQ(fg_engine_check_request_at(e, &r, now, &v), FG_RESULT_INVALID_REQUEST);
  /* No body read: no key, the rule is skipped. A length without bytes: NULL. */
  r = (fg_request){"POST", 4, "/auth/login", 11, "192.0.2.35", 10, NULL, 0, NULL, 0};
  EQ(fg_engine_check_request_at(e, &r, now, &v), FG_RESULT_OK);
  CHECK(v.allowed && v.rule_len == 0);
  r.body_len = 5;
  EQ(fg_engine_check_request_at(e, &r, now, &v), FG_RESULT_NULL_PARAMETER);
  /* A name whose bytes are no UTF-8 (frameworks read it differently):
   * refused, not a crash. */
  const char junk[] = "username=\xff\xfe";
  r = (fg_request){"POST", 4, "/auth/login", 11, "192.0.2.36", 10, as_form, 1, (const uint8_t *)junk, sizeof junk - 1};
  EQ(fg_engine_check_request_at(e, &r, now, &v), FG_RESULT_INVALID_REQUEST);
  fg_engine_free(e);
}

int main(void) {
  const char *s = getenv("FG_TEST_SCALE");
  int scale = s ? atoi(s) : 1;
  if (scale < 1) scale = 1;
  test_version_and_messages();
  test_quota_engine();
  test_vectors();
  test_policy_engine();
  test_verdict_buffers();
  test_event_levels();
  test_nulls();
  /* Before any Redis engine: a fork copies only the calling thread, so
   * memory held by a Redis engine's background threads (a connection being
   * made off the request path) would be unreachable in the children, which
   * valgrind then reports as lost (and exits them with its error code). */
  test_shared_memory();
  test_redis();
  test_settle();
  test_body_keys();
  test_threads(scale);
  if (failures) {
    fprintf(stderr, "%d of %d checks failed\n", failures, checks);
    return 1;
  }
  printf("C harness: all %d checks passed\n", checks);
  return 0;
}
