// layerskip-server: an OpenAI-style completions server over one continuous
// batch. HTTP threads parse requests and wait on per-request channels; one
// scheduler thread owns the layerskip::Batch and runs its step loop, so every
// running request advances in one batched pass per layer.
//
//   POST /v1/completions  {"prompt", "max_tokens", "temperature", "top_p",
//                          "seed", "stop", "stream", and the extensions
//                          "mode" (full|early_exit|self_speculative|auto),
//                          "exit_layer", "draft_len"}
//   GET  /health, GET /metrics (Prometheus text)
#include "layerskip.hpp"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using json = nlohmann::json;

namespace {

// One request: filled by the scheduler, read by its HTTP thread.
struct Request {
    std::vector<int32_t> prompt;
    layerskip::GenerateOptions opts;
    // The stop strings `opts` points at: they live as long as the request.
    std::vector<std::string> stops;
    std::vector<const char*> stop_ptrs;
    std::mutex mu;
    std::condition_variable cv;
    std::string pending;  // text not yet sent (streaming)
    std::string text;     // all text
    size_t tokens = 0;
    bool done = false;
    std::string finish_reason;
    std::string error;
    std::atomic<bool> cancelled{false};
};

struct Metrics {
    std::atomic<uint64_t> requests{0}, tokens{0}, drafted{0}, accepted{0}, errors{0};
    std::atomic<size_t> running{0}, queued{0};
};

class Scheduler {
public:
    explicit Scheduler(layerskip::Model& model) : model_(model), thread_([this] { run(); }) {}
    ~Scheduler() {
        {
            std::lock_guard<std::mutex> g(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        thread_.join();
    }
    void submit(std::shared_ptr<Request> r) {
        {
            std::lock_guard<std::mutex> g(mu_);
            queue_.push_back(std::move(r));
            metrics.queued = queue_.size();
        }
        cv_.notify_all();
    }
    Metrics metrics;

private:
    struct Live {
        uint64_t id;
        std::shared_ptr<Request> req;
        std::unique_ptr<layerskip::Session> session;
    };

    static void finish(Request& r, const std::string& reason, const std::string& error) {
        std::lock_guard<std::mutex> g(r.mu);
        r.done = true;
        r.finish_reason = reason;
        r.error = error;
        r.cv.notify_all();
    }

    void admit(std::shared_ptr<Request> req) {
        if (req->cancelled.load()) {  // the client went away while queued
            finish(*req, "cancelled", "");
            return;
        }
        auto session = std::make_unique<layerskip::Session>(model_);
        Request* raw = req.get();
        uint64_t id = batch_.add(*session, req->prompt, req->opts, [raw](int32_t, std::string_view piece) {
            std::lock_guard<std::mutex> g(raw->mu);
            raw->tokens++;
            raw->pending.append(piece);
            raw->text.append(piece);
            raw->cv.notify_all();
            return !raw->cancelled.load();
        });
        metrics.requests++;
        live_.push_back(Live{id, std::move(req), std::move(session)});
    }

    void collect(uint64_t id) {
        auto it = std::find_if(live_.begin(), live_.end(), [id](const Live& l) { return l.id == id; });
        if (it == live_.end()) return;
        Live l = std::move(*it);
        live_.erase(it);
        try {
            lsk_generate_result res = batch_.result(l.id);
            metrics.tokens += res.n_tokens;
            metrics.drafted += res.drafted;
            metrics.accepted += res.accepted;
            const char* reason = res.stop_reason == LSK_STOP_MAX_TOKENS || res.stop_reason == LSK_STOP_CONTEXT_FULL
                                     ? "length"
                                 : res.stop_reason == LSK_STOP_CALLBACK ? "cancelled"
                                                                        : "stop";
            finish(*l.req, reason, "");
        } catch (const std::exception& e) {
            metrics.errors++;
            finish(*l.req, "error", e.what());
        }
    }

    void run() {
        for (;;) {
            std::deque<std::shared_ptr<Request>> incoming;
            {
                std::unique_lock<std::mutex> g(mu_);
                cv_.wait(g, [this] { return stop_ || !queue_.empty() || !live_.empty(); });
                if (stop_) break;
                incoming.swap(queue_);
                metrics.queued = 0;
            }
            // Requests join between steps (continuous batching).
            for (auto& r : incoming) {
                try {
                    admit(r);
                } catch (const std::exception& e) {
                    metrics.errors++;
                    finish(*r, "error", e.what());
                }
            }
            // Clients that went away free their sessions now.
            for (auto& l : live_) {
                if (l.req->cancelled.load()) batch_.cancel(l.id);
            }
            if (!live_.empty()) batch_.step();
            for (uint64_t id : batch_.finished()) collect(id);
            metrics.running = live_.size();
        }
        for (auto& l : live_) finish(*l.req, "error", "server shutting down");
    }

    layerskip::Model& model_;
    layerskip::Batch batch_{model_};
    std::vector<Live> live_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<Request>> queue_;
    bool stop_ = false;
    std::thread thread_;
};

}  // namespace

namespace {

json error_json(const std::string& message, const std::string& type = "invalid_request_error") {
    return json{{"error", {{"message", message}, {"type", type}}}};
}

void bad_request(httplib::Response& res, const std::string& message, int status = 400) {
    res.status = status;
    res.set_content(error_json(message).dump(), "application/json");
}

// Build a request from the JSON body; returns an error message on bad input.
std::optional<std::string> parse(const json& body, layerskip::Model& model, const lsk_model_summary& info,
                                 Request& r, bool& stream) {
    if (!body.is_object()) return "the body must be a JSON object";
    if (!body.contains("prompt") || !body["prompt"].is_string()) return "`prompt` (a string) is required";
    std::string prompt = body["prompt"];
    if (prompt.empty()) return "`prompt` is empty";
    auto num = [&](const char* key, double lo, double hi, double def) -> std::optional<double> {
        if (!body.contains(key) || body[key].is_null()) return def;
        if (!body[key].is_number()) return std::nullopt;
        double v = body[key];
        if (!(v >= lo && v <= hi)) return std::nullopt;
        return v;
    };
    auto max_tokens = num("max_tokens", 1, 1 << 20, 16);
    auto temperature = num("temperature", 0, 100, 0);
    auto top_p = num("top_p", 1e-6, 1, 1);
    auto seed = num("seed", 0, 9.0e15, 0);
    // Absent: the library's defaults (exit_layer 0 means L/2).
    auto exit_layer = num("exit_layer", 1, info.n_layers, r.opts.exit_layer);
    auto draft_len = num("draft_len", 1, 64, r.opts.draft_len);
    if (!max_tokens) return "`max_tokens` must be a number in 1..1048576";
    if (!temperature) return "`temperature` must be a number in [0, 100]";
    if (!top_p) return "`top_p` must be a number in (0, 1]";
    if (!seed) return "`seed` must be a non-negative integer";
    if (!exit_layer) return "`exit_layer` must be in 1.." + std::to_string(info.n_layers);
    if (!draft_len) return "`draft_len` must be in 1..64";
    if (body.contains("stream") && !body["stream"].is_null() && !body["stream"].is_boolean())
        return "`stream` must be true or false";
    if (body.contains("mode") && !body["mode"].is_null() && !body["mode"].is_string())
        return "`mode` must be full, early_exit, self_speculative or auto";
    stream = body.contains("stream") && body["stream"].is_boolean() && body["stream"].get<bool>();
    r.opts.max_new_tokens = static_cast<uint32_t>(*max_tokens);
    r.opts.sample.temperature = static_cast<float>(*temperature);
    r.opts.sample.top_p = static_cast<float>(*top_p);
    r.opts.sample.seed = static_cast<uint64_t>(*seed);
    r.opts.exit_layer = static_cast<uint32_t>(*exit_layer);
    r.opts.draft_len = static_cast<uint32_t>(*draft_len);
    std::string mode = body.contains("mode") && body["mode"].is_string() ? body["mode"].get<std::string>() : "full";
    if (mode == "full") {
        r.opts.mode = LSK_MODE_FULL;
    } else if (mode == "early_exit") {
        r.opts.mode = LSK_MODE_EARLY_EXIT;
    } else if (mode == "self_speculative") {
        r.opts.mode = LSK_MODE_SELF_SPECULATIVE;
    } else if (mode == "auto") {
        r.opts.mode = LSK_MODE_SELF_SPECULATIVE;
        if (!body.contains("exit_layer")) r.opts.exit_layer = LSK_AUTO;
        if (!body.contains("draft_len")) r.opts.draft_len = LSK_AUTO;
    } else {
        return "`mode` must be full, early_exit, self_speculative or auto";
    }
    if (mode != "full" && mode != "auto" && r.opts.exit_layer >= info.n_layers && mode == "self_speculative")
        return "`exit_layer` must leave layers to verify with";
    try {
        r.prompt = model.tokenize(prompt);
    } catch (const layerskip::Error& e) {
        return std::string("prompt: ") + e.what();
    }
    return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
    std::string model_dir = "assets/layerskip-pycode-8l", host = "127.0.0.1";
    int port = 8080;
    lsk_model_options options;
    lsk_model_options_init(&options, sizeof options);
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string a = argv[i], v = argv[i + 1];
        if (a == "--model") model_dir = v;
        else if (a == "--host") host = v;
        else if (a == "--port") port = std::stoi(v);
        else if (a == "--quantize" && (v == "none" || v == "int8" || v == "bf16"))
            options.quantize = v == "int8" ? LSK_QUANTIZE_INT8 : v == "bf16" ? LSK_QUANTIZE_BF16 : LSK_QUANTIZE_NONE;
        else if (a == "--kv-dtype" && (v == "f32" || v == "bf16"))
            options.kv_dtype = v == "bf16" ? LSK_KV_BF16 : LSK_KV_F32;
        else if (a == "--device" && v == "cpu")
            options.device = LSK_DEVICE_CPU;
        else if (a == "--device" && (v == "cuda" || (v.size() > 5 && v.rfind("cuda:", 0) == 0 &&
                                                     v.find_first_not_of("0123456789", 5) == std::string::npos))) {
            options.device = LSK_DEVICE_CUDA;
            options.device_index = v.size() > 5 && v[4] == ':' ? std::stoi(v.substr(5)) : 0;
        } else {
            std::fprintf(stderr, "usage: layerskip-server [--model DIR] [--host H] [--port P] [--quantize none|int8|bf16] [--kv-dtype f32|bf16] [--device cpu|cuda[:N]]\n");
            return 2;
        }
    }
    std::unique_ptr<layerskip::Model> model;
    try {
        model = std::make_unique<layerskip::Model>(model_dir, options);
    } catch (const layerskip::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    lsk_model_summary info = model->info();
    Scheduler scheduler(*model);
    httplib::Server server;
    // A streaming request holds its HTTP thread until it ends: allow many.
    server.new_task_queue = [] { return new httplib::ThreadPool(64); };
    std::atomic<uint64_t> next_id{1};

    server.Get("/health", [](const httplib::Request&, httplib::Response& res) {
        res.set_content(R"({"status":"ok"})", "application/json");
    });
    server.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
        auto& m = scheduler.metrics;
        double rate = m.drafted ? double(m.accepted) / double(m.drafted) : 0.0;
        std::string out;
        out += "# TYPE layerskip_requests_total counter\nlayerskip_requests_total " + std::to_string(m.requests.load()) + "\n";
        out += "# TYPE layerskip_tokens_generated_total counter\nlayerskip_tokens_generated_total " + std::to_string(m.tokens.load()) + "\n";
        out += "# TYPE layerskip_drafted_tokens_total counter\nlayerskip_drafted_tokens_total " + std::to_string(m.drafted.load()) + "\n";
        out += "# TYPE layerskip_accepted_tokens_total counter\nlayerskip_accepted_tokens_total " + std::to_string(m.accepted.load()) + "\n";
        out += "# TYPE layerskip_acceptance_rate gauge\nlayerskip_acceptance_rate " + std::to_string(rate) + "\n";
        out += "# TYPE layerskip_active_sessions gauge\nlayerskip_active_sessions " + std::to_string(m.running.load()) + "\n";
        out += "# TYPE layerskip_queue_depth gauge\nlayerskip_queue_depth " + std::to_string(m.queued.load()) + "\n";
        out += "# TYPE layerskip_errors_total counter\nlayerskip_errors_total " + std::to_string(m.errors.load()) + "\n";
        res.set_content(out, "text/plain; version=0.0.4");
    });
    server.Post("/v1/completions", [&](const httplib::Request& req, httplib::Response& res) {
        json body;
        try {
            body = json::parse(req.body);
        } catch (const json::exception& e) {
            return bad_request(res, std::string("invalid JSON: ") + e.what());
        }
        auto r = std::make_shared<Request>();
        bool stream = false;
        if (auto why = parse(body, *model, info, *r, stream)) return bad_request(res, *why);
        if (body.contains("stop") && !body["stop"].is_null()) {
            auto& s = body["stop"];
            if (s.is_string()) {
                r->stops.push_back(s);
            } else if (s.is_array() && s.size() <= 4) {
                for (auto& x : s) {
                    if (!x.is_string()) return bad_request(res, "`stop` must be a string or up to 4 strings");
                    r->stops.push_back(x);
                }
            } else {
                return bad_request(res, "`stop` must be a string or up to 4 strings");
            }
            for (auto& x : r->stops) {
                if (x.empty()) return bad_request(res, "`stop` strings must not be empty");
                r->stop_ptrs.push_back(x.c_str());
            }
            r->opts.stop_strings = r->stop_ptrs.data();
            r->opts.n_stop_strings = r->stop_ptrs.size();
        }
        std::string id = "cmpl-" + std::to_string(next_id++);
        size_t prompt_tokens = r->prompt.size();
        scheduler.submit(r);
        if (!stream) {
            std::unique_lock<std::mutex> g(r->mu);
            r->cv.wait(g, [&] { return r->done; });
            if (!r->error.empty()) {
                res.status = 500;
                res.set_content(error_json(r->error, "server_error").dump(), "application/json");
                return;
            }
            json out = {{"id", id},
                        {"object", "text_completion"},
                        {"model", model_dir},
                        {"choices", {{{"index", 0}, {"text", r->text}, {"finish_reason", r->finish_reason}}}},
                        {"usage",
                         {{"prompt_tokens", prompt_tokens},
                          {"completion_tokens", r->tokens},
                          {"total_tokens", prompt_tokens + r->tokens}}}};
            res.set_content(out.dump(), "application/json");
            return;
        }
        res.set_header("Cache-Control", "no-cache");
        res.set_chunked_content_provider(
            "text/event-stream",
            [r, id, model_dir](size_t, httplib::DataSink& sink) {
                std::unique_lock<std::mutex> g(r->mu);
                r->cv.wait_for(g, std::chrono::milliseconds(200), [&] { return r->done || !r->pending.empty(); });
                if (!r->pending.empty()) {
                    json chunk = {{"id", id},
                                  {"object", "text_completion"},
                                  {"model", model_dir},
                                  {"choices", {{{"index", 0}, {"text", r->pending}, {"finish_reason", nullptr}}}}};
                    r->pending.clear();
                    std::string line = "data: " + chunk.dump() + "\n\n";
                    if (!sink.write(line.data(), line.size())) {
                        r->cancelled = true;  // the client went away: free its session
                        return false;
                    }
                }
                if (r->done) {
                    json last = r->error.empty()
                                    ? json{{"id", id},
                                           {"object", "text_completion"},
                                           {"model", model_dir},
                                           {"choices", {{{"index", 0}, {"text", ""}, {"finish_reason", r->finish_reason}}}}}
                                    : error_json(r->error, "server_error");
                    std::string line = "data: " + last.dump() + "\n\ndata: [DONE]\n\n";
                    sink.write(line.data(), line.size());
                    sink.done();
                }
                return true;
            },
            [r](bool success) {
                if (!success) r->cancelled = true;
            });
    });
    std::printf("layerskip-server: %s on http://%s:%d\n", model_dir.c_str(), host.c_str(), port);
    std::fflush(stdout);
    if (!server.listen(host.c_str(), port)) {
        std::fprintf(stderr, "error: cannot listen on %s:%d\n", host.c_str(), port);
        return 1;
    }
    return 0;
}
