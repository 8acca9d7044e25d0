/*
 * ngx_http_floodgate_module: asks a Floodgate policy engine about every request,
 * in nginx's access phase, through the C ABI (include/floodgate.h).
 *
 *   load_module modules/ngx_http_floodgate_module.so;
 *   http {
 *       floodgate_policy /etc/floodgate/policy.toml;   # http, server, location
 *       floodgate on;                                   # or off, per location
 *       floodgate_client_address $remote_addr;          # the default
 *   }
 *
 * - A denial is answered here: the verdict's status (429, 403, 401), its headers
 *   (Retry-After, RateLimit, RateLimit-Policy, WWW-Authenticate) and the engine's
 *   JSON body. An allowed response gets the rate-limit headers in the header
 *   filter. A request the engine cannot use gets 400 and the engine's body.
 * - The client is $remote_addr by default, which the realip module rewrites
 *   from a trusted proxy's header (set_real_ip_from, real_ip_header); any other
 *   variable or complex value can be given. A peer on a `listen unix:` socket
 *   has no address: the engine's one key '-' (realip's `set_real_ip_from
 *   unix:` names the client instead).
 * - The policy is compiled when the configuration is read, so a bad policy fails
 *   `nginx -t` (and a reload) with the policy's located error, never a worker.
 *   An engine whose checks cannot block (memory, shared memory) is built once in
 *   the master and inherited by the workers: with `[store] kind =
 *   "shared_memory"` its mapping is shared, so every worker counts in one table
 *   (exact limits across workers); with the in-memory store each worker counts
 *   apart (a limit is per worker). An engine on Redis is built again in each
 *   worker (init_process), so that each connects when it starts rather than
 *   at its first request (an inherited one would make its own then).
 * - Requests are settled in the log phase (rules with `count`, `cost_from =
 *   "response"` or `max_in_flight`) with the status sent; the real cost comes
 *   from an upstream's `Floodgate-Cost` response header, removed here.
 * - Internal redirects (error_page, try_files, named locations) are not charged
 *   again: one decision per client request.
 * - A request that a rule keyed by a body field meets (`key = "body:username"`,
 *   fg_engine_reads_body) has its body read first (as the mirror module does:
 *   the access phase runs again once it is in), whole, in memory or from
 *   nginx's temporary file, and passed to the engine; the upstream still gets
 *   it. A body over FG_MAX_BODY_BYTES is answered 413 rather than checked on
 *   a part. Other requests are never held for their body.
 */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "floodgate.h"

typedef struct {
  ngx_str_t path;
  const fg_engine *engine;
  ngx_flag_t per_worker; /* built again in each worker (Redis) */
} ngx_http_floodgate_policy_t;

typedef struct {
  ngx_array_t policies; /* ngx_http_floodgate_policy_t * */
} ngx_http_floodgate_main_conf_t;

typedef struct {
  ngx_http_floodgate_policy_t *policy;
  ngx_flag_t enable;
  ngx_http_complex_value_t *client;
} ngx_http_floodgate_loc_conf_t;

/* One client request's decision, kept in the request pool (it outlives the
 * module context, which an internal redirect clears). */
typedef struct {
  const fg_engine *engine;
  ngx_str_t headers; /* "Name: value\r\n" lines for an allowed response */
  fg_settlement *settlement;
  int64_t cost;       /* -1: the estimate stands */
  ngx_uint_t body;    /* FG_NGX_BODY_*: reading the body a rule keys on */
} ngx_http_floodgate_ctx_t;

#define FG_NGX_BODY_NONE 0
#define FG_NGX_BODY_READING 1
#define FG_NGX_BODY_READ 2

