// Package layerskip binds the layerskip C library (LayerSkip early exit and
// self-speculative decoding) with cgo. Standard library only.
//
// Build the library first (cargo build --release at the repository root); the
// cgo flags below point at ../../../include and ../../../target/release.
package layerskip

/*
#cgo CFLAGS: -I${SRCDIR}/../../../include
#cgo LDFLAGS: -L${SRCDIR}/../../../target/release -llayerskip -Wl,-rpath,${SRCDIR}/../../../target/release
#include <stdlib.h>
#include "layerskip.h"

extern int32_t goTokenTrampoline(void *user_data, int32_t token, char *text, size_t text_len);

static int32_t tokenTrampoline(void *user_data, int32_t token, const char *text, size_t text_len) {
	return goTokenTrampoline(user_data, token, (char *)text, text_len);
}

extern int32_t goAbortTrampoline(void *user_data);

static int32_t abortTrampoline(void *user_data) {
	return goAbortTrampoline(user_data);
}

static lsk_result set_abort_with_id(lsk_session *s, uintptr_t id, lsk_error **err) {
	return lsk_session_set_abort(s, id ? abortTrampoline : NULL, (void *)id, err);
}

static lsk_result generate_with_callback(lsk_session *s, const int32_t *prompt, size_t n,
		const lsk_generate_options *o, uintptr_t handle, lsk_generate_result *res, lsk_error **err) {
	return lsk_session_generate(s, prompt, n, o, tokenTrampoline, (void *)handle, res, err);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Result codes (lsk_result).
const (
	ErrNullPointer     = 1
	ErrInvalidArgument = 2
	ErrIO              = 3
	ErrConfig          = 4
	ErrWeights         = 5
	ErrTokenizer       = 6
	ErrContextOverflow = 7
	ErrUnsupported     = 8
	ErrBufferTooSmall  = 9
	ErrBusy            = 10
	ErrPanic           = 11
	ErrStructSize      = 12
	ErrUTF8            = 13
	ErrResourceLimit   = 14
	ErrDevice          = 15
	ErrOutOfMemory     = 16
	ErrAborted         = 17
	// ErrClosed is the binding's own: the Model or Session was closed.
	ErrClosed = -1
)

// ref is a C handle shared by concurrent calls: Close marks it closed and
// frees it when the last call in flight has returned, so no call ever passes
// a freed handle to C (the library also keeps an object alive while a call
// runs on it).
type ref struct {
	mu       sync.Mutex
	h        unsafe.Pointer
	inflight int
	closed   bool
	free     func(unsafe.Pointer)
	what     string
}

// acquire returns the handle for one call; release must follow.
func (r *ref) acquire() (unsafe.Pointer, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.h == nil {
		return nil, &Error{Code: ErrClosed, Message: r.what + " is closed"}
	}
	r.inflight++
	return r.h, nil
}

func (r *ref) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inflight--
	r.freeIfDone()
}

// close is idempotent.
func (r *ref) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	r.freeIfDone()
}

func (r *ref) freeIfDone() {
	if r.closed && r.inflight == 0 && r.h != nil {
		r.free(r.h)
		r.h = nil
	}
}

// Decoding modes.
const (
	ModeFull            = 0
	ModeEarlyExit       = 1
	ModeSelfSpeculative = 2
)

// Error is a failed call: the C result code and the library's message.
type Error struct {
	Code    int
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("layerskip: %s (code %d)", e.Message, e.Code) }

// check turns a result and its error object into a Go error, freeing the object.
func check(r C.lsk_result, err *C.lsk_error) error {
	if err != nil {
		defer C.lsk_error_free(err)
	}
	if r == C.LSK_OK {
		return nil
	}
	msg := C.GoString(C.lsk_result_name(C.uint32_t(r)))
	if err != nil {
		msg = C.GoString(C.lsk_error_message(err))
	}
	return &Error{Code: int(r), Message: msg}
}

// IsCode reports whether err is a layerskip error with the given code.
func IsCode(err error, code int) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// ABIVersion is the loaded library's ABI version (see LSK_ABI_VERSION).
func ABIVersion() int { return int(C.lsk_abi_version()) }

// Version is the library's version string.
func Version() string { return C.GoString(C.lsk_version_string()) }

// Model is a loaded checkpoint. Safe for concurrent use.
type Model struct {
	ref ref
}

// Weight quantization at load (lsk_quantize).
const (
	QuantizeNone = 0
	QuantizeInt8 = 1 // int8 products: weights per output channel, inputs per block of 32
	QuantizeBf16 = 2 // bf16 matrix products: bf16 weights and inputs, f32 sums
)

// LoadOptions are the model options (lsk_model_options); zero values are the defaults.
type LoadOptions struct {
	MaxContext    uint32 // longest session context; 0 = the model's
	KVBudgetBytes uint64 // KV-cache bytes all sessions may reserve; 0 = unlimited
	Quantize      int    // QuantizeNone, QuantizeInt8 or QuantizeBf16
	KVBf16        bool   // bf16 K/V cache: half the memory per position (CPU)
	CUDA          bool   // run on a CUDA GPU (DeviceIndex) instead of the CPU
	DeviceIndex   uint32 // GPU ordinal when CUDA is set
	Threads       uint32 // CPU worker threads of the model's own pool; 0 shares the process's
	// DraftShortlist: drafts score only the K most frequent tokens and the
	// session's own recent tokens (0: the full head; DraftShortlistAuto:
	// chosen from the model's shape).
	DraftShortlist uint32
}

// DraftShortlistAuto as LoadOptions.DraftShortlist: vocab / 8 where the exit
// head costs at least half a layer, else the full head.
const DraftShortlistAuto = uint32(C.LSK_AUTO)

// Load loads a Hugging Face Llama checkpoint directory.
func Load(path string) (*Model, error) {
	return LoadWith(path, LoadOptions{})
}

// LoadWith loads a checkpoint with options.
func LoadWith(path string, opt LoadOptions) (*Model, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var o C.lsk_model_options
	C.lsk_model_options_init(&o, C.size_t(unsafe.Sizeof(o)))
	o.max_context = C.uint32_t(opt.MaxContext)
	o.kv_budget_bytes = C.uint64_t(opt.KVBudgetBytes)
	o.quantize = C.uint32_t(opt.Quantize)
	o.threads = C.uint32_t(opt.Threads)
	o.draft_shortlist = C.uint32_t(opt.DraftShortlist)
	if opt.KVBf16 {
		o.kv_dtype = C.LSK_KV_BF16
	}
	if opt.CUDA {
		o.device = C.LSK_DEVICE_CUDA
		o.device_index = C.uint32_t(opt.DeviceIndex)
	}
	var h *C.lsk_model
	var cerr *C.lsk_error
	if err := check(C.lsk_model_load(cpath, &o, &h, &cerr), cerr); err != nil {
		return nil, err
	}
	m := &Model{ref: ref{h: unsafe.Pointer(h), free: func(h unsafe.Pointer) { C.lsk_model_free((*C.lsk_model)(h)) }, what: "model"}}
	runtime.SetFinalizer(m, (*Model).Close)
	return m, nil
}

// Close releases the model once calls in flight on it return. Idempotent;
// sessions keep the model alive. Later calls return ErrClosed.
func (m *Model) Close() error {
	m.ref.close()
	return nil
}

// ResetPolicy forgets what automatic (E, d) learnt from the model's
// sessions; sessions open now keep their own estimates.
func (m *Model) ResetPolicy() error {
	p, err := m.ref.acquire()
	if err != nil {
		return err
	}
	defer m.ref.release()
	var cerr *C.lsk_error
	return check(C.lsk_model_reset_policy((*C.lsk_model)(p), &cerr), cerr)
}

// Info describes a model.
type Info struct {
	Layers, Vocab, Hidden, Context int
	EOS                            []int32
}

// Info returns the model's shape and special tokens.
func (m *Model) Info() (Info, error) {
	p, err := m.ref.acquire()
	h := (*C.lsk_model)(p)
	if err != nil {
		return Info{}, err
	}
	defer m.ref.release()
	var s C.lsk_model_summary
	C.lsk_model_summary_init(&s, C.size_t(unsafe.Sizeof(s)))
	var cerr *C.lsk_error
	if err := check(C.lsk_model_info(h, &s, &cerr), cerr); err != nil {
		return Info{}, err
	}
	runtime.KeepAlive(m)
	info := Info{Layers: int(s.n_layers), Vocab: int(s.vocab_size), Hidden: int(s.hidden_size), Context: int(s.context_length)}
	for i := 0; i < int(s.n_eos_token_ids); i++ {
		info.EOS = append(info.EOS, int32(s.eos_token_ids[i]))
	}
	return info, nil
}

// Tokenize encodes text; addSpecial applies the tokenizer's special-token rules (e.g. BOS).
func (m *Model) Tokenize(text string, addSpecial bool) ([]int32, error) {
	p, err := m.ref.acquire()
	h := (*C.lsk_model)(p)
	if err != nil {
		return nil, err
	}
	defer m.ref.release()
	ctext := C.CString(text)
	defer C.free(unsafe.Pointer(ctext))
	special := C.uint8_t(0)
	if addSpecial {
		special = 1
	}
	var n C.size_t
	var cerr *C.lsk_error
	r := C.lsk_tokenize(h, ctext, C.size_t(len(text)), special, nil, 0, &n, &cerr)
	if r != C.LSK_ERR_BUFFER_TOO_SMALL {
		if err := check(r, cerr); err != nil {
			return nil, err
		}
	} else {
		C.lsk_error_free(cerr)
	}
	ids := make([]int32, int(n)+1)
	cerr = nil
	r = C.lsk_tokenize(h, ctext, C.size_t(len(text)), special, (*C.int32_t)(unsafe.Pointer(&ids[0])), C.size_t(len(ids)), &n, &cerr)
	runtime.KeepAlive(m)
	if err := check(r, cerr); err != nil {
		return nil, err
	}
	return ids[:n], nil
}

// Detokenize decodes ids, dropping special tokens.
func (m *Model) Detokenize(ids []int32) (string, error) {
	p, err := m.ref.acquire()
	h := (*C.lsk_model)(p)
	if err != nil {
		return "", err
	}
	defer m.ref.release()
	var need C.size_t
	var cerr *C.lsk_error
	r := C.lsk_detokenize(h, idsPtr(ids), C.size_t(len(ids)), 1, nil, 0, &need, &cerr)
	if r != C.LSK_ERR_BUFFER_TOO_SMALL {
		if err := check(r, cerr); err != nil {
			return "", err
		}
	} else {
		C.lsk_error_free(cerr)
	}
	buf := make([]byte, int(need))
	var n C.size_t
	cerr = nil
	r = C.lsk_detokenize(h, idsPtr(ids), C.size_t(len(ids)), 1, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &n, &cerr)
	runtime.KeepAlive(m)
	runtime.KeepAlive(ids)
	if err := check(r, cerr); err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func idsPtr(ids []int32) *C.int32_t {
	if len(ids) == 0 {
		return nil
	}
	return (*C.int32_t)(unsafe.Pointer(&ids[0]))
}

// Session is one decoding context. One call at a time: a concurrent call
// returns an error with code ErrBusy.
type Session struct {
	ref     ref
	abortID atomic.Uintptr
}

// NewSession opens a session on m (contextLength 0 = the model's).
func (m *Model) NewSession(contextLength int, seed uint64) (*Session, error) {
	p, err := m.ref.acquire()
	h := (*C.lsk_model)(p)
	if err != nil {
		return nil, err
	}
	defer m.ref.release()
	var o C.lsk_session_options
	C.lsk_session_options_init(&o, C.size_t(unsafe.Sizeof(o)))
	o.context_length = C.uint32_t(contextLength)
	o.seed = C.uint64_t(seed)
	var s *C.lsk_session
	var cerr *C.lsk_error
	r := C.lsk_session_new(h, &o, &s, &cerr)
	runtime.KeepAlive(m)
	if err := check(r, cerr); err != nil {
		return nil, err
	}
	sess := &Session{ref: ref{h: unsafe.Pointer(s), free: func(h unsafe.Pointer) { C.lsk_session_free((*C.lsk_session)(h)) }, what: "session"}}
	runtime.SetFinalizer(sess, (*Session).Close)
	return sess, nil
}

// Close frees the session once a call in flight on it returns (a running
// Generate finishes first). Idempotent. Later calls return ErrClosed.
func (s *Session) Close() error {
	s.ref.close()
	aborts.Delete(s.abortID.Swap(0))
	return nil
}

// aborts holds the abort functions of sessions by id. The C library is given
// the id, not a Go pointer: a call that asks after Close finds none and
// goes on (it cannot reach a freed function).
var (
	aborts      sync.Map // uintptr -> func() bool
	nextAbortID atomic.Uintptr
)

//export goAbortTrampoline
func goAbortTrampoline(user unsafe.Pointer) C.int32_t {
	f, ok := aborts.Load(uintptr(user))
	if !ok {
		return 0
	}
	stop := func() (stop bool) {
		defer func() {
			if recover() != nil {
				stop = true // a panic in the function counts as true
			}
		}()
		return f.(func() bool)()
	}()
	if stop {
		return 1
	}
	return 0
}

// SetAbort sets the function asked between layers of every pass on the
// session (nil removes it): true stops the call with ErrAborted and leaves
// the session as it was before it. It runs on the decoding thread and must
// not call into this session.
func (s *Session) SetAbort(shouldAbort func() bool) error {
	var id uintptr
	if shouldAbort != nil {
		id = nextAbortID.Add(1)
		aborts.Store(id, shouldAbort)
	}
	err := s.session(func(h *C.lsk_session) error {
		var cerr *C.lsk_error
		return check(C.set_abort_with_id(h, C.uintptr_t(id), &cerr), cerr)
	})
	if err != nil {
		aborts.Delete(id)
		return err
	}
	aborts.Delete(s.abortID.Swap(id))
	return nil
}

// Auto as ExitLayer or DraftLen (with ModeSelfSpeculative) chooses it every round.
const Auto = -1

// Options for Generate. MaxNewTokens must be set; other zero values mean:
// full depth, greedy, E = L/2, d = 4, top-p off.
type Options struct {
	MaxNewTokens int
	Mode         int
	ExitLayer    int
	DraftLen     int
	Temperature  float32
	TopK         int
	TopP         float32
	Seed         uint64
	IgnoreEOS    bool
	Stop         []string
}

// Result of Generate.
type Result struct {
	Tokens     []int32
	Text       string
	StopReason int
	Drafted    uint64
	Accepted   uint64
}

type callbackState struct {
	fn     func(token int32, text string) bool
	tokens []int32
	text   []byte
}

//export goTokenTrampoline
func goTokenTrampoline(user unsafe.Pointer, token C.int32_t, text *C.char, n C.size_t) C.int32_t {
	st := cgo.Handle(uintptr(user)).Value().(*callbackState)
	piece := C.GoStringN(text, C.int(n))
	st.tokens = append(st.tokens, int32(token))
	st.text = append(st.text, piece...)
	if st.fn != nil && !st.fn(int32(token), piece) {
		return 1
	}
	return 0
}

// cOptions builds opt as C options in C memory (cgo forbids Go memory that
// points to Go memory); free releases them after the call.
func cOptions(opt Options) (*C.lsk_generate_options, func(), error) {
	if opt.MaxNewTokens < 1 {
		return nil, nil, &Error{Code: ErrInvalidArgument, Message: "MaxNewTokens must be at least 1"}
	}
	var allocs []unsafe.Pointer
	alloc := func(n uintptr) unsafe.Pointer {
		p := C.calloc(1, C.size_t(n))
		allocs = append(allocs, p)
		return p
	}
	free := func() {
		for _, p := range allocs {
			C.free(p)
		}
	}
	o := (*C.lsk_generate_options)(alloc(unsafe.Sizeof(C.lsk_generate_options{})))
	C.lsk_generate_options_init(o, C.size_t(unsafe.Sizeof(*o)))
	o.max_new_tokens = C.uint32_t(opt.MaxNewTokens)
	o.mode = C.uint32_t(opt.Mode)
	o.exit_layer = setting(opt.ExitLayer, o.exit_layer)
	o.draft_len = setting(opt.DraftLen, o.draft_len)
	smp := (*C.lsk_sampling)(alloc(unsafe.Sizeof(C.lsk_sampling{})))
	Sampling{opt.Temperature, opt.TopK, opt.TopP, opt.Seed}.fill(smp)
	o.sampling = smp
	if opt.IgnoreEOS {
		o.ignore_eos = 1
	}
	if len(opt.Stop) > 0 {
		stops := (**C.char)(alloc(uintptr(len(opt.Stop)) * unsafe.Sizeof(uintptr(0))))
		arr := unsafe.Slice(stops, len(opt.Stop))
		for i, str := range opt.Stop {
			arr[i] = C.CString(str)
			allocs = append(allocs, unsafe.Pointer(arr[i]))
		}
		o.stop_strings = stops
		o.n_stop_strings = C.size_t(len(opt.Stop))
	}
	return o, free, nil
}

// setting is an exit layer or a draft length for C: Auto becomes LSK_AUTO,
// 0 keeps the C default def, and any other value goes as it is (the library
// refuses what is out of range).
func setting(v int, def C.uint32_t) C.uint32_t {
	switch v {
	case Auto:
		return C.LSK_AUTO
	case 0:
		return def
	}
	return C.uint32_t(v)
}

// Sampling says how tokens are chosen; the zero value is greedy (TopP 0
// means off). Seed is used by Generate and batches; steps, drafts, verifies
// and rounds draw from the session's own generator (NewSession's seed).
type Sampling struct {
	Temperature float32
	TopK        int
	TopP        float32
	Seed        uint64
}

func (s Sampling) fill(c *C.lsk_sampling) {
	C.lsk_sampling_init(c, C.size_t(unsafe.Sizeof(*c)))
	c.temperature = C.float(s.Temperature)
	c.top_k = C.uint32_t(s.TopK)
	if s.TopP > 0 {
		c.top_p = C.float(s.TopP)
	}
	c.seed = C.uint64_t(s.Seed)
}

// sampling is the optional sampling argument of the low-level calls as a C
// struct (it holds no pointers, so Go memory may hold it); nil is greedy.
func sampling(opt []Sampling) *C.lsk_sampling {
	if len(opt) == 0 {
		return nil
	}
	var c C.lsk_sampling
	opt[0].fill(&c)
	return &c
}

// Generate feeds prompt and generates; onToken (may be nil) sees every token
// and the text that became final with it, and returns false to stop.
func (s *Session) Generate(prompt []int32, opt Options, onToken func(token int32, text string) bool) (Result, error) {
	p, err := s.ref.acquire()
	h := (*C.lsk_session)(p)
	if err != nil {
		return Result{}, err
	}
	defer s.ref.release()
	o, free, err := cOptions(opt)
	if err != nil {
		return Result{}, err
	}
	defer free()
	st := &callbackState{fn: onToken}
	handle := cgo.NewHandle(st)
	defer handle.Delete()
	var res C.lsk_generate_result
	C.lsk_generate_result_init(&res, C.size_t(unsafe.Sizeof(res)))
	var cerr *C.lsk_error
	r := C.generate_with_callback(h, idsPtr(prompt), C.size_t(len(prompt)), o, C.uintptr_t(handle), &res, &cerr)
	runtime.KeepAlive(s)
	runtime.KeepAlive(prompt)
	if err := check(r, cerr); err != nil {
		return Result{Tokens: st.tokens, Text: string(st.text)}, err
	}
	return Result{Tokens: st.tokens, Text: string(st.text), StopReason: int(res.stop_reason),
		Drafted: uint64(res.drafted), Accepted: uint64(res.accepted)}, nil
}

// Step feeds one token through layers 0..exitLayer (0 = full depth) and
// returns the next token: greedy, or drawn with the optional sampling.
func (s *Session) Step(token int32, exitLayer int, smp ...Sampling) (int32, error) {
	p, err := s.ref.acquire()
	h := (*C.lsk_session)(p)
	if err != nil {
		return 0, err
	}
	defer s.ref.release()
	var next C.int32_t
	var cerr *C.lsk_error
	r := C.lsk_session_step(h, C.int32_t(token), C.uint32_t(exitLayer), sampling(smp), &next, &cerr)
	runtime.KeepAlive(s)
	return int32(next), check(r, cerr)
}

// session runs f with the session's handle held for the call.
func (s *Session) session(f func(h *C.lsk_session) error) error {
	p, err := s.ref.acquire()
	if err != nil {
		return err
	}
	defer s.ref.release()
	return f((*C.lsk_session)(p))
}

// Prefill feeds tokens at full depth and returns the next token (greedy, or
// drawn with the optional sampling).
func (s *Session) Prefill(tokens []int32, smp ...Sampling) (int32, error) {
	var next C.int32_t
	err := s.session(func(h *C.lsk_session) error {
		var cerr *C.lsk_error
		r := C.lsk_session_prefill(h, idsPtr(tokens), C.size_t(len(tokens)), sampling(smp), &next, &cerr)
		runtime.KeepAlive(tokens)
		return check(r, cerr)
	})
	return int32(next), err
}

// Logits returns a copy of row i of the last call's logits (a verify: one
// row per draft plus one); negative i counts from the end (-1: the newest).
func (s *Session) Logits(i int) ([]float32, error) {
	var out []float32
	err := s.session(func(h *C.lsk_session) error {
		var p *C.float
		var n C.size_t
		var cerr *C.lsk_error
		if err := check(C.lsk_session_logits_ith(h, C.int32_t(i), &p, &n, &cerr), cerr); err != nil {
			return err
		}
		out = append([]float32(nil), unsafe.Slice((*float32)(unsafe.Pointer(p)), int(n))...)
		return nil
	})
	return out, err
}

// Draft proposes up to maxDrafts tokens (greedy, or drawn with the optional
// sampling) with layers 0..exitLayer after next (the last accepted token,
// not yet fed). Follow with Verify.
func (s *Session) Draft(next int32, exitLayer, maxDrafts int, smp ...Sampling) ([]int32, error) {
	if maxDrafts < 1 {
		return nil, &Error{Code: ErrInvalidArgument, Message: "maxDrafts must be at least 1"}
	}
	drafts := make([]int32, maxDrafts)
	var n C.size_t
	err := s.session(func(h *C.lsk_session) error {
		var cerr *C.lsk_error
		r := C.lsk_session_draft(h, C.int32_t(next), C.uint32_t(exitLayer), C.uint32_t(maxDrafts), sampling(smp),
			idsPtr(drafts), C.size_t(len(drafts)), &n, &cerr)
		return check(r, cerr)
	})
	if err != nil {
		return nil, err
	}
	return drafts[:n], nil
}

// Verify checks drafts proposed after next with the full model (greedy, or
// speculative sampling with the optional sampling): how many it accepts,
// and the token after them.
func (s *Session) Verify(next int32, drafts []int32, smp ...Sampling) (accepted int, tokenAfter int32, err error) {
	var acc C.size_t
	var after C.int32_t
	err = s.session(func(h *C.lsk_session) error {
		var cerr *C.lsk_error
		r := C.lsk_session_verify(h, C.int32_t(next), idsPtr(drafts), C.size_t(len(drafts)), sampling(smp), &acc, &after, &cerr)
		runtime.KeepAlive(drafts)
		return check(r, cerr)
	})
	return int(acc), int32(after), err
}

// Rewind forgets every position from length on.
func (s *Session) Rewind(length int) error {
	return s.session(func(h *C.lsk_session) error {
		var cerr *C.lsk_error
		return check(C.lsk_session_rewind(h, C.size_t(length), &cerr), cerr)
	})
}

// Stats are a session's counters over its life.
type Stats struct {
	Drafted, Accepted, Rounds    uint64
	DraftSeconds, VerifySeconds  float64
	ShallowLen, DeepLen, Context int
}

// Stats returns the session's counters.
func (s *Session) Stats() (Stats, error) {
	var st C.lsk_stats
	C.lsk_stats_init(&st, C.size_t(unsafe.Sizeof(st)))
	err := s.session(func(h *C.lsk_session) error {
		var cerr *C.lsk_error
		return check(C.lsk_session_stats(h, &st, &cerr), cerr)
	})
	return Stats{uint64(st.drafted), uint64(st.accepted), uint64(st.rounds), float64(st.draft_seconds),
		float64(st.verify_seconds), int(st.shallow_len), int(st.deep_len), int(st.context_length)}, err
}

// Choice is a run of rounds of the last Generate that used one (E, d);
// DraftLen 0 means full-depth steps.
type Choice struct {
	FirstToken, ExitLayer, DraftLen int
	Rounds, Tokens                  uint64
}

// Choices returns the (E, d) spans of the last Generate.
func (s *Session) Choices() ([]Choice, error) {
	var out []Choice
	err := s.session(func(h *C.lsk_session) error {
		var n C.size_t
		var cerr *C.lsk_error
		if err := check(C.lsk_session_choices(h, nil, 0, &n, &cerr), cerr); err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		spans := make([]C.lsk_choice_span, int(n))
		cerr = nil
		if err := check(C.lsk_session_choices(h, &spans[0], n, &n, &cerr), cerr); err != nil {
			return err
		}
		for _, c := range spans[:n] {
			out = append(out, Choice{int(c.first_token), int(c.exit_layer), int(c.draft_len), uint64(c.rounds), uint64(c.tokens)})
		}
		return nil
	})
	return out, err
}
