package layerskip

/*
#include <stdlib.h>
#include "layerskip.h"

extern int32_t goTokenTrampoline(void *user_data, int32_t token, char *text, size_t text_len);

static int32_t batchTokenTrampoline(void *user_data, int32_t token, const char *text, size_t text_len) {
	return goTokenTrampoline(user_data, token, (char *)text, text_len);
}

static lsk_result batch_add(lsk_batch *b, lsk_session *s, const int32_t *prompt, size_t n,
		const lsk_generate_options *o, uintptr_t handle, uint64_t *id, lsk_error **err) {
	return lsk_batch_add(b, s, prompt, n, o, batchTokenTrampoline, (void *)handle, id, err);
}
*/
import "C"

import (
	"runtime"
	"runtime/cgo"
	"unsafe"
)

// Batch is a continuous batch of generations over one model (lsk_batch):
// generations join with Add and leave when they finish; Step advances every
// running one by one round in shared passes. One goroutine at a time (a
// concurrent call returns ErrBusy).
type Batch struct {
	ref ref
	// The callbacks of generations not yet collected, by id.
	gens map[uint64]cgo.Handle
}

// NewBatch starts an empty batch for sessions of m.
func (m *Model) NewBatch() (*Batch, error) {
	p, err := m.ref.acquire()
	if err != nil {
		return nil, err
	}
	defer m.ref.release()
	var b *C.lsk_batch
	var cerr *C.lsk_error
	if err := check(C.lsk_batch_new((*C.lsk_model)(p), &b, &cerr), cerr); err != nil {
		return nil, err
	}
	batch := &Batch{
		ref:  ref{h: unsafe.Pointer(b), free: func(h unsafe.Pointer) { C.lsk_batch_free((*C.lsk_batch)(h)) }, what: "batch"},
		gens: map[uint64]cgo.Handle{},
	}
	runtime.SetFinalizer(batch, (*Batch).Close)
	return batch, nil
}

// Close stops running generations (their sessions become usable again) and
// frees the batch. Idempotent.
func (b *Batch) Close() error {
	b.ref.close()
	b.ref.mu.Lock()
	freed := b.ref.h == nil
	b.ref.mu.Unlock()
	if freed {
		for id, h := range b.gens {
			h.Delete()
			delete(b.gens, id)
		}
	}
	return nil
}

func (b *Batch) call(f func(h *C.lsk_batch) error) error {
	p, err := b.ref.acquire()
	if err != nil {
		return err
	}
	defer b.ref.release()
	return f((*C.lsk_batch)(p))
}

// Add starts a generation on s (lent to the batch until it finishes: its
// own calls return ErrBusy meanwhile). onToken (may be nil) runs inside
// Step. Returns the generation's id.
func (b *Batch) Add(s *Session, prompt []int32, opt Options, onToken func(token int32, text string) bool) (uint64, error) {
	o, free, err := cOptions(opt)
	if err != nil {
		return 0, err
	}
	defer free()
	var id C.uint64_t
	err = b.call(func(bh *C.lsk_batch) error {
		return s.session(func(sh *C.lsk_session) error {
			st := &callbackState{fn: onToken}
			handle := cgo.NewHandle(st)
			var cerr *C.lsk_error
			r := C.batch_add(bh, sh, idsPtr(prompt), C.size_t(len(prompt)), o, C.uintptr_t(handle), &id, &cerr)
			runtime.KeepAlive(prompt)
			if err := check(r, cerr); err != nil {
				handle.Delete()
				return err
			}
			b.gens[uint64(id)] = handle
			return nil
		})
	})
	return uint64(id), err
}

// Step runs one round of every running generation; returns how many still run.
func (b *Batch) Step() (int, error) {
	var n C.size_t
	err := b.call(func(h *C.lsk_batch) error {
		var cerr *C.lsk_error
		return check(C.lsk_batch_step(h, &n, &cerr), cerr)
	})
	return int(n), err
}

// Cancel stops generation id now (its tokens so far stay delivered).
func (b *Batch) Cancel(id uint64) error {
	return b.call(func(h *C.lsk_batch) error {
		var cerr *C.lsk_error
		return check(C.lsk_batch_cancel(h, C.uint64_t(id), &cerr), cerr)
	})
}

// Finished lists the finished generations not yet collected with Result.
func (b *Batch) Finished() ([]uint64, error) {
	var ids []uint64
	err := b.call(func(h *C.lsk_batch) error {
		var n C.size_t
		var cerr *C.lsk_error
		if err := check(C.lsk_batch_finished(h, nil, 0, &n, &cerr), cerr); err != nil || n == 0 {
			return err
		}
		ids = make([]uint64, int(n))
		cerr = nil
		return check(C.lsk_batch_finished(h, (*C.uint64_t)(unsafe.Pointer(&ids[0])), n, &n, &cerr), cerr)
	})
	return ids, err
}

// Result collects finished generation id (once): its tokens and text, and
// the error that stopped it, if any.
func (b *Batch) Result(id uint64) (Result, error) {
	var out Result
	err := b.call(func(h *C.lsk_batch) error {
		var res C.lsk_generate_result
		C.lsk_generate_result_init(&res, C.size_t(unsafe.Sizeof(res)))
		var cerr *C.lsk_error
		r := C.lsk_batch_result(h, C.uint64_t(id), &res, &cerr)
		if handle, ok := b.gens[id]; ok && r != C.LSK_ERR_BUSY {
			st := handle.Value().(*callbackState)
			out.Tokens, out.Text = st.tokens, string(st.text)
			handle.Delete()
			delete(b.gens, id)
		}
		if err := check(r, cerr); err != nil {
			return err
		}
		out.StopReason = int(res.stop_reason)
		out.Drafted, out.Accepted = uint64(res.drafted), uint64(res.accepted)
		return nil
	})
	return out, err
}
