/* A small HTTP server on libmicrohttpd that asks Floodgate about every request
 * and answers 429/403/401 with the verdict's headers and a JSON body.
 *
 *   cc server.c $(pkg-config --cflags --libs floodgate libmicrohttpd) -o server
 *   ./server policy.toml 8080
 *
 * Logging follows the core's policy (fg_event_level), as the Python and Node
 * packages do: a Redis fallback or recovery is logged when it happens; denials,
 * bans and refused tokens are counted and summed up in one line per interval
 * (FG_SUMMARY_SECS, default 10) and at exit, never one line per request (a
 * flood makes millions).
 */
#include <arpa/inet.h>
#include <microhttpd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "floodgate.h"

static const fg_engine *engine;

/* Per-request events since the last summary. */
static atomic_ulong denied, others;

static void on_event(void *userdata, const fg_event *e) {
  (void)userdata;
  uint32_t level = fg_event_level(e);
  if (level == FG_LOG_DEBUG) {
    atomic_fetch_add(strcmp(e->kind, "denied") == 0 ? &denied : &others, 1);
    return;
  }
  fprintf(stderr, "floodgate: %s: %s (rule %.*s)\n", level == FG_LOG_WARNING ? "WARNING" : "INFO", e->kind,
          (int)e->rule_len, e->rule);
}

static void summary(unsigned secs) {
  unsigned long d = atomic_exchange(&denied, 0), o = atomic_exchange(&others, 0);
  if (d || o) fprintf(stderr, "floodgate: last %u s: denied %lu, other events %lu\n", secs, d, o);
}

/* Every request header, however many (libmicrohttpd bounds their total size):
 * reading only the first N would let a client push its API key or token past
 * what the engine sees. */
typedef struct {
  fg_header *headers;
  size_t count, capacity;
} header_list;

static enum MHD_Result collect(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
  (void)kind;
  header_list *list = cls;
  if (list->count < list->capacity && key != NULL) {
    fg_header *h = &list->headers[list->count++];
    h->name = key;
    h->name_len = strlen(key);
    h->value = value ? value : "";
    h->value_len = value ? strlen(value) : 0;
  }
  return MHD_YES;
}

/* Copies each "Name: value\r\n" line of the verdict into the response. */
static void add_headers(struct MHD_Response *response, const fg_verdict *v) {
  const char *p = v->headers;
  const char *end = v->headers + v->headers_len;
  while (p < end) {
    const char *eol = strstr(p, "\r\n");
    if (eol == NULL) break;
    const char *colon = memchr(p, ':', (size_t)(eol - p));
    if (colon == NULL) break;
    char name[128], value[512];
    size_t nl = (size_t)(colon - p), vl = (size_t)(eol - colon - 2);
    if (nl < sizeof name && vl < sizeof value) {
      memcpy(name, p, nl);
      name[nl] = '\0';
      memcpy(value, colon + 2, vl);
      value[vl] = '\0';
      MHD_add_response_header(response, name, value);
    }
    p = eol + 2;
  }
}

/* One request's state, from its headers until its response is sent: its body
 * when a rule keys on a field of it, what to settle then, and with which
 * status. */
