// layerskip.hpp: header-only C++17 wrapper over the layerskip C API.
//
// Move-only RAII handles; every failure throws layerskip::Error carrying the
// C result code and message.
//
//   layerskip::Model model("assets/layerskip-pycode-8l");
//   layerskip::Session session(model);
//   auto prompt = model.tokenize("def fibonacci(n):");
//   layerskip::GenerateOptions opts;            // lsk_generate_options, defaulted
//   opts.mode = LSK_MODE_SELF_SPECULATIVE;
//   session.generate(prompt, opts, [](int32_t, std::string_view text) {
//       std::cout << text;
//       return true;                            // false stops
//   });
#ifndef LAYERSKIP_HPP
#define LAYERSKIP_HPP

#include "layerskip.h"

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace layerskip {

class Error : public std::runtime_error {
public:
    Error(lsk_result code, const std::string& message)
        : std::runtime_error(message), code_(code) {}
    lsk_result code() const noexcept { return code_; }

private:
    lsk_result code_;
};

namespace detail {
// Throw if `r` is an error, taking ownership of `err`. `err` is taken by
// reference: in `check(lsk_call(..., &err), err)` C++ may evaluate the
// arguments in any order, so a copy could be read before the call writes it.
inline void check(lsk_result r, lsk_error*& err) {
    std::unique_ptr<lsk_error, decltype(&lsk_error_free)> guard(err, &lsk_error_free);
    err = nullptr;
    if (r != LSK_OK) {
        throw Error(r, guard ? lsk_error_message(guard.get()) : lsk_result_name(r));
    }
}
struct ModelDeleter {
    void operator()(lsk_model* m) const noexcept { lsk_model_free(m); }
};
struct SessionDeleter {
    void operator()(lsk_session* s) const noexcept { lsk_session_free(s); }
};
}  // namespace detail

// Options structs with their defaults filled in.
struct Sampling : lsk_sampling {
    Sampling() { lsk_sampling_init(this, sizeof(lsk_sampling)); }
};
// Generation options; `sample` is what the C struct's `sampling` points to
// (kept pointing there through copies).
struct GenerateOptions : lsk_generate_options {
    Sampling sample;
    GenerateOptions() {
        lsk_generate_options_init(this, sizeof(lsk_generate_options));
        sampling = &sample;
    }
    GenerateOptions(const GenerateOptions& o) : lsk_generate_options(o), sample(o.sample) { sampling = &sample; }
    GenerateOptions& operator=(const GenerateOptions& o) {
        lsk_generate_options::operator=(o);
        sample = o.sample;
        sampling = &sample;
        return *this;
    }
};
struct SessionOptions : lsk_session_options {
    SessionOptions() { lsk_session_options_init(this, sizeof(lsk_session_options)); }
};

struct Verdict {
    size_t accepted;
    int32_t token_after;
};

// A loaded model. Thread-safe; sessions keep it alive.
class Model {
public:
    explicit Model(const std::string& path) : Model(path, nullptr) {}
    /// Load with options (limits, quantization): fill them with
    /// lsk_model_options_default first.
    Model(const std::string& path, const lsk_model_options& options) : Model(path, &options) {}
    lsk_model* get() const noexcept { return handle_.get(); }

    // Forget what automatic (E, d) learnt from this model's sessions.
    void reset_policy() const {
        lsk_error* err = nullptr;
        detail::check(lsk_model_reset_policy(get(), &err), err);
    }

    lsk_model_summary info() const {
        lsk_model_summary s;
        lsk_model_summary_init(&s, sizeof s);
        lsk_error* err = nullptr;
        detail::check(lsk_model_info(get(), &s, &err), err);
        return s;
    }

    std::vector<int32_t> tokenize(std::string_view text, bool add_special = true) const {
        size_t n = 0;
        lsk_error* err = nullptr;
        lsk_result r = lsk_tokenize(get(), text.data(), text.size(), add_special, nullptr, 0, &n, &err);
        if (r != LSK_ERR_BUFFER_TOO_SMALL) detail::check(r, err);
        else lsk_error_free(err);
        std::vector<int32_t> ids(n);
        err = nullptr;
        detail::check(lsk_tokenize(get(), text.data(), text.size(), add_special, ids.data(), ids.size(), &n, &err), err);
        ids.resize(n);
        return ids;
    }

    std::string detokenize(const std::vector<int32_t>& ids, bool skip_special = true) const {
        size_t need = 0;
        lsk_error* err = nullptr;
        lsk_result r = lsk_detokenize(get(), ids.data(), ids.size(), skip_special, nullptr, 0, &need, &err);
        if (r != LSK_ERR_BUFFER_TOO_SMALL) detail::check(r, err);
        else lsk_error_free(err);
        std::string text(need, '\0');
        size_t len = 0;
        err = nullptr;
        detail::check(lsk_detokenize(get(), ids.data(), ids.size(), skip_special, text.data(), text.size(), &len, &err), err);
        text.resize(len);
        return text;
    }

private:
    Model(const std::string& path, const lsk_model_options* options) {
        lsk_model* m = nullptr;
        lsk_error* err = nullptr;
        detail::check(lsk_model_load(path.c_str(), options, &m, &err), err);
        handle_.reset(m);
    }
    std::unique_ptr<lsk_model, detail::ModelDeleter> handle_;
};

// A decoding session: one call at a time (a concurrent call throws LSK_ERR_BUSY).
class Session {
public:
    explicit Session(const Model& model, const SessionOptions& opts = SessionOptions()) {
        lsk_session* s = nullptr;
        lsk_error* err = nullptr;
        detail::check(lsk_session_new(model.get(), &opts, &s, &err), err);
        handle_.reset(s);
    }
    lsk_session* get() const noexcept { return handle_.get(); }

    // Feed the prompt at full depth; returns the next token.
    int32_t prefill(const std::vector<int32_t>& tokens, const Sampling& s = Sampling()) {
        int32_t next = -1;
        lsk_error* err = nullptr;
        detail::check(lsk_session_prefill(get(), tokens.data(), tokens.size(), &s, &next, &err), err);
        return next;
    }

    // One token through layers 0..exit_layer (0 = full depth); returns the next token.
    int32_t step(int32_t token, uint32_t exit_layer = 0, const Sampling& s = Sampling()) {
        int32_t next = -1;
        lsk_error* err = nullptr;
        detail::check(lsk_session_step(get(), token, exit_layer, &s, &next, &err), err);
        return next;
    }

    // Logits of the newest position (copied).
    std::vector<float> logits() const {
        const float* p = nullptr;
        size_t n = 0;
        lsk_error* err = nullptr;
        detail::check(lsk_session_logits(get(), &p, &n, &err), err);
        return std::vector<float>(p, p + n);
    }

    // Row `i` of the last call's logits (a verify: one row per draft plus
    // one); negative `i` counts from the end.
    std::vector<float> logits(int32_t i) const {
        const float* p = nullptr;
        size_t n = 0;
        lsk_error* err = nullptr;
        detail::check(lsk_session_logits_ith(get(), i, &p, &n, &err), err);
        return std::vector<float>(p, p + n);
    }

    std::vector<int32_t> draft(int32_t next, uint32_t exit_layer, uint32_t max_drafts, const Sampling& s = Sampling()) {
        std::vector<int32_t> d(max_drafts);
        size_t n = 0;
        lsk_error* err = nullptr;
        detail::check(lsk_session_draft(get(), next, exit_layer, max_drafts, &s, d.data(), d.size(), &n, &err), err);
        d.resize(n);
        return d;
    }

    Verdict verify(int32_t next, const std::vector<int32_t>& drafts, const Sampling& s = Sampling()) {
        Verdict v{0, -1};
        lsk_error* err = nullptr;
        detail::check(lsk_session_verify(get(), next, drafts.data(), drafts.size(), &s, &v.accepted, &v.token_after, &err), err);
        return v;
    }

    void rewind(size_t len) {
        lsk_error* err = nullptr;
        detail::check(lsk_session_rewind(get(), len, &err), err);
    }

    lsk_stats stats() const {
        lsk_stats st;
        lsk_stats_init(&st, sizeof st);
        lsk_error* err = nullptr;
        detail::check(lsk_session_stats(get(), &st, &err), err);
        return st;
    }

    // The (E, d) spans chosen by the last generate (see LSK_AUTO).
    std::vector<lsk_choice_span> choices() const {
        size_t n = 0;
        lsk_error* err = nullptr;
        detail::check(lsk_session_choices(get(), nullptr, 0, &n, &err), err);
        std::vector<lsk_choice_span> spans(n);
        detail::check(lsk_session_choices(get(), spans.data(), spans.size(), &n, &err), err);
        spans.resize(n);
        return spans;
    }

    // Ask `should_abort()` between layers of every pass (a long prefill can
    // be stopped): true fails the call with LSK_ERR_ABORTED and leaves the
    // session as it was. An exception from it counts as true. An empty
    // function removes it. It runs on the decoding thread and must not call
    // into this session.
    void set_abort(std::function<bool()> should_abort) {
        auto cb = should_abort ? std::make_unique<std::function<bool()>>(std::move(should_abort)) : nullptr;
        auto trampoline = [](void* user) -> int32_t {
            try {
                return (*static_cast<std::function<bool()>*>(user))() ? 1 : 0;
            } catch (...) {
                return 1;
            }
        };
        lsk_error* err = nullptr;
        detail::check(lsk_session_set_abort(get(), cb ? +trampoline : nullptr, cb.get(), &err), err);
        abort_ = std::move(cb);
    }

    // Generate after `prompt`; `on_token(token, text)` returns false to stop.
    // An exception thrown by the callback stops generation and is rethrown.
    lsk_generate_result generate(const std::vector<int32_t>& prompt, const GenerateOptions& opts,
                                 const std::function<bool(int32_t, std::string_view)>& on_token = nullptr) {
        struct Ctx {
            const std::function<bool(int32_t, std::string_view)>* f;
            std::exception_ptr error;
        } ctx{&on_token, nullptr};
        auto trampoline = [](void* user, int32_t token, const char* text, size_t len) -> int32_t {
            auto* c = static_cast<Ctx*>(user);
            try {
                return (*c->f)(token, std::string_view(text, len)) ? 0 : 1;
            } catch (...) {
                c->error = std::current_exception();
                return 1;
            }
        };
        lsk_generate_result res;
        lsk_generate_result_init(&res, sizeof res);
        lsk_error* err = nullptr;
        lsk_result r = lsk_session_generate(get(), prompt.data(), prompt.size(), &opts,
                                            on_token ? +trampoline : nullptr, &ctx, &res, &err);
        if (ctx.error) {
            lsk_error_free(err);
            std::rethrow_exception(ctx.error);
        }
        detail::check(r, err);
        return res;
    }

private:
    // Declared first so it is destroyed last: the session may still ask it.
    std::unique_ptr<std::function<bool()>> abort_;
    std::unique_ptr<lsk_session, detail::SessionDeleter> handle_;
};

// Step sessions of one model together (see lsk_sessions_step): session i
// feeds tokens[i] through layers 0..exit_layers[i] (empty: full depth).
// Returns each session's next token; a session that failed has -1 and its
// code in `results` (when given).
inline std::vector<int32_t> sessions_step(const std::vector<Session*>& sessions,
                                          const std::vector<std::vector<int32_t>>& tokens,
                                          const std::vector<uint32_t>& exit_layers = {},
                                          const Sampling& s = Sampling(),
                                          std::vector<lsk_result>* results = nullptr) {
    const size_t n = sessions.size();
    if (tokens.size() != n || (!exit_layers.empty() && exit_layers.size() != n)) {
        throw Error(LSK_ERR_INVALID_ARGUMENT, "sessions_step: one token list (and exit layer) per session");
    }
    std::vector<lsk_session*> handles(n);
    std::vector<const int32_t*> ptrs(n);
    std::vector<size_t> counts(n);
    for (size_t i = 0; i < n; i++) {
        handles[i] = sessions[i]->get();
        ptrs[i] = tokens[i].data();
        counts[i] = tokens[i].size();
    }
    std::vector<int32_t> next(n, -1);
    std::vector<lsk_result> codes(n, LSK_OK);
    lsk_error* err = nullptr;
    detail::check(lsk_sessions_step(handles.data(), n, ptrs.data(), counts.data(),
                                    exit_layers.empty() ? nullptr : exit_layers.data(), &s, next.data(),
                                    codes.data(), &err),
                  err);
    if (results) *results = std::move(codes);
    return next;
}

// One session's round for sessions_round: an lsk_round with its defaults.
// The pointers in it (session, input, tokens, sampling, stop_ids, drafts)
// are the caller's and must stay valid during the call.
struct Round : lsk_round {
    Round() { lsk_round_init(this, sizeof(lsk_round)); }
};
static_assert(sizeof(Round) == sizeof(lsk_round), "an array of Round is an array of lsk_round");

// Advance each round's session by one round, together (see
// lsk_sessions_round). Each round's outcome (result, n_tokens, ...) is
// written to its struct; a failed round does not throw.
inline void sessions_round(std::vector<Round>& rounds) {
    lsk_error* err = nullptr;
    detail::check(lsk_sessions_round(rounds.data(), rounds.size(), &err), err);
}

// A continuous batch of generations (see lsk_batch_*). Not thread-safe: one
// thread runs add/step/cancel/result (e.g. a server's scheduler thread). A
// session added to the batch is lent to it until its generation is collected.
class Batch {
public:
    using OnToken = std::function<bool(int32_t, std::string_view)>;

    explicit Batch(const Model& model) {
        lsk_batch* b = nullptr;
        lsk_error* err = nullptr;
        detail::check(lsk_batch_new(model.get(), &b, &err), err);
        handle_.reset(b);
    }

    // Start a generation on `session`; `on_token` runs inside step() and
    // returns false to stop. An exception it throws stops that generation
    // only, and result() rethrows it. Returns the generation's id.
    uint64_t add(Session& session, const std::vector<int32_t>& prompt, const GenerateOptions& opts,
                 OnToken on_token = nullptr) {
        auto cb = std::make_unique<Callback>();
        cb->f = std::move(on_token);
        auto trampoline = [](void* user, int32_t token, const char* text, size_t len) -> int32_t {
            auto* c = static_cast<Callback*>(user);
            try {
                return c->f(token, std::string_view(text, len)) ? 0 : 1;
            } catch (...) {
                c->error = std::current_exception();
                return 1;
            }
        };
        uint64_t id = 0;
        lsk_error* err = nullptr;
        bool has = static_cast<bool>(cb->f);
        detail::check(lsk_batch_add(handle_.get(), session.get(), prompt.data(), prompt.size(), &opts,
                                    has ? +trampoline : nullptr, cb.get(), &id, &err),
                      err);
        callbacks_.emplace_back(id, std::move(cb));
        return id;
    }

    // One round for every running generation; returns how many still run.
    size_t step() {
        size_t running = 0;
        lsk_error* err = nullptr;
        detail::check(lsk_batch_step(handle_.get(), &running, &err), err);
        return running;
    }

    void cancel(uint64_t id) {
        lsk_error* err = nullptr;
        detail::check(lsk_batch_cancel(handle_.get(), id, &err), err);
    }

    // Finished generations not yet collected with result().
    std::vector<uint64_t> finished() {
        size_t n = 0;
        lsk_error* err = nullptr;
        detail::check(lsk_batch_finished(handle_.get(), nullptr, 0, &n, &err), err);
        std::vector<uint64_t> ids(n);
        detail::check(lsk_batch_finished(handle_.get(), ids.data(), ids.size(), &n, &err), err);
        ids.resize(n);
        return ids;
    }

    // The result of a finished generation: rethrows what its callback threw,
    // throws its error if it failed.
    lsk_generate_result result(uint64_t id) {
        lsk_generate_result res;
        lsk_generate_result_init(&res, sizeof res);
        lsk_error* err = nullptr;
        lsk_result r = lsk_batch_result(handle_.get(), id, &res, &err);
        if (r != LSK_ERR_BUSY) {
            std::exception_ptr thrown = forget(id);
            if (thrown) {
                lsk_error_free(err);
                std::rethrow_exception(thrown);
            }
        }
        detail::check(r, err);
        return res;
    }

private:
    struct Deleter {
        void operator()(lsk_batch* b) const noexcept { lsk_batch_free(b); }
    };
    struct Callback {
        OnToken f;
        std::exception_ptr error;
    };
    // Drops generation `id`'s callback; returns what it threw, if anything.
    std::exception_ptr forget(uint64_t id) {
        for (auto it = callbacks_.begin(); it != callbacks_.end(); ++it) {
            if (it->first == id) {
                std::exception_ptr e = it->second->error;
                callbacks_.erase(it);
                return e;
            }
        }
        return nullptr;
    }
    // Declared first so it is destroyed last: lsk_batch_free may still call back.
    std::vector<std::pair<uint64_t, std::unique_ptr<Callback>>> callbacks_;
    std::unique_ptr<lsk_batch, Deleter> handle_;
};

}  // namespace layerskip

#endif  // LAYERSKIP_HPP