static ngx_int_t ngx_http_floodgate_init(ngx_conf_t *cf);
static void *ngx_http_floodgate_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_floodgate_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_floodgate_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child);
static char *ngx_http_floodgate_policy(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_floodgate_init_process(ngx_cycle_t *cycle);
static void ngx_http_floodgate_exit_process(ngx_cycle_t *cycle);

static ngx_http_output_header_filter_pt ngx_http_next_header_filter;

static ngx_command_t ngx_http_floodgate_commands[] = {
    {ngx_string("floodgate_policy"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_http_floodgate_policy, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL},
    {ngx_string("floodgate"), NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_FLAG,
     ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(ngx_http_floodgate_loc_conf_t, enable), NULL},
    {ngx_string("floodgate_client_address"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_http_set_complex_value_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(ngx_http_floodgate_loc_conf_t, client),
     NULL},
    ngx_null_command};

static ngx_http_module_t ngx_http_floodgate_module_ctx = {
    NULL,                                /* preconfiguration */
    ngx_http_floodgate_init,             /* postconfiguration */
    ngx_http_floodgate_create_main_conf, /* create main configuration */
    NULL,                                /* init main configuration */
    NULL,                                /* create server configuration */
    NULL,                                /* merge server configuration */
    ngx_http_floodgate_create_loc_conf,  /* create location configuration */
    ngx_http_floodgate_merge_loc_conf    /* merge location configuration */
};

ngx_module_t ngx_http_floodgate_module = {NGX_MODULE_V1,
                                          &ngx_http_floodgate_module_ctx,  /* module context */
                                          ngx_http_floodgate_commands,     /* module directives */
                                          NGX_HTTP_MODULE,                 /* module type */
                                          NULL,                            /* init master */
                                          NULL,                            /* init module */
                                          ngx_http_floodgate_init_process, /* init process */
                                          NULL,                            /* init thread */
                                          NULL,                            /* exit thread */
                                          ngx_http_floodgate_exit_process, /* exit process */
                                          NULL,                            /* exit master */
                                          NGX_MODULE_V1_PADDING};

/* The library's last error, for a log line. */
static void floodgate_error(fg_result r, u_char *buf, size_t size) {
  size_t len = 0;
  char detail[512];
  if (fg_last_error(detail, sizeof detail, &len) != FG_RESULT_OK || len == 0) detail[0] = '\0';
  ngx_snprintf(buf, size, "%s: %s%Z", fg_result_message(r), detail);
}

/* Frees an engine built for a configuration when that configuration goes
 * (a reload, or the end of `nginx -t`). */
static void ngx_http_floodgate_free_engine(void *data) {
  ngx_http_floodgate_policy_t *p = data;
  if (!p->per_worker && p->engine != NULL) {
    fg_engine_free(p->engine);
    p->engine = NULL;
  }
}

static char *ngx_http_floodgate_policy(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) {
  ngx_http_floodgate_loc_conf_t *lcf = conf;
  ngx_http_floodgate_main_conf_t *mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_floodgate_module);
  ngx_str_t *value = cf->args->elts;
  ngx_str_t path = value[1];
  (void)cmd;

  if (lcf->policy != NGX_CONF_UNSET_PTR) return "is duplicate";
  if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) return NGX_CONF_ERROR;

  /* One engine per policy file, shared by the locations that name it. */
  ngx_http_floodgate_policy_t **known = mcf->policies.elts;
  for (ngx_uint_t i = 0; i < mcf->policies.nelts; i++) {
    if (known[i]->path.len == path.len && ngx_strncmp(known[i]->path.data, path.data, path.len) == 0) {
      lcf->policy = known[i];
      return NGX_CONF_OK;
    }
  }

  ngx_http_floodgate_policy_t *p = ngx_pcalloc(cf->pool, sizeof *p);
  if (p == NULL) return NGX_CONF_ERROR;
  p->path.data = ngx_pnalloc(cf->pool, path.len + 1);
  if (p->path.data == NULL) return NGX_CONF_ERROR;
  ngx_memcpy(p->path.data, path.data, path.len);
  p->path.data[path.len] = '\0';
  p->path.len = path.len;

  /* Compiled now: a bad policy fails `nginx -t` with the located error. */
  fg_result r = fg_engine_from_file((const char *)p->path.data, &p->engine);
  if (r != FG_RESULT_OK) {
    u_char msg[768];
    floodgate_error(r, msg, sizeof msg);
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "floodgate_policy \"%V\": %s", &p->path, msg);
    return NGX_CONF_ERROR;
  }
  if (fg_engine_may_block(p->engine)) {
    /* Built again in each worker, which then connects as it starts (an
     * inherited engine would make its own connections at its first request). */
    fg_engine_free(p->engine);
    p->engine = NULL;
    p->per_worker = 1;
  } else {
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
      fg_engine_free(p->engine);
      return NGX_CONF_ERROR;
    }
    cln->handler = ngx_http_floodgate_free_engine;
    cln->data = p;
  }

  ngx_http_floodgate_policy_t **slot = ngx_array_push(&mcf->policies);
  if (slot == NULL) return NGX_CONF_ERROR;
  *slot = p;
  lcf->policy = p;
  return NGX_CONF_OK;
}

