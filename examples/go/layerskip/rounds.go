package layerskip

/*
#include <stdlib.h>
#include "layerskip.h"
*/
import "C"

import (
	"runtime"
	"unsafe"
)

// Round is what one session does in SessionsRound.
type Round struct {
	Session *Session
	// Input is fed first: the last token the session's previous round
	// returned (not cached yet), or more, such as a prompt (then the round
	// is one pass over them and returns one token).
	Input []int32
	// Mode, ExitLayer and DraftLen as in Options (Auto included).
	Mode, ExitLayer, DraftLen int
	// Sampling of the round; its Seed is unused (the session's generator draws).
	Sampling Sampling
	// MaxTokens is the most tokens the round may return (required, >= 1).
	MaxTokens int
	// StopIDs end the round once returned (EOS ids, say).
	StopIDs             []int32
	ConfidenceThreshold float32
	// Drafts from another drafter, verified at full depth instead of drafting
	// (ModeFull, or self-speculative with fixed E and d), with their
	// distributions (len(Drafts) rows of the vocabulary size), or nil when
	// each was its drafter's only candidate.
	Drafts     []int32
	DraftProbs []float32
}

// RoundResult is what one session's round did.
type RoundResult struct {
	Tokens            []int32
	Drafted, Accepted int
	// The (E, d) the round ran; (layers, 0) for a full-depth step.
	ExitLayer, DraftLen int
	// Err is this round's own error (nil on success); the session is as it
	// was before a failed round.
	Err error
}

// cArena is C memory for one call: cgo forbids Go memory that holds Go
// pointers, so everything a C struct points to is copied here.
type cArena []unsafe.Pointer

func (a *cArena) alloc(n uintptr) unsafe.Pointer {
	if n == 0 {
		return nil
	}
	p := C.calloc(1, C.size_t(n))
	*a = append(*a, p)
	return p
}

func (a *cArena) free() {
	for _, p := range *a {
		C.free(p)
	}
}

func copyTo[T any](a *cArena, v []T) unsafe.Pointer {
	var zero T
	p := a.alloc(uintptr(len(v)) * unsafe.Sizeof(zero))
	if p != nil {
		copy(unsafe.Slice((*T)(p), len(v)), v)
	}
	return p
}

// SessionsRound advances each round's session (all of one model) by one
// round, together: every pass runs once over the rows of all of them, and
// each result is identical to running that round alone. A failed round
// fails alone (its Err); the error returned is the call's own.
func SessionsRound(rounds []Round) ([]RoundResult, error) {
	out := make([]RoundResult, len(rounds))
	if len(rounds) == 0 {
		return out, nil
	}
	var arena cArena
	defer arena.free()
	size := unsafe.Sizeof(C.lsk_round{})
	cr := unsafe.Slice((*C.lsk_round)(arena.alloc(size*uintptr(len(rounds)))), len(rounds))
	errs := unsafe.Slice((**C.lsk_error)(arena.alloc(unsafe.Sizeof(uintptr(0))*uintptr(len(rounds)))), len(rounds))
	var held []*Session
	defer func() {
		for _, s := range held {
			s.ref.release()
		}
	}()
	for i, r := range rounds {
		c := &cr[i]
		C.lsk_round_init(c, C.size_t(size))
		if r.Session != nil {
			if p, err := r.Session.ref.acquire(); err == nil {
				held = append(held, r.Session)
				c.session = (*C.lsk_session)(p)
			} else {
				out[i].Err = err
			}
		}
		c.input = (*C.int32_t)(copyTo(&arena, r.Input))
		c.n_input = C.size_t(len(r.Input))
		c.mode = C.uint32_t(r.Mode)
		c.exit_layer = setting(r.ExitLayer, c.exit_layer)
		c.draft_len = setting(r.DraftLen, c.draft_len)
		smp := (*C.lsk_sampling)(arena.alloc(unsafe.Sizeof(C.lsk_sampling{})))
		r.Sampling.fill(smp)
		c.sampling = smp
		if r.MaxTokens > 0 {
			c.max_tokens = C.uint32_t(r.MaxTokens)
			c.tokens = (*C.int32_t)(arena.alloc(uintptr(r.MaxTokens) * 4))
		}
		c.stop_ids = (*C.int32_t)(copyTo(&arena, r.StopIDs))
		c.n_stop_ids = C.size_t(len(r.StopIDs))
		c.confidence_threshold = C.float(r.ConfidenceThreshold)
		c.drafts = (*C.int32_t)(copyTo(&arena, r.Drafts))
		c.n_drafts = C.size_t(len(r.Drafts))
		c.draft_probs = (*C.float)(copyTo(&arena, r.DraftProbs))
		c.err = &errs[i]
	}
	var cerr *C.lsk_error
	if err := check(C.lsk_sessions_round(&cr[0], C.size_t(len(cr)), &cerr), cerr); err != nil {
		return nil, err
	}
	runtime.KeepAlive(rounds)
	for i := range cr {
		c := &cr[i]
		if out[i].Err != nil {
			continue // closed before the call: the C call saw no session
		}
		if err := check(c.result, errs[i]); err != nil {
			out[i].Err = err
			continue
		}
		out[i] = RoundResult{
			Tokens:    append([]int32(nil), unsafe.Slice((*int32)(unsafe.Pointer(c.tokens)), int(c.n_tokens))...),
			Drafted:   int(c.drafted),
			Accepted:  int(c.accepted),
			ExitLayer: int(c.ran_exit_layer),
			DraftLen:  int(c.ran_draft_len),
		}
	}
	return out, nil
}