typedef struct {
  bool reads_body, too_large;
  char *body;
  size_t body_len, body_cap;
  fg_settlement *settlement;
  unsigned status;
} request_state;

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_data_size,
                              void **req_cls) {
  (void)cls, (void)version;
  if (*req_cls == NULL) { /* first call: headers only */
    request_state *state = calloc(1, sizeof(request_state));
    if (state == NULL) return MHD_NO;
    /* A rule keyed by a body field (a login's username) needs the body: kept,
     * up to FG_MAX_BODY_BYTES (413 past it, never a check on a part). */
    state->reads_body = fg_engine_reads_body(engine, method, strlen(method), url, strlen(url));
    *req_cls = state;
    return MHD_YES;
  }
  request_state *state = *req_cls;
  if (*upload_data_size > 0) { /* a piece of the body: decide once it is all in */
    if (state->reads_body && !state->too_large) {
      if (*upload_data_size > FG_MAX_BODY_BYTES - state->body_len) {
        state->too_large = true;
      } else {
        size_t need = state->body_len + *upload_data_size;
        if (need > state->body_cap) { /* doubling: a body in many small pieces is not copied once per piece */
          size_t cap = state->body_cap ? state->body_cap : 1024;
          while (cap < need) cap *= 2;
          if (cap > FG_MAX_BODY_BYTES) cap = FG_MAX_BODY_BYTES;
          char *grown = realloc(state->body, cap);
          if (grown == NULL) return MHD_NO;
          state->body = grown;
          state->body_cap = cap;
        }
        memcpy(state->body + state->body_len, upload_data, *upload_data_size);
        state->body_len = need;
      }
    }
    *upload_data_size = 0;
    return MHD_YES;
  }
  if (state->too_large) {
    const char *large = fg_too_large_body();
    struct MHD_Response *response =
        MHD_create_response_from_buffer(strlen(large), (void *)large, MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(response, "Content-Type", "application/json");
    enum MHD_Result ret = MHD_queue_response(conn, 413, response);
    MHD_destroy_response(response);
    return ret;
  }
  int total = MHD_get_connection_values(conn, MHD_HEADER_KIND, NULL, NULL);
  header_list list = {.headers = calloc(total > 0 ? (size_t)total : 1, sizeof(fg_header)), .count = 0,
                      .capacity = total > 0 ? (size_t)total : 0};
  if (list.headers == NULL) return MHD_NO;
  MHD_get_connection_values(conn, MHD_HEADER_KIND, collect, &list);
  char ip[INET6_ADDRSTRLEN] = "";
  const union MHD_ConnectionInfo *info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  if (info && info->client_addr->sa_family == AF_INET)
    inet_ntop(AF_INET, &((const struct sockaddr_in *)info->client_addr)->sin_addr, ip, sizeof ip);
  else if (info && info->client_addr->sa_family == AF_INET6)
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)info->client_addr)->sin6_addr, ip, sizeof ip);
  fg_request req = {method,
                    strlen(method),
                    url,
                    strlen(url),
                    ip[0] ? ip : NULL,
                    strlen(ip),
                    list.headers,
                    list.count,
                    (const uint8_t *)state->body,
                    state->body_len};
  fg_verdict v;
  fg_result r = fg_engine_check_request(engine, &req, &v);
  free(list.headers);
  free(state->body);
  state->body = NULL;
  state->body_len = 0;
  /* The body of a denial comes from the engine (the same JSON every front end
   * sends); a request it cannot use gets 400. */
  char body[512];
  unsigned status;
  if (r != FG_RESULT_OK) {
    status = 400;
    snprintf(body, sizeof body, "{\"error\":\"bad_request\"}");
  } else if (v.allowed) {
    status = 200;
    snprintf(body, sizeof body, "{\"ok\":true}\n");
  } else {
    status = v.status;
    snprintf(body, sizeof body, "%.*s", (int)v.body_len, v.body);
  }
  struct MHD_Response *response = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_COPY);
  if (r == FG_RESULT_OK) add_headers(response, &v);
  MHD_add_response_header(response, "Content-Type", "application/json");
  enum MHD_Result ret = MHD_queue_response(conn, status, response);
  MHD_destroy_response(response);
  /* Settled in `completed`, once the response has been sent (or the client has
   * gone): until then the request holds its place in flight (max_in_flight). */
  if (r == FG_RESULT_OK && v.settlement != NULL) {
    if (state->settlement != NULL) fg_settlement_free(state->settlement);
    state->settlement = v.settlement;
    state->status = status;
  }
  return ret;
}

/* MHD_OPTION_NOTIFY_COMPLETED: the request is over. Settles it with the status
 * sent, or 499 when the connection ended first (as nginx logs it). */
static void completed(void *cls, struct MHD_Connection *conn, void **req_cls, enum MHD_RequestTerminationCode toe) {
  (void)cls, (void)conn;
  request_state *state = *req_cls;
  if (state == NULL) return;
  free(state->body);
  if (state->settlement != NULL) {
    uint16_t status = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? (uint16_t)state->status : 499;
    fg_engine_settle(engine, state->settlement, status, -1, 0);
  }
  free(state);
  *req_cls = NULL;
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s POLICY.toml PORT\n", argv[0]);
    return 2;
  }
  fg_result r = fg_engine_from_file(argv[1], &engine);
  if (r != FG_RESULT_OK) {
    char msg[1024];
    size_t len;
    fg_last_error(msg, sizeof msg, &len);
    fprintf(stderr, "floodgate: %s: %s\n", fg_result_message(r), msg);
    return 1;
  }
  struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION,
                                          (uint16_t)atoi(argv[2]), NULL, NULL, answer, NULL,
                                          MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_END);
  if (d == NULL) {
    fprintf(stderr, "cannot listen on port %s\n", argv[2]);
    fg_engine_free(engine);
    return 1;
  }
  fg_engine_set_event_callback(engine, on_event, NULL);
  const char *every = getenv("FG_SUMMARY_SECS");
  unsigned interval = every && atoi(every) > 0 ? (unsigned)atoi(every) : 10, ticks = 0;
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  printf("listening on %s (floodgate %s)\n", argv[2], fg_version());
  fflush(stdout);
  while (!stop) {
    sleep(1);
    if (++ticks >= interval) {
      summary(ticks);
      ticks = 0;
    }
  }
  MHD_stop_daemon(d);
  summary(ticks);
  fg_engine_free(engine);
  return 0;
}