static void *ngx_http_floodgate_create_main_conf(ngx_conf_t *cf) {
  ngx_http_floodgate_main_conf_t *mcf = ngx_pcalloc(cf->pool, sizeof *mcf);
  if (mcf == NULL) return NULL;
  if (ngx_array_init(&mcf->policies, cf->pool, 2, sizeof(ngx_http_floodgate_policy_t *)) != NGX_OK) return NULL;
  return mcf;
}

static void *ngx_http_floodgate_create_loc_conf(ngx_conf_t *cf) {
  ngx_http_floodgate_loc_conf_t *lcf = ngx_pcalloc(cf->pool, sizeof *lcf);
  if (lcf == NULL) return NULL;
  lcf->policy = NGX_CONF_UNSET_PTR;
  lcf->enable = NGX_CONF_UNSET;
  lcf->client = NGX_CONF_UNSET_PTR;
  return lcf;
}

static char *ngx_http_floodgate_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child) {
  ngx_http_floodgate_loc_conf_t *prev = parent, *conf = child;
  (void)cf;
  ngx_conf_merge_ptr_value(conf->policy, prev->policy, NULL);
  ngx_conf_merge_value(conf->enable, prev->enable, 1);
  ngx_conf_merge_ptr_value(conf->client, prev->client, NULL);
  return NGX_CONF_OK;
}

static ngx_int_t ngx_http_floodgate_init_process(ngx_cycle_t *cycle) {
  ngx_http_floodgate_main_conf_t *mcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_floodgate_module);
  if (mcf == NULL) return NGX_OK;
  ngx_http_floodgate_policy_t **p = mcf->policies.elts;
  for (ngx_uint_t i = 0; i < mcf->policies.nelts; i++) {
    if (!p[i]->per_worker) continue;
    fg_result r = fg_engine_from_file((const char *)p[i]->path.data, &p[i]->engine);
    if (r != FG_RESULT_OK) {
      u_char msg[768];
      floodgate_error(r, msg, sizeof msg);
      ngx_log_error(NGX_LOG_EMERG, cycle->log, 0, "floodgate_policy \"%V\": %s", &p[i]->path, msg);
      p[i]->engine = NULL; /* requests under it pass unchecked; logged above */
    }
  }
  return NGX_OK;
}

static void ngx_http_floodgate_exit_process(ngx_cycle_t *cycle) {
  ngx_http_floodgate_main_conf_t *mcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_floodgate_module);
  if (mcf == NULL) return;
  ngx_http_floodgate_policy_t **p = mcf->policies.elts;
  for (ngx_uint_t i = 0; i < mcf->policies.nelts; i++) {
    if (p[i]->per_worker && p[i]->engine != NULL) {
      fg_engine_free(p[i]->engine);
      p[i]->engine = NULL;
    }
  }
}

/* Request pool cleanup: a settlement never settled (the log phase did not run)
 * is freed; its charge stands and its place in flight expires in the store. */
static void ngx_http_floodgate_cleanup(void *data) {
  ngx_http_floodgate_ctx_t *ctx = data;
  if (ctx->settlement != NULL) {
    fg_settlement_free(ctx->settlement);
    ctx->settlement = NULL;
  }
}

/* This client request's decision, if one was made (found in the request pool,
 * which internal redirects keep). */
static ngx_http_floodgate_ctx_t *ngx_http_floodgate_decided(ngx_http_request_t *r) {
  for (ngx_pool_cleanup_t *c = r->main->pool->cleanup; c != NULL; c = c->next) {
    if (c->handler == ngx_http_floodgate_cleanup) return c->data;
  }
  return NULL;
}

/* Adds each "Name: value\r\n" line of `text` to the response headers. */
static ngx_int_t ngx_http_floodgate_add_headers(ngx_http_request_t *r, ngx_str_t *text) {
  u_char *p = text->data, *end = text->data + text->len;
  while (p < end) {
    u_char *eol = ngx_strlchr(p, end, '\r');
    u_char *colon = ngx_strlchr(p, eol ? eol : end, ':');
    if (eol == NULL || colon == NULL || colon + 2 > eol) break;
    ngx_table_elt_t *h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) return NGX_ERROR;
    h->hash = 1;
#if (nginx_version >= 1023000)
    h->next = NULL;
#endif
    h->key.data = p;
    h->key.len = colon - p;
    h->value.data = colon + 2;
    h->value.len = eol - (colon + 2);
    h->lowcase_key = NULL;
    p = eol + 2;
  }
  return NGX_OK;
}