// SessionsStep feeds tokens[i] to sessions[i] through layers
// 0..exitLayers[i] (nil: full depth) in one pass per layer and returns each
// session's next token (greedy, or drawn with the optional sampling); a
// session that failed has -1 and its error in errs[i].
func SessionsStep(sessions []*Session, tokens [][]int32, exitLayers []int, smp ...Sampling) (next []int32, errs []error, err error) {
	n := len(sessions)
	if len(tokens) != n || (exitLayers != nil && len(exitLayers) != n) {
		return nil, nil, &Error{Code: ErrInvalidArgument, Message: "SessionsStep: one token list (and exit layer) per session"}
	}
	next, errs = make([]int32, n), make([]error, n)
	if n == 0 {
		return next, errs, nil
	}
	var arena cArena
	defer arena.free()
	handles := unsafe.Slice((**C.lsk_session)(arena.alloc(unsafe.Sizeof(uintptr(0))*uintptr(n))), n)
	ptrs := unsafe.Slice((**C.int32_t)(arena.alloc(unsafe.Sizeof(uintptr(0))*uintptr(n))), n)
	counts := make([]C.size_t, n)
	exits := make([]C.uint32_t, n)
	codes := make([]C.lsk_result, n)
	cnext := make([]C.int32_t, n)
	for i, s := range sessions {
		if s != nil {
			if p, e := s.ref.acquire(); e == nil {
				defer s.ref.release()
				handles[i] = (*C.lsk_session)(p)
			}
		}
		ptrs[i] = (*C.int32_t)(copyTo(&arena, tokens[i]))
		counts[i] = C.size_t(len(tokens[i]))
		if exitLayers != nil {
			exits[i] = C.uint32_t(exitLayers[i])
		}
	}
	var cerr *C.lsk_error
	r := C.lsk_sessions_step(&handles[0], C.size_t(n), &ptrs[0], &counts[0], &exits[0], sampling(smp),
		&cnext[0], &codes[0], &cerr)
	if err := check(r, cerr); err != nil {
		return nil, nil, err
	}
	for i := range codes {
		next[i] = int32(cnext[i])
		if codes[i] != C.LSK_OK {
			errs[i] = &Error{Code: int(codes[i]), Message: C.GoString(C.lsk_result_name(C.uint32_t(codes[i])))}
		}
	}
	return next, errs, nil
}
