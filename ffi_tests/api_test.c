/* Exercises every function of the C API, success and error paths.
 * usage: api_test MODEL_DIR CORRUPT_DIR PROMPT_IDS FULL_GREEDY_IDS EXIT1_GREEDY_IDS
 * (ids comma-separated). Prints one line per failed check and a summary. */
#include "layerskip.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int32_t abort_now(void *user) {
    (void)user;
    return 1;
}

static int passed = 0, failed = 0;
#define CHECK(cond)                                                        \
    do {                                                                   \
        if (cond) {                                                        \
            passed++;                                                      \
        } else {                                                           \
            failed++;                                                      \
            fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                  \
    } while (0)

/* Check a call's code, and that a failure came with a message. */
static void expect(lsk_result got, lsk_result want, lsk_error *err, int line) {
    if (got != want) {
        failed++;
        fprintf(stderr, "FAILED line %d: got %u (%s: %s), want %u\n", line, (unsigned)got,
                lsk_result_name(got), err ? lsk_error_message(err) : "", (unsigned)want);
    } else if (want != LSK_OK && (err == NULL || lsk_error_code(err) != want ||
                                  strlen(lsk_error_message(err)) == 0)) {
        failed++;
        fprintf(stderr, "FAILED line %d: error object missing or wrong\n", line);
    } else {
        passed++;
    }
    lsk_error_free(err);
}
#define EXPECT(want, call)                          \
    do {                                            \
        lsk_error *err_ = NULL;                     \
        lsk_result r_ = (call);                     \
        expect(r_, (want), err_, __LINE__);         \
    } while (0)
/* `call` uses `&err_` as its error argument. */

static size_t parse_ids(const char *s, int32_t *out, size_t cap) {
    size_t n = 0;
    while (*s && n < cap) {
        char *end;
        out[n++] = (int32_t)strtol(s, &end, 10);
        s = (*end == ',') ? end + 1 : end;
    }
    return n;
}

static int argmax(const float *x, size_t n) {
    size_t i, best = 0;
    for (i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int)best;
}

typedef struct {
    int32_t tokens[256];
    size_t n;
    int stop_after;
    lsk_session *self;
    lsk_result reentrant;
    char text[4096];
    size_t text_len;
} collect;

static int32_t on_token(void *user, int32_t token, const char *text, size_t len) {
    collect *c = (collect *)user;
    c->tokens[c->n++] = token;
    if (c->text_len + len < sizeof c->text) {
        memcpy(c->text + c->text_len, text, len);
        c->text_len += len;
        c->text[c->text_len] = 0;
    }
    if (text[len] != 0) return 1; /* must be NUL-terminated */
    if (c->self) c->reentrant = lsk_session_step(c->self, token, 0, NULL, NULL, NULL);
    return c->stop_after > 0 && (int)c->n >= c->stop_after;
}

/* Generate greedily with the C loop of draft/verify calls. */
static size_t speculate(lsk_session *s, const int32_t *prompt, size_t np, uint32_t exit, uint32_t d,
                        int32_t *out, size_t want) {
    int32_t next, drafts[16];
    size_t n = 0, nd, acc, i;
    if (lsk_session_prefill(s, prompt, np, NULL, &next, NULL) != LSK_OK) return 0;
    while (n < want) {
        out[n++] = next;
        if (n >= want) break;
        if (lsk_session_draft(s, next, exit, d, NULL, drafts, 16, &nd, NULL) != LSK_OK) return 0;
        if (lsk_session_verify(s, next, drafts, nd, NULL, &acc, &next, NULL) != LSK_OK) return 0;
        for (i = 0; i < acc && n < want; i++) out[n++] = drafts[i];
    }
    return n;
}

/* ---- threads: 8 threads x 4 sessions on one model ---- */
typedef struct {
    lsk_model *model;
    const int32_t *prompt;
    size_t np;
    int id;
    int32_t out[4][24];
    size_t n[4];
    int ok;
} job;

static void run_jobs(job *j) {
    int k;
    j->ok = 1;
    for (k = 0; k < 4; k++) {
        lsk_session *s = NULL;
        lsk_generate_options o;
        collect c;
        memset(&c, 0, sizeof c);
        lsk_generate_options_init(&o, sizeof o);
        o.max_new_tokens = 24;
        o.ignore_eos = 1;
        o.mode = (uint32_t)((j->id + k) % 3);
        o.exit_layer = 1;
        o.draft_len = (uint32_t)(1 + k);
        if (lsk_session_new(j->model, NULL, &s, NULL) != LSK_OK ||
            lsk_session_generate(s, j->prompt + (j->id % 3), j->np - (size_t)(j->id % 3), &o, on_token,
                                 &c, NULL, NULL) != LSK_OK)
            j->ok = 0;
        memcpy(j->out[k], c.tokens, sizeof j->out[k]);
        j->n[k] = c.n;
        lsk_session_free(s);
    }
}

static void *thread_main(void *p) {
    run_jobs((job *)p);
    return NULL;
}

/* ---- a session used from two threads at once ---- */
typedef struct {
    lsk_session *s;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int phase; /* 1: generate is inside its callback; 2: the other thread tried */
    lsk_result other;
} busy_state;

static int32_t busy_cb(void *user, int32_t token, const char *text, size_t len) {
    busy_state *b = (busy_state *)user;
    (void)token; (void)text; (void)len;
    pthread_mutex_lock(&b->mu);
    if (b->phase == 0) {
        b->phase = 1;
        pthread_cond_broadcast(&b->cv);
        while (b->phase != 2) pthread_cond_wait(&b->cv, &b->mu);
    }
    pthread_mutex_unlock(&b->mu);
    return 0;
}

static void *busy_other(void *p) {
    busy_state *b = (busy_state *)p;
    pthread_mutex_lock(&b->mu);
    while (b->phase != 1) pthread_cond_wait(&b->cv, &b->mu);
    pthread_mutex_unlock(&b->mu);
    b->other = lsk_session_step(b->s, 5, 0, NULL, NULL, NULL);
    pthread_mutex_lock(&b->mu);
    b->phase = 2;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

int main(int argc, char **argv) {
    lsk_model *model = NULL, *none = NULL;
    lsk_session *s = NULL, *none_s = NULL;
    lsk_model_summary info;
    lsk_stats st;
    int32_t prompt[64], full[64], exit1[64], toks[64], buf[64];
    size_t np, nfull, nexit1, n, i;
    uint32_t L;
    char text[512];
    if (argc != 6) {
        fprintf(stderr, "usage: api_test MODEL CORRUPT PROMPT FULL EXIT1\n");
        return 2;
    }
#ifdef __SANITIZE_ADDRESS__
    printf("asan: on\n");
#endif
    np = parse_ids(argv[3], prompt, 64);
    nfull = parse_ids(argv[4], full, 64);
    nexit1 = parse_ids(argv[5], exit1, 64);

    /* Versions and trivia. */
    CHECK(lsk_abi_version() == LSK_ABI_VERSION);
    CHECK(strcmp(lsk_version_string(), LSK_VERSION_STRING) == 0);
    CHECK(strcmp(lsk_result_name(LSK_ERR_BUSY), "session busy") == 0);
    CHECK(strcmp(lsk_result_name(999), "unknown result code") == 0);
    CHECK(lsk_error_code(NULL) == LSK_ERR_NULL_POINTER);
    CHECK(strcmp(lsk_error_message(NULL), "") == 0);
    lsk_error_free(NULL);
    lsk_model_free(NULL);
    lsk_session_free(NULL);
    CHECK(lsk_sampling_init(NULL, 0) == LSK_ERR_NULL_POINTER);
    CHECK(lsk_generate_options_init(NULL, 0) == LSK_ERR_NULL_POINTER);

    /* Loading: NULLs, bad paths, corrupt files, unknown devices, struct sizes. */
    EXPECT(LSK_ERR_NULL_POINTER, lsk_model_load(NULL, NULL, &model, &err_));
    EXPECT(LSK_ERR_NULL_POINTER, lsk_model_load(argv[1], NULL, NULL, &err_));
    EXPECT(LSK_ERR_IO, lsk_model_load("/no/such/model", NULL, &none, &err_));
    EXPECT(LSK_ERR_WEIGHTS, lsk_model_load(argv[2], NULL, &none, &err_));
    CHECK(none == NULL);
    {
        lsk_model_options mo;
        lsk_model_options_init(&mo, sizeof mo);
        mo.device = 7;
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_model_load(argv[1], &mo, &none, &err_));
        /* A GPU that no machine here has: an error (no driver, or no such
           ordinal), never a crash, and nothing handed out. */
        mo.device = LSK_DEVICE_CUDA;
        mo.device_index = 99;
        {
            lsk_error *e = NULL;
            lsk_result r = lsk_model_load(argv[1], &mo, &none, &e);
            CHECK((r == LSK_ERR_UNSUPPORTED || r == LSK_ERR_INVALID_ARGUMENT) && none == NULL && e != NULL);
            lsk_error_free(e);
        }
        mo.device = LSK_DEVICE_CPU;
        mo.device_index = 0;
        mo.struct_size = 4;
        EXPECT(LSK_ERR_STRUCT_SIZE, lsk_model_load(argv[1], &mo, &none, &err_));
        lsk_model_options_init(&mo, sizeof mo);
        EXPECT(LSK_OK, lsk_model_load(argv[1], &mo, &model, &err_));

        /* Resource limits: a context cap and a KV-cache budget, enforced at session creation. */
        {
            lsk_model *limited = NULL;
            lsk_session *a = NULL, *b = NULL;
            lsk_session_options so;
            lsk_session_options_init(&so, sizeof so);
            lsk_model_options_init(&mo, sizeof mo);
            mo.max_context = 32;
            EXPECT(LSK_OK, lsk_model_load(argv[1], &mo, &limited, &err_));
            so.context_length = 33;
            EXPECT(LSK_ERR_RESOURCE_LIMIT, lsk_session_new(limited, &so, &a, &err_));
            so.context_length = 32;
            EXPECT(LSK_OK, lsk_session_new(limited, &so, &a, &err_));
            lsk_session_free(a);
            lsk_model_free(limited);
            /* A budget no session fits in; the Rust tests check the exact accounting. */
            lsk_model_options_init(&mo, sizeof mo);
            mo.kv_budget_bytes = 1;
            EXPECT(LSK_OK, lsk_model_load(argv[1], &mo, &limited, &err_));
            so.context_length = 1;
            {
                lsk_error *e = NULL;
                CHECK(lsk_session_new(limited, &so, &a, &e) == LSK_ERR_RESOURCE_LIMIT);
                CHECK(e != NULL && strstr(lsk_error_message(e), "budget") != NULL);
                lsk_error_free(e);
            }
            lsk_model_free(limited);
            lsk_model_options_init(&mo, sizeof mo);
            mo.kv_budget_bytes = (uint64_t)1 << 40;
            EXPECT(LSK_OK, lsk_model_load(argv[1], &mo, &limited, &err_));
            EXPECT(LSK_OK, lsk_session_new(limited, &so, &a, &err_));
            EXPECT(LSK_OK, lsk_session_new(limited, &so, &b, &err_));
            lsk_session_free(a);
            lsk_session_free(b);
            lsk_model_free(limited);
            /* A struct smaller than its 1.0 size is refused (older callers are
             * tested against the frozen 1.0 header in ffi_tests/abi/). */
            lsk_model_options_init(&mo, sizeof mo);
            mo.struct_size = 16;
            EXPECT(LSK_ERR_STRUCT_SIZE, lsk_model_load(argv[1], &mo, &limited, &err_));
            CHECK(lsk_model_options_init(&mo, 16) == LSK_ERR_STRUCT_SIZE);
            /* int8 products, bf16 products and a bf16 K/V cache: load and decode;
             * unknown values are refused. */
            lsk_model_options_init(&mo, sizeof mo);
            mo.quantize = 9;
            EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_model_load(argv[1], &mo, &none, &err_));
            lsk_model_options_init(&mo, sizeof mo);
            mo.kv_dtype = 7;
            EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_model_load(argv[1], &mo, &none, &err_));
            {
                uint32_t quantize[3] = {LSK_QUANTIZE_INT8, LSK_QUANTIZE_BF16, LSK_QUANTIZE_NONE};
                uint32_t kv[3] = {LSK_KV_F32, LSK_KV_F32, LSK_KV_BF16};
                int m;
                for (m = 0; m < 3; m++) {
                    int32_t p[3] = {2, 3, 4};
                    lsk_generate_result gr;
                    lsk_model_options_init(&mo, sizeof mo);
                    mo.quantize = quantize[m];
                    mo.kv_dtype = kv[m];
                    EXPECT(LSK_OK, lsk_model_load(argv[1], &mo, &limited, &err_));
                    EXPECT(LSK_OK, lsk_session_new(limited, NULL, &a, &err_));
                    lsk_generate_result_init(&gr, sizeof gr);
                    EXPECT(LSK_OK, lsk_session_generate(a, p, 3, NULL, NULL, NULL, &gr, &err_));
                    CHECK(gr.n_tokens >= 1);
                    lsk_session_free(a);
                    lsk_model_free(limited);
                }
            }
            /* A draft shortlist: self-speculation stays the full-depth greedy stream. */
            {
                lsk_generate_options go;
                collect shortlisted;
                memset(&shortlisted, 0, sizeof shortlisted);
                lsk_model_options_init(&mo, sizeof mo);
                mo.draft_shortlist = 32;
                EXPECT(LSK_OK, lsk_model_load(argv[1], &mo, &limited, &err_));
                EXPECT(LSK_OK, lsk_session_new(limited, NULL, &a, &err_));
                lsk_generate_options_init(&go, sizeof go);
                go.mode = LSK_MODE_SELF_SPECULATIVE;
                go.exit_layer = 1;
                go.max_new_tokens = (uint32_t)nfull;
                go.ignore_eos = 1;
                EXPECT(LSK_OK, lsk_session_generate(a, prompt, np, &go, on_token, &shortlisted, NULL, &err_));
                CHECK(shortlisted.n == nfull && memcmp(shortlisted.tokens, full, nfull * sizeof(int32_t)) == 0);
                lsk_session_free(a);
                lsk_model_free(limited);
            }
        }
    }
    CHECK(model != NULL);
    CHECK(lsk_model_load("/no/such/model", NULL, &none, NULL) == LSK_ERR_IO); /* err may be NULL */

    /* Info. */
    memset(&info, 0, sizeof info);
    EXPECT(LSK_ERR_STRUCT_SIZE, lsk_model_info(model, &info, &err_));
    lsk_model_summary_init(&info, sizeof info);
    EXPECT(LSK_ERR_NULL_POINTER, lsk_model_info(NULL, &info, &err_));
    EXPECT(LSK_OK, lsk_model_info(model, &info, &err_));
    L = info.n_layers;
    CHECK(L >= 2 && info.vocab_size > 0 && info.n_eos_token_ids >= 1);

    /* Tokenize / detokenize with buffer-size queries. */
    EXPECT(LSK_ERR_BUFFER_TOO_SMALL, lsk_tokenize(model, "def f(x):", 9, 1, NULL, 0, &n, &err_));
    CHECK(n > 2);
    EXPECT(LSK_OK, lsk_tokenize(model, "def f(x):", 9, 1, toks, 64, &n, &err_));
    EXPECT(LSK_ERR_UTF8, lsk_tokenize(model, "\xff\xfe", 2, 1, toks, 64, &n, &err_));
    EXPECT(LSK_ERR_NULL_POINTER, lsk_tokenize(model, NULL, 3, 1, toks, 64, &n, &err_));
    {
        size_t nn = 77; /* outputs are untouched on failure */
        EXPECT(LSK_ERR_NULL_POINTER, lsk_tokenize(model, "abc", 3, 1, NULL, 5, &nn, &err_));
        CHECK(nn == 77);
        EXPECT(LSK_ERR_NULL_POINTER, lsk_detokenize(model, toks, 1, 1, NULL, 5, &nn, &err_));
        CHECK(nn == 77);
    }
    {
        size_t ne = 99;
        EXPECT(LSK_OK, lsk_tokenize(model, NULL, 0, 0, toks + 32, 16, &ne, &err_));
        CHECK(ne == 0);
    }
    {
        size_t len = 0;
        EXPECT(LSK_ERR_BUFFER_TOO_SMALL, lsk_detokenize(model, toks, n, 1, text, 3, &len, &err_));
        CHECK(len == strlen("def f(x):") + 1);
        EXPECT(LSK_OK, lsk_detokenize(model, toks, n, 1, text, sizeof text, &len, &err_));
        CHECK(strcmp(text, "def f(x):") == 0 && len == 9);
        buf[0] = (int32_t)info.vocab_size;
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_detokenize(model, buf, 1, 1, text, sizeof text, &len, &err_));
        buf[0] = -1;
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_detokenize(model, buf, 1, 1, text, sizeof text, &len, &err_));
    }

    /* Sessions. */
    EXPECT(LSK_ERR_NULL_POINTER, lsk_session_new(NULL, NULL, &s, &err_));
    {
        lsk_session_options so;
        lsk_session_options_init(&so, sizeof so);
        so.context_length = 4000000000u;
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_new(model, &so, &none_s, &err_));
    }
    EXPECT(LSK_OK, lsk_session_new(model, NULL, &s, &err_));

    /* Hostile prefill/step leave the session untouched. */
    buf[0] = 1;
    buf[1] = (int32_t)info.vocab_size + 5;
    EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_prefill(s, buf, 2, NULL, NULL, &err_));
    EXPECT(LSK_ERR_NULL_POINTER, lsk_session_prefill(s, NULL, 2, NULL, NULL, &err_));
    EXPECT(LSK_ERR_NULL_POINTER, lsk_session_prefill(NULL, buf, 1, NULL, NULL, &err_));
    {
        const float *lg = NULL;
        size_t nv = 0;
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_logits(s, &lg, &nv, &err_));
    }
    lsk_stats_init(&st, sizeof st);
    EXPECT(LSK_OK, lsk_session_stats(s, &st, &err_));
    CHECK(st.shallow_len == 0);
    {
        lsk_sampling bad;
        lsk_sampling_init(&bad, sizeof bad);
        bad.top_p = 0.0f;
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_prefill(s, prompt, np, &bad, NULL, &err_));
    }

    /* Prefill + greedy steps = the reference greedy continuation. */
    {
        int32_t next;
        const float *lg;
        size_t nv;
        EXPECT(LSK_OK, lsk_session_prefill(s, prompt, np, NULL, &next, &err_));
        EXPECT(LSK_OK, lsk_session_logits(s, &lg, &nv, &err_));
        CHECK(nv == info.vocab_size && argmax(lg, nv) == next);
        toks[0] = next;
        for (i = 1; i < nfull; i++) {
            EXPECT(LSK_OK, lsk_session_step(s, toks[i - 1], 0, NULL, &toks[i], &err_));
        }
        CHECK(memcmp(toks, full, nfull * sizeof(int32_t)) == 0);
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_step(s, 1, L + 1, NULL, &next, &err_));
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_step(s, -3, 0, NULL, &next, &err_));
        lsk_stats_init(&st, sizeof st);
        EXPECT(LSK_OK, lsk_session_stats(s, &st, &err_));
        CHECK(st.shallow_len == np + nfull - 1 && st.deep_len == st.shallow_len);
        /* Early exit leaves the deep layers behind. */
        EXPECT(LSK_OK, lsk_session_step(s, toks[nfull - 1], 1, NULL, &next, &err_));
        lsk_stats_init(&st, sizeof st);
        EXPECT(LSK_OK, lsk_session_stats(s, &st, &err_));
        CHECK(st.shallow_len == np + nfull && st.deep_len == np + nfull - 1);
        /* Rewind. */
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_rewind(s, 100000, &err_));
        EXPECT(LSK_OK, lsk_session_rewind(s, np, &err_));
        lsk_stats_init(&st, sizeof st);
        EXPECT(LSK_OK, lsk_session_stats(s, &st, &err_));
        CHECK(st.shallow_len == np && st.deep_len == np);
    }

    /* Early exit greedy at E = 1 through steps. */
    {
        lsk_session *e = NULL;
        int32_t next;
        EXPECT(LSK_OK, lsk_session_new(model, NULL, &e, &err_));
        EXPECT(LSK_OK, lsk_session_rewind(e, 0, &err_));
        /* prefill at exit 1: feed prompt with steps */
        for (i = 0; i < np; i++) EXPECT(LSK_OK, lsk_session_step(e, prompt[i], 1, NULL, &next, &err_));
        toks[0] = next;
        for (i = 1; i < nexit1; i++) EXPECT(LSK_OK, lsk_session_step(e, toks[i - 1], 1, NULL, &toks[i], &err_));
        CHECK(memcmp(toks, exit1, nexit1 * sizeof(int32_t)) == 0);
        lsk_session_free(e);
    }

    /* Draft/verify: hostile arguments, then a lossless loop for several (E, d). */
    {
        lsk_session *d = NULL;
        int32_t drafts[16], next, after;
        size_t nd, acc;
        uint32_t E, D;
        EXPECT(LSK_OK, lsk_session_new(model, NULL, &d, &err_));
        EXPECT(LSK_OK, lsk_session_prefill(d, prompt, np, NULL, &next, &err_));
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_draft(d, next, 0, 4, NULL, drafts, 16, &nd, &err_));
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_draft(d, next, L, 4, NULL, drafts, 16, &nd, &err_));
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_draft(d, next, 1, 0, NULL, drafts, 16, &nd, &err_));
        EXPECT(LSK_ERR_BUFFER_TOO_SMALL, lsk_session_draft(d, next, 1, 1000000, NULL, drafts, 16, &nd, &err_));
        EXPECT(LSK_ERR_NULL_POINTER, lsk_session_draft(d, next, 1, 4, NULL, NULL, 16, &nd, &err_));
        EXPECT(LSK_ERR_NULL_POINTER, lsk_session_verify(d, next, NULL, 2, NULL, &acc, &after, &err_));
        lsk_session_free(d);
        for (E = 1; E < L; E++) {
            for (D = 1; D <= 5; D += 2) {
                EXPECT(LSK_OK, lsk_session_new(model, NULL, &d, &err_));
                n = speculate(d, prompt, np, E, D, toks, nfull);
                CHECK(n == nfull && memcmp(toks, full, nfull * sizeof(int32_t)) == 0);
                lsk_stats_init(&st, sizeof st);
                EXPECT(LSK_OK, lsk_session_stats(d, &st, &err_));
                CHECK(st.drafted > 0 && st.accepted <= st.drafted && st.rounds > 0);
                lsk_session_free(d);
            }
        }
        /* External drafts: the true continuation, with a wrong token in it. */
        EXPECT(LSK_OK, lsk_session_new(model, NULL, &d, &err_));
        EXPECT(LSK_OK, lsk_session_prefill(d, prompt, np, NULL, &next, &err_));
        drafts[0] = full[1];
        drafts[1] = full[2];
        drafts[2] = (full[3] + 1) % (int32_t)info.vocab_size;
        EXPECT(LSK_OK, lsk_session_verify(d, next, drafts, 3, NULL, &acc, &after, &err_));
        CHECK(acc == 2 && after == full[3]);
        {
            /* The verify pass's rows: row k scores the token after draft k. */
            const float *row = NULL, *last = NULL;
            size_t nv = 0, k, best;
            int r;
            for (r = 0; r < 3; r++) {
                EXPECT(LSK_OK, lsk_session_logits_ith(d, r, &row, &nv, &err_));
                for (best = 0, k = 1; k < nv; k++)
                    if (row[k] > row[best]) best = k;
                CHECK(nv == info.vocab_size && (int32_t)best == full[r + 1]);
            }
            EXPECT(LSK_OK, lsk_session_logits_ith(d, 3, &row, &nv, &err_));
            EXPECT(LSK_OK, lsk_session_logits_ith(d, -1, &last, &nv, &err_));
            CHECK(row == last);
            EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_logits_ith(d, 4, &row, &nv, &err_));
            EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_logits_ith(d, -5, &row, &nv, &err_));
            EXPECT(LSK_ERR_NULL_POINTER, lsk_session_logits_ith(d, 0, NULL, &nv, &err_));
        }
        /* Verify with no drafts is a full-depth step. */
        EXPECT(LSK_OK, lsk_session_verify(d, after, NULL, 0, NULL, &acc, &after, &err_));
        CHECK(acc == 0 && after == full[4]);
        lsk_session_free(d);
    }

    /* An abort callback stops a prefill between layers; the session is as it was. */
    {
        lsk_session *a = NULL;
        int32_t next = -1;
        EXPECT(LSK_OK, lsk_session_new(model, NULL, &a, &err_));
        EXPECT(LSK_OK, lsk_session_set_abort(a, abort_now, NULL, &err_));
        EXPECT(LSK_ERR_ABORTED, lsk_session_prefill(a, prompt, np, NULL, &next, &err_));
        lsk_stats_init(&st, sizeof st);
        EXPECT(LSK_OK, lsk_session_stats(a, &st, &err_));
        CHECK(st.shallow_len == 0 && st.deep_len == 0 && next == -1);
        EXPECT(LSK_OK, lsk_session_set_abort(a, NULL, NULL, &err_));
        EXPECT(LSK_OK, lsk_session_prefill(a, prompt, np, NULL, &next, &err_));
        CHECK(next == full[0]);
        lsk_session_free(a);
    }

    /* Context overflow keeps the session and what it holds. */
    {
        lsk_session *c = NULL;
        lsk_session_options so;
        int32_t next;
        lsk_session_options_init(&so, sizeof so);
        so.context_length = (uint32_t)np + 2;
        EXPECT(LSK_OK, lsk_session_new(model, &so, &c, &err_));
        EXPECT(LSK_OK, lsk_session_prefill(c, prompt, np, NULL, &next, &err_));
        EXPECT(LSK_ERR_CONTEXT_OVERFLOW, lsk_session_prefill(c, prompt, 3, NULL, NULL, &err_));
        lsk_stats_init(&st, sizeof st);
        EXPECT(LSK_OK, lsk_session_stats(c, &st, &err_));
        CHECK(st.shallow_len == np);
        EXPECT(LSK_OK, lsk_session_step(c, next, 0, NULL, &next, &err_));
        CHECK(next == full[1]);
        lsk_session_free(c);
    }

    /* Generate: callback, stop by callback, stop strings, bad options. */
    {
        lsk_session *g = NULL;
        lsk_generate_options o;
        lsk_generate_result res;
        collect c;
        const char *stops[1];
        EXPECT(LSK_OK, lsk_session_new(model, NULL, &g, &err_));
        lsk_generate_options_init(&o, sizeof o);
        o.max_new_tokens = (uint32_t)nfull;
        o.ignore_eos = 1;
        memset(&c, 0, sizeof c);
        lsk_generate_result_init(&res, sizeof res);
        EXPECT(LSK_OK, lsk_session_generate(g, prompt, np, &o, on_token, &c, &res, &err_));
        CHECK(c.n == nfull && memcmp(c.tokens, full, nfull * sizeof(int32_t)) == 0);
        CHECK(res.n_tokens == nfull && res.stop_reason == LSK_STOP_MAX_TOKENS && res.prompt_tokens == np);
        CHECK(res.prompt_seconds > 0 && res.prompt_seconds <= res.seconds && res.prompt_tokens_per_second > 0);
        CHECK(nfull < 2 || res.decode_tokens_per_second > 0);
        lsk_session_free(g);

        EXPECT(LSK_OK, lsk_session_new(model, NULL, &g, &err_));
        o.mode = LSK_MODE_SELF_SPECULATIVE;
        o.exit_layer = 1;
        o.draft_len = 3;
        memset(&c, 0, sizeof c);
        c.stop_after = 5;
        lsk_generate_result_init(&res, sizeof res);
        EXPECT(LSK_OK, lsk_session_generate(g, prompt, np, &o, on_token, &c, &res, &err_));
        CHECK(c.n == 5 && res.stop_reason == LSK_STOP_CALLBACK && memcmp(c.tokens, full, 5 * sizeof(int32_t)) == 0);
        /* The session still works after the callback stopped it. */
        {
            int32_t next;
            EXPECT(LSK_OK, lsk_session_step(g, full[4], 0, NULL, &next, &err_));
        }
        lsk_session_free(g);

        /* Automatic (E, d): the same greedy tokens, and the spans cover them. */
        EXPECT(LSK_OK, lsk_session_new(model, NULL, &g, &err_));
        o.exit_layer = LSK_AUTO;
        o.draft_len = LSK_AUTO;
        memset(&c, 0, sizeof c);
        lsk_generate_result_init(&res, sizeof res);
        EXPECT(LSK_OK, lsk_session_generate(g, prompt, np, &o, on_token, &c, &res, &err_));
        CHECK(c.n == nfull && memcmp(c.tokens, full, nfull * sizeof(int32_t)) == 0);
        {
            lsk_choice_span spans[64];
            size_t n = 0, i;
            uint64_t rounds = 0, tokens = 0;
            EXPECT(LSK_OK, lsk_session_choices(g, spans, 64, &n, &err_));
            CHECK(n >= 1 && n <= 64 && spans[0].first_token == 1); /* token 0 comes from the prompt pass */
            for (i = 0; i < n && i < 64; i++) {
                CHECK(spans[i].exit_layer >= 1 && spans[i].exit_layer <= info.n_layers);
                CHECK(spans[i].draft_len == 0 ? spans[i].exit_layer == info.n_layers : spans[i].exit_layer < info.n_layers);
                rounds += spans[i].rounds;
                tokens += spans[i].tokens;
            }
            CHECK(rounds >= 1 && rounds <= nfull);
            CHECK(n > 64 || tokens == nfull - 1); /* token 0 comes from the prompt pass */
            EXPECT(LSK_OK, lsk_session_choices(g, NULL, 0, &n, &err_));
            EXPECT(LSK_ERR_NULL_POINTER, lsk_session_choices(g, NULL, 1, &n, &err_));
            EXPECT(LSK_ERR_NULL_POINTER, lsk_session_choices(g, spans, 1, NULL, &err_));
        }
        o.mode = LSK_MODE_EARLY_EXIT;
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_generate(g, prompt, np, &o, NULL, NULL, NULL, &err_));
        o.mode = LSK_MODE_SELF_SPECULATIVE;
        o.exit_layer = info.n_layers;
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_generate(g, prompt, np, &o, NULL, NULL, NULL, &err_));
        o.exit_layer = 1;
        o.draft_len = 3;
        lsk_session_free(g);

        /* A callback calling back into its own session gets LSK_ERR_BUSY. */
        EXPECT(LSK_OK, lsk_session_new(model, NULL, &g, &err_));
        memset(&c, 0, sizeof c);
        c.self = g;
        c.stop_after = 2;
        o.mode = LSK_MODE_FULL;
        EXPECT(LSK_OK, lsk_session_generate(g, prompt, np, &o, on_token, &c, NULL, &err_));
        CHECK(c.reentrant == LSK_ERR_BUSY);

        /* Stop string: the text up to it, never the string itself. */
        {
            lsk_session *g2 = NULL;
            collect all;
            memset(&all, 0, sizeof all);
            EXPECT(LSK_OK, lsk_session_new(model, NULL, &g2, &err_));
            EXPECT(LSK_OK, lsk_session_generate(g2, prompt, np, &o, on_token, &all, NULL, &err_));
            lsk_session_free(g2);
            if (all.text_len > 4) {
                char stop[3];
                size_t cut = all.text_len / 2;
                while (cut < all.text_len && (all.text[cut] & 0xC0) == 0x80) cut++;
                memcpy(stop, all.text + cut, 2);
                stop[2] = 0;
                if (strlen(stop) == 2 && (stop[1] & 0xC0) != 0x80 && (stop[0] & 0x80) == 0) {
                    stops[0] = stop;
                    o.stop_strings = stops;
                    o.n_stop_strings = 1;
                    memset(&c, 0, sizeof c);
                    lsk_generate_result_init(&res, sizeof res);
                    EXPECT(LSK_OK, lsk_session_new(model, NULL, &g2, &err_));
                    EXPECT(LSK_OK, lsk_session_generate(g2, prompt, np, &o, on_token, &c, &res, &err_));
                    CHECK(res.stop_reason == LSK_STOP_STRING);
                    CHECK(strstr(c.text, stop) == NULL && strncmp(c.text, all.text, c.text_len) == 0);
                    lsk_session_free(g2);
                    o.stop_strings = NULL;
                    o.n_stop_strings = 0;
                }
            }
        }
        o.mode = 9;
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_generate(g, prompt, np, &o, NULL, NULL, NULL, &err_));
        o.mode = LSK_MODE_SELF_SPECULATIVE;
        o.draft_len = 0;
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_generate(g, prompt, np, &o, NULL, NULL, NULL, &err_));
        o.draft_len = 2;
        o.n_stop_strings = 2;
        EXPECT(LSK_ERR_NULL_POINTER, lsk_session_generate(g, prompt, np, &o, NULL, NULL, NULL, &err_));
        {
            /* An empty stop string, and drafting at the last layer (nothing
             * left to verify with), are errors. */
            const char *empty[1] = {""};
            lsk_model_summary si;
            lsk_model_summary_init(&si, sizeof si);
            EXPECT(LSK_OK, lsk_model_info(model, &si, &err_));
            o.stop_strings = empty;
            o.n_stop_strings = 1;
            EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_generate(g, prompt, np, &o, NULL, NULL, NULL, &err_));
            o.stop_strings = NULL;
            o.exit_layer = si.n_layers;
            EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_generate(g, prompt, np, &o, NULL, NULL, NULL, &err_));
            o.exit_layer = 1;
        }
        o.n_stop_strings = 0;
        {
            /* A result struct of a bad size fails before generating. */
            lsk_session *g3 = NULL;
            lsk_stats s3;
            EXPECT(LSK_OK, lsk_session_new(model, NULL, &g3, &err_));
            res.struct_size = 8;
            EXPECT(LSK_ERR_STRUCT_SIZE, lsk_session_generate(g3, prompt, np, &o, NULL, NULL, &res, &err_));
            lsk_stats_init(&s3, sizeof s3);
            EXPECT(LSK_OK, lsk_session_stats(g3, &s3, &err_));
            CHECK(s3.shallow_len == 0);
            lsk_session_free(g3);
        }
        o.struct_size = 8;
        EXPECT(LSK_ERR_STRUCT_SIZE, lsk_session_generate(g, prompt, np, &o, NULL, NULL, NULL, &err_));
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_session_generate(g, NULL, 0, NULL, NULL, NULL, NULL, &err_));
        lsk_session_free(g);
    }

    /* Batched stepping: sessions at full depth and at exit 1 advance together
       and produce exactly their solo greedy continuations; a bad token, a
       NULL session and a session listed twice fail alone. */
    {
        lsk_session *bs[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
        const int32_t *tk[6];
        size_t ntk[6], k, step;
        uint32_t ex[6] = {0, 1, 0, 1, 0, 0};
        int32_t next[6], bad = 1 << 20;
        lsk_result rs[6];
        int32_t got[4][64];
        for (k = 0; k < 4; k++) EXPECT(LSK_OK, lsk_session_new(model, NULL, &bs[k], &err_));
        bs[4] = NULL;
        bs[5] = bs[0];
        for (k = 0; k < 6; k++) {
            tk[k] = prompt;
            ntk[k] = np;
        }
        for (step = 0; step < nfull && step < nexit1; step++) {
            tk[2] = &bad; /* the third session always gets an out-of-range token */
            ntk[2] = 1;
            EXPECT(LSK_OK, lsk_sessions_step(bs, 6, tk, ntk, ex, NULL, next, rs, &err_));
            CHECK(rs[0] == LSK_OK && rs[1] == LSK_OK && rs[3] == LSK_OK);
            CHECK(rs[2] == LSK_ERR_INVALID_ARGUMENT && next[2] == -1);
            CHECK(rs[4] == LSK_ERR_NULL_POINTER && rs[5] == LSK_ERR_BUSY && next[5] == -1);
            for (k = 0; k < 4; k++) {
                if (k == 2) continue;
                got[k][step] = next[k];
                tk[k] = &got[k][step];
                ntk[k] = 1;
            }
        }
        CHECK(memcmp(got[0], full, step * sizeof(int32_t)) == 0);
        CHECK(memcmp(got[1], exit1, step * sizeof(int32_t)) == 0);
        CHECK(memcmp(got[3], exit1, step * sizeof(int32_t)) == 0);
        lsk_stats_init(&st, sizeof st);
        EXPECT(LSK_OK, lsk_session_stats(bs[2], &st, &err_));
        CHECK(st.shallow_len == 0); /* the failed session is untouched and usable */
        EXPECT(LSK_OK, lsk_session_prefill(bs[2], prompt, np, NULL, NULL, &err_));
        EXPECT(LSK_ERR_NULL_POINTER, lsk_sessions_step(NULL, 2, tk, ntk, NULL, NULL, next, rs, &err_));
        EXPECT(LSK_ERR_NULL_POINTER, lsk_sessions_step(bs, 2, tk, ntk, NULL, NULL, NULL, rs, &err_));
        EXPECT(LSK_OK, lsk_sessions_step(NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, &err_));
        for (k = 0; k < 4; k++) lsk_session_free(bs[k]);
    }

    /* Host-driven rounds: four sessions in four modes, a bad round and a
       session named twice; each good one yields its solo greedy output. */
    {
        lsk_session *rs_[5] = {NULL, NULL, NULL, NULL, NULL};
        lsk_round r[6];
        int32_t got[4][64], in[4], out[6][64];
        size_t have[4] = {0, 0, 0, 0}, k, left = 4;
        lsk_error *bad_err = NULL;
        for (k = 0; k < 5; k++) EXPECT(LSK_OK, lsk_session_new(model, NULL, &rs_[k], &err_));
        CHECK(lsk_round_init(&r[0], 8) == LSK_ERR_STRUCT_SIZE);
        for (k = 0; k < 6; k++) {
            lsk_round_init(&r[k], sizeof r[k]);
            r[k].session = rs_[k < 4 ? k : 0];
            r[k].input = prompt;
            r[k].n_input = np;
            r[k].tokens = out[k];
            r[k].max_tokens = 1;
        }
        r[1].mode = LSK_MODE_EARLY_EXIT;
        r[1].exit_layer = 1;
        r[2].mode = LSK_MODE_SELF_SPECULATIVE;
        r[2].exit_layer = 1;
        r[2].draft_len = 3;
        r[3].mode = LSK_MODE_SELF_SPECULATIVE;
        r[3].exit_layer = LSK_AUTO;
        r[3].draft_len = LSK_AUTO;
        r[4].max_tokens = 0; /* bad: fails alone, with its message */
        r[4].session = rs_[4];
        r[4].err = &bad_err;
        /* r[5] names rs_[0], which r[0] holds: busy. */
        EXPECT(LSK_OK, lsk_sessions_round(r, 6, &err_));
        CHECK(r[4].result == LSK_ERR_INVALID_ARGUMENT && r[4].n_tokens == 0);
        CHECK(bad_err != NULL && strstr(lsk_error_message(bad_err), "max_tokens must be at least 1") != NULL);
        lsk_error_free(bad_err);
        CHECK(r[5].result == LSK_ERR_BUSY);
        while (left > 0) {
            lsk_round live[4];
            size_t m = 0, idx[4];
            for (k = 0; k < 4; k++) {
                if (r[k].result != LSK_OK || r[k].n_tokens == 0) continue;
                memcpy(&got[k][have[k]], out[k], r[k].n_tokens * sizeof(int32_t));
                have[k] += r[k].n_tokens;
                in[k] = got[k][have[k] - 1];
                r[k].n_tokens = 0;
            }
            left = 0;
            for (k = 0; k < 4; k++) {
                if (have[k] >= nfull) continue;
                r[k].input = &in[k];
                r[k].n_input = 1;
                r[k].max_tokens = (uint32_t)(nfull - have[k]);
                live[m] = r[k];
                idx[m++] = k;
                left++;
            }
            if (m == 0) break;
            EXPECT(LSK_OK, lsk_sessions_round(live, m, &err_));
            for (k = 0; k < m; k++) {
                CHECK(live[k].result == LSK_OK && live[k].n_tokens >= 1);
                r[idx[k]] = live[k];
            }
        }
        CHECK(memcmp(got[0], full, nfull * sizeof(int32_t)) == 0);
        CHECK(nexit1 >= nfull && memcmp(got[1], exit1, nfull * sizeof(int32_t)) == 0);
        CHECK(memcmp(got[2], full, nfull * sizeof(int32_t)) == 0);
        CHECK(memcmp(got[3], full, nfull * sizeof(int32_t)) == 0);
        lsk_stats_init(&st, sizeof st);
        EXPECT(LSK_OK, lsk_session_stats(rs_[2], &st, &err_));
        CHECK(st.shallow_len == np + nfull - 1 && st.drafted > 0);
        EXPECT(LSK_ERR_NULL_POINTER, lsk_sessions_round(NULL, 1, &err_));
        EXPECT(LSK_OK, lsk_model_reset_policy(model, &err_));
        EXPECT(LSK_ERR_NULL_POINTER, lsk_model_reset_policy(NULL, &err_));
        EXPECT(LSK_OK, lsk_sessions_round(NULL, 0, &err_));
        for (k = 0; k < 5; k++) lsk_session_free(rs_[k]);
    }

    /* A continuous batch of generations in every mode: each yields exactly its
       solo greedy output; one joins late, one is cancelled, one fails. */
    {
        lsk_batch *b = NULL;
        lsk_session *gs[5] = {NULL, NULL, NULL, NULL, NULL};
        collect cs[5];
        lsk_generate_options go[5];
        uint64_t ids[5];
        size_t running = 0, k, rounds = 0;
        lsk_generate_result res;
        int32_t bad = -7;
        EXPECT(LSK_OK, lsk_batch_new(model, &b, &err_));
        for (k = 0; k < 5; k++) {
            EXPECT(LSK_OK, lsk_session_new(model, NULL, &gs[k], &err_));
            lsk_generate_options_init(&go[k], sizeof go[k]);
            go[k].max_new_tokens = (uint32_t)nfull;
            go[k].ignore_eos = 1;
            memset(&cs[k], 0, sizeof cs[k]);
        }
        go[1].mode = LSK_MODE_SELF_SPECULATIVE;
        go[1].exit_layer = 1;
        go[1].draft_len = 3;
        go[2].mode = LSK_MODE_SELF_SPECULATIVE;
        go[2].exit_layer = LSK_AUTO;
        go[2].draft_len = LSK_AUTO;
        go[3].mode = LSK_MODE_EARLY_EXIT;
        go[3].exit_layer = 1;
        for (k = 0; k < 3; k++) EXPECT(LSK_OK, lsk_batch_add(b, gs[k], prompt, np, &go[k], on_token, &cs[k], &ids[k], &err_));
        /* A bad prompt is refused at once; the session stays its caller's. */
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_batch_add(b, gs[4], &bad, 1, NULL, NULL, NULL, &ids[4], &err_));
        EXPECT(LSK_OK, lsk_session_prefill(gs[4], prompt, np, NULL, NULL, &err_));
        /* A lent session is busy for other calls. */
        EXPECT(LSK_ERR_BUSY, lsk_session_step(gs[0], 5, 0, NULL, NULL, &err_));
        EXPECT(LSK_ERR_BUSY, lsk_batch_add(b, gs[0], prompt, np, NULL, NULL, NULL, &ids[4], &err_));
        EXPECT(LSK_ERR_BUSY, lsk_batch_result(b, ids[0], &res, &err_));
        do {
            if (rounds == 2) EXPECT(LSK_OK, lsk_batch_add(b, gs[3], prompt, np, &go[3], on_token, &cs[3], &ids[3], &err_));
            EXPECT(LSK_OK, lsk_batch_step(b, &running, &err_));
            rounds++;
        } while ((running > 0 || rounds < 3) && rounds < 1000);
        CHECK(cs[0].n == nfull && memcmp(cs[0].tokens, full, nfull * sizeof(int32_t)) == 0);
        CHECK(cs[1].n == nfull && memcmp(cs[1].tokens, full, nfull * sizeof(int32_t)) == 0);
        CHECK(cs[2].n == nfull && memcmp(cs[2].tokens, full, nfull * sizeof(int32_t)) == 0);
        CHECK(cs[3].n >= nexit1 && memcmp(cs[3].tokens, exit1, nexit1 * sizeof(int32_t)) == 0);
        for (k = 0; k < 4; k++) {
            /* A result struct of a bad size fails and keeps the result. */
            res.struct_size = 8;
            EXPECT(LSK_ERR_STRUCT_SIZE, lsk_batch_result(b, ids[k], &res, &err_));
            lsk_generate_result_init(&res, sizeof res);
            EXPECT(LSK_OK, lsk_batch_result(b, ids[k], &res, &err_));
            CHECK(res.n_tokens == nfull && res.stop_reason == LSK_STOP_MAX_TOKENS && res.prompt_tokens == np);
            EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_batch_result(b, ids[k], &res, &err_)); /* collected once */
            /* The session is back and continues from its generation. */
            lsk_stats_init(&st, sizeof st);
            EXPECT(LSK_OK, lsk_session_stats(gs[k], &st, &err_));
            CHECK(st.shallow_len == np + nfull - 1);
        }
        /* Cancel: tokens so far stay delivered, the session comes back. */
        memset(&cs[0], 0, sizeof cs[0]);
        EXPECT(LSK_OK, lsk_session_rewind(gs[0], 0, &err_));
        EXPECT(LSK_OK, lsk_batch_add(b, gs[0], prompt, np, &go[0], on_token, &cs[0], &ids[0], &err_));
        EXPECT(LSK_OK, lsk_batch_step(b, &running, &err_));
        EXPECT(LSK_OK, lsk_batch_step(b, &running, &err_));
        CHECK(running == 1);
        EXPECT(LSK_OK, lsk_batch_cancel(b, ids[0], &err_));
        EXPECT(LSK_ERR_INVALID_ARGUMENT, lsk_batch_cancel(b, ids[0], &err_));
        lsk_generate_result_init(&res, sizeof res);
        EXPECT(LSK_OK, lsk_batch_result(b, ids[0], &res, &err_));
        CHECK(res.stop_reason == LSK_STOP_CALLBACK && res.n_tokens == cs[0].n && cs[0].n >= 1);
        EXPECT(LSK_OK, lsk_session_step(gs[0], full[0], 0, NULL, NULL, &err_));
        /* Freeing a batch with a running generation returns its session. */
        EXPECT(LSK_OK, lsk_session_rewind(gs[1], 0, &err_));
        EXPECT(LSK_OK, lsk_batch_add(b, gs[1], prompt, np, &go[1], NULL, NULL, &ids[1], &err_));
        EXPECT(LSK_OK, lsk_batch_step(b, &running, &err_));
        lsk_batch_free(b);
        EXPECT(LSK_OK, lsk_session_step(gs[1], full[0], 0, NULL, NULL, &err_));
        EXPECT(LSK_ERR_NULL_POINTER, lsk_batch_step(NULL, &running, &err_));
        lsk_batch_free(NULL);
        for (k = 0; k < 5; k++) lsk_session_free(gs[k]);
    }

    /* Two threads, one session: the second call fails with BUSY, nothing races. */
    {
        busy_state b;
        pthread_t t;
        lsk_generate_options o;
        memset(&b, 0, sizeof b);
        pthread_mutex_init(&b.mu, NULL);
        pthread_cond_init(&b.cv, NULL);
        EXPECT(LSK_OK, lsk_session_new(model, NULL, &b.s, &err_));
        lsk_generate_options_init(&o, sizeof o);
        o.max_new_tokens = 3;
        pthread_create(&t, NULL, busy_other, &b);
        EXPECT(LSK_OK, lsk_session_generate(b.s, prompt, np, &o, busy_cb, &b, NULL, &err_));
        pthread_join(t, NULL);
        CHECK(b.other == LSK_ERR_BUSY);
        lsk_session_free(b.s);
        pthread_mutex_destroy(&b.mu);
        pthread_cond_destroy(&b.cv);
    }

    /* 8 threads x 4 sessions on ONE model = the same runs done sequentially. */
    {
        job par[8], seq[8];
        pthread_t th[8];
        int k, same = 1, ok = 1;
        for (k = 0; k < 8; k++) {
            memset(&par[k], 0, sizeof par[k]);
            par[k].model = model;
            par[k].prompt = prompt;
            par[k].np = np;
            par[k].id = k;
            seq[k] = par[k];
            pthread_create(&th[k], NULL, thread_main, &par[k]);
        }
        for (k = 0; k < 8; k++) pthread_join(th[k], NULL);
        for (k = 0; k < 8; k++) {
            run_jobs(&seq[k]);
            ok = ok && par[k].ok && seq[k].ok;
            same = same && memcmp(par[k].out, seq[k].out, sizeof par[k].out) == 0 &&
                   memcmp(par[k].n, seq[k].n, sizeof par[k].n) == 0;
        }
        CHECK(ok);
        CHECK(same);
        CHECK(seq[0].n[0] == 24 && memcmp(seq[0].out[0], full, nfull * sizeof(int32_t)) == 0);
    }

    /* The model may be freed while a session still uses it. */
    lsk_model_free(model);
    {
        int32_t next;
        EXPECT(LSK_OK, lsk_session_rewind(s, 0, &err_));
        EXPECT(LSK_OK, lsk_session_prefill(s, prompt, np, NULL, &next, &err_));
        CHECK(next == full[0]);
    }
    lsk_session_free(s);

    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