/* Answers the request here: status, the verdict's headers, a JSON body. */
static ngx_int_t ngx_http_floodgate_answer(ngx_http_request_t *r, ngx_uint_t status, ngx_str_t *headers,
                                           const char *body, size_t body_len) {
  if (ngx_http_discard_request_body(r) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  r->headers_out.status = status;
  r->headers_out.content_length_n = body_len;
  ngx_str_set(&r->headers_out.content_type, "application/json");
  r->headers_out.content_type_len = r->headers_out.content_type.len;
  r->headers_out.content_type_lowcase = NULL;
  if (headers != NULL && ngx_http_floodgate_add_headers(r, headers) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  ngx_int_t rc = ngx_http_send_header(r);
  if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) return rc;
  ngx_buf_t *b = ngx_create_temp_buf(r->pool, body_len > 0 ? body_len : 1);
  if (b == NULL) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  b->last = ngx_cpymem(b->pos, body, body_len);
  b->last_buf = (r == r->main) ? 1 : 0;
  b->last_in_chain = 1;
  ngx_chain_t out = {b, NULL};
  return ngx_http_output_filter(r, &out);
}

/* A copy of `len` bytes in the request pool. */
static ngx_int_t ngx_http_floodgate_copy(ngx_http_request_t *r, ngx_str_t *to, const char *from, size_t len) {
  to->len = len;
  to->data = len > 0 ? ngx_pnalloc(r->pool, len) : NULL;
  if (len > 0 && to->data == NULL) return NGX_ERROR;
  if (len > 0) ngx_memcpy(to->data, from, len);
  return NGX_OK;
}

/* A body over FG_MAX_BODY_BYTES on a request a body rule meets: 413, whole,
 * with the body every front end sends. */
static ngx_int_t ngx_http_floodgate_too_large(ngx_http_request_t *r) {
  const char *big = fg_too_large_body();
  ngx_http_finalize_request(
      r, ngx_http_floodgate_answer(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, NULL, big, ngx_strlen(big)));
  return NGX_DONE;
}

/* The body is in: run the phases again, from this module's access handler. */
static void ngx_http_floodgate_body_read(ngx_http_request_t *r) {
  ngx_http_floodgate_ctx_t *ctx = ngx_http_get_module_ctx(r, ngx_http_floodgate_module);
  if (ctx != NULL) ctx->body = FG_NGX_BODY_READ;
  r->write_event_handler = ngx_http_core_run_phases;
  ngx_http_core_run_phases(r);
}

/* The body read for this request in one piece, in the request pool (NULL data
 * if there was none): from memory, or from nginx's temporary file for a body
 * past client_body_buffer_size. NGX_DECLINED when it is over
 * FG_MAX_BODY_BYTES. */
static ngx_int_t ngx_http_floodgate_request_body(ngx_http_request_t *r, ngx_str_t *out) {
  ngx_str_null(out);
  if (r->request_body == NULL) return NGX_OK;
  off_t len = 0;
  for (ngx_chain_t *cl = r->request_body->bufs; cl != NULL; cl = cl->next) len += ngx_buf_size(cl->buf);
  if (len > FG_MAX_BODY_BYTES) return NGX_DECLINED;
  u_char *p = ngx_pnalloc(r->pool, len > 0 ? (size_t)len : 1);
  if (p == NULL) return NGX_ERROR;
  out->data = p;
  for (ngx_chain_t *cl = r->request_body->bufs; cl != NULL; cl = cl->next) {
    ngx_buf_t *b = cl->buf;
    if (ngx_buf_in_memory(b)) {
      p = ngx_cpymem(p, b->pos, b->last - b->pos);
    } else if (b->in_file && b->file_last > b->file_pos) {
      size_t size = (size_t)(b->file_last - b->file_pos);
      if (ngx_read_file(b->file, p, size, b->file_pos) != (ssize_t)size) return NGX_ERROR;
      p += size;
    }
  }
  out->len = p - out->data;
  return NGX_OK;
}

static ngx_int_t ngx_http_floodgate_handler(ngx_http_request_t *r) {
  ngx_http_floodgate_loc_conf_t *lcf = ngx_http_get_module_loc_conf(r, ngx_http_floodgate_module);
  if (!lcf->enable || lcf->policy == NULL || lcf->policy->engine == NULL || r != r->main) return NGX_DECLINED;
  ngx_http_floodgate_ctx_t *done = ngx_http_floodgate_decided(r);
  if (done != NULL) { /* an internal redirect: decided once already */
    ngx_http_set_ctx(r, done, ngx_http_floodgate_module);
    return NGX_DECLINED;
  }
  const fg_engine *engine = lcf->policy->engine;

  /* A rule keys on a body field: read the body first (the phases run again
   * from here once it is in). While it is being read, a write event runs the
   * phases too: nothing to do yet. */
  ngx_http_floodgate_ctx_t *ctx = ngx_http_get_module_ctx(r, ngx_http_floodgate_module);
  if (ctx != NULL && ctx->body == FG_NGX_BODY_READING) return NGX_DONE;
  ngx_str_t body = ngx_null_string;
  if (ctx == NULL && fg_engine_reads_body(engine, (const char *)r->method_name.data, r->method_name.len,
                                          (const char *)r->unparsed_uri.data, r->unparsed_uri.len)) {
    if (r->headers_in.content_length_n > FG_MAX_BODY_BYTES) return ngx_http_floodgate_too_large(r);
    ctx = ngx_pcalloc(r->pool, sizeof *ctx);
    if (ctx == NULL) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    ctx->body = FG_NGX_BODY_READING;
    ngx_http_set_ctx(r, ctx, ngx_http_floodgate_module);
    ngx_int_t rc = ngx_http_read_client_request_body(r, ngx_http_floodgate_body_read);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) return rc;
    ngx_http_finalize_request(r, NGX_DONE);
    return NGX_DONE;
  }
  if (ctx != NULL && ctx->body == FG_NGX_BODY_READ) {
    ngx_int_t rc = ngx_http_floodgate_request_body(r, &body);
    if (rc == NGX_DECLINED) return ngx_http_floodgate_too_large(r); /* chunked, past the limit */
    if (rc != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  }

  /* Every request header, however many: reading only some would let a client
   * push its API key or token past what the engine sees. */
  ngx_uint_t count = 0;
  for (ngx_list_part_t *part = &r->headers_in.headers.part; part != NULL; part = part->next) count += part->nelts;
  fg_header *headers = ngx_palloc(r->pool, (count > 0 ? count : 1) * sizeof(fg_header));
  if (headers == NULL) return NGX_HTTP_INTERNAL_SERVER_ERROR;
  ngx_uint_t n = 0;
  for (ngx_list_part_t *part = &r->headers_in.headers.part; part != NULL; part = part->next) {
    ngx_table_elt_t *h = part->elts;
    for (ngx_uint_t i = 0; i < part->nelts && n < count; i++) {
      headers[n].name = (const char *)h[i].key.data;
      headers[n].name_len = h[i].key.len;
      headers[n].value = (const char *)h[i].value.data;
      headers[n].value_len = h[i].value.len;
      n++;
    }
  }

  ngx_str_t client = r->connection->addr_text;
#if (NGX_HAVE_UNIX_DOMAIN)
  /* A peer on a Unix socket has no address (addr_text is "unix:", which the
   * engine would refuse: a 400 for every request). No address is the engine's
   * one key '-' in IP-keyed rules; the realip module's `set_real_ip_from
   * unix:` replaces the peer with the client its header names. */
  if (r->connection->sockaddr->sa_family == AF_UNIX) client.len = 0;
#endif
  if (lcf->client != NULL && ngx_http_complex_value(r, lcf->client, &client) != NGX_OK) {
    return NGX_HTTP_INTERNAL_SERVER_ERROR;
  }

  fg_request req = {.method = (const char *)r->method_name.data,
                    .method_len = r->method_name.len,
                    .path = (const char *)r->unparsed_uri.data,
                    .path_len = r->unparsed_uri.len,
                    .client_ip = client.len > 0 ? (const char *)client.data : NULL,
                    .client_ip_len = client.len,
                    .headers = headers,
                    .header_count = n,
                    .body = body.data,
                    .body_len = body.len};
  fg_verdict v;
  fg_result rc = fg_engine_check_request(engine, &req, &v);

  if (ctx == NULL) ctx = ngx_pcalloc(r->pool, sizeof *ctx);
  ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, 0);
  if (ctx == NULL || cln == NULL) {
    if (rc == FG_RESULT_OK && v.settlement != NULL) fg_settlement_free(v.settlement);
    return NGX_HTTP_INTERNAL_SERVER_ERROR;
  }
  ctx->engine = engine;
  ctx->cost = -1;
  cln->handler = ngx_http_floodgate_cleanup;
  cln->data = ctx;

  if (rc != FG_RESULT_OK) {
    /* A request the engine cannot use: 400, with the body every front end sends. */
    static const char bad[] = "{\"error\":\"bad_request\"}";
    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "floodgate: %s", fg_result_message(rc));
    ngx_http_finalize_request(r, ngx_http_floodgate_answer(r, NGX_HTTP_BAD_REQUEST, NULL, bad, sizeof bad - 1));
    return NGX_DONE;
  }
  if (!v.allowed) {
    /* The verdict's strings live until the next check on this thread: copied. */
    ngx_str_t hdrs, body;
    if (ngx_http_floodgate_copy(r, &hdrs, v.headers, v.headers_len) != NGX_OK ||
        ngx_http_floodgate_copy(r, &body, v.body, v.body_len) != NGX_OK) {
      return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_http_finalize_request(
        r, ngx_http_floodgate_answer(r, v.status, &hdrs, (const char *)body.data, body.len));
    return NGX_DONE;
  }
  ctx->settlement = v.settlement;
  if (ngx_http_floodgate_copy(r, &ctx->headers, v.headers, v.headers_len) != NGX_OK) {
    return NGX_HTTP_INTERNAL_SERVER_ERROR;
  }
  ngx_http_set_ctx(r, ctx, ngx_http_floodgate_module);
  return NGX_DECLINED;
}

/* Allowed responses get the rate-limit headers; an upstream's Floodgate-Cost
 * header is read (for cost_from = "response") and removed. */
static ngx_int_t ngx_http_floodgate_header_filter(ngx_http_request_t *r) {
  ngx_http_floodgate_ctx_t *ctx = r == r->main ? ngx_http_get_module_ctx(r, ngx_http_floodgate_module) : NULL;
  if (ctx == NULL) return ngx_http_next_header_filter(r);
  if (ctx->settlement != NULL) {
    for (ngx_list_part_t *part = &r->headers_out.headers.part; part != NULL; part = part->next) {
      ngx_table_elt_t *h = part->elts;
      for (ngx_uint_t i = 0; i < part->nelts; i++) {
        if (h[i].hash != 0 && h[i].key.len == sizeof("floodgate-cost") - 1 &&
            ngx_strncasecmp(h[i].key.data, (u_char *)"floodgate-cost", h[i].key.len) == 0) {
          ngx_int_t cost = ngx_atoi(h[i].value.data, h[i].value.len);
          if (cost != NGX_ERROR) ctx->cost = cost;
          h[i].hash = 0; /* not sent */
        }
      }
    }
  }
  if (ctx->headers.len > 0 && ngx_http_floodgate_add_headers(r, &ctx->headers) != NGX_OK) return NGX_ERROR;
  ctx->headers.len = 0; /* once, whatever filters run again */
  return ngx_http_next_header_filter(r);
}

/* Log phase: the response is over; settle with its status (499 when the client
 * went away first, as nginx logs it). */
static ngx_int_t ngx_http_floodgate_log(ngx_http_request_t *r) {
  ngx_http_floodgate_ctx_t *ctx = r == r->main ? ngx_http_floodgate_decided(r) : NULL;
  if (ctx == NULL || ctx->settlement == NULL) return NGX_OK;
  ngx_uint_t status = r->err_status ? r->err_status : r->headers_out.status;
  if (status < 100 || status > 599) status = 499;
  fg_settlement *s = ctx->settlement;
  ctx->settlement = NULL;
  fg_result rc = fg_engine_settle(ctx->engine, s, (uint16_t)status, ctx->cost, 0);
  if (rc != FG_RESULT_OK) {
    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0, "floodgate: settle: %s", fg_result_message(rc));
  }
  return NGX_OK;
}

static ngx_int_t ngx_http_floodgate_init(ngx_conf_t *cf) {
  ngx_http_core_main_conf_t *cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);
  ngx_http_handler_pt *h = ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers);
  if (h == NULL) return NGX_ERROR;
  *h = ngx_http_floodgate_handler;
  h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
  if (h == NULL) return NGX_ERROR;
  *h = ngx_http_floodgate_log;
  ngx_http_next_header_filter = ngx_http_top_header_filter;
  ngx_http_top_header_filter = ngx_http_floodgate_header_filter;
  return NGX_OK;
}
