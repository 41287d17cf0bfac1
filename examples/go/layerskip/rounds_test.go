package layerskip

import (
	"slices"
	"strings"
	"testing"
)

func session(t *testing.T, m *Model, seed uint64) *Session {
	s, err := m.NewSession(0, seed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func generated(t *testing.T, m *Model, prompt []int32, opt Options) []int32 {
	res, err := session(t, m, 0).Generate(prompt, opt, nil)
	if err != nil {
		t.Fatal(err)
	}
	return res.Tokens
}

func TestSessionsRoundMatchesGenerate(t *testing.T) {
	m := load(t)
	prompt, _ := m.Tokenize("def f(x):", true)
	const n = 20
	full := generated(t, m, prompt, Options{MaxNewTokens: n, IgnoreEOS: true})
	sampled := Options{MaxNewTokens: n, IgnoreEOS: true, Mode: ModeSelfSpeculative, ExitLayer: 1, DraftLen: 3,
		Temperature: 0.8, TopK: 20, Seed: 5}
	want := [][]int32{full, full, generated(t, m, prompt, sampled)}
	rounds := []Round{
		{Session: session(t, m, 0)},
		{Session: session(t, m, 0), Mode: ModeSelfSpeculative, ExitLayer: 1, DraftLen: 3},
		{Session: session(t, m, 5), Mode: ModeSelfSpeculative, ExitLayer: 1, DraftLen: 3,
			Sampling: Sampling{Temperature: 0.8, TopK: 20}},
	}
	got := make([][]int32, len(rounds))
	for k := range rounds {
		rounds[k].Input = prompt
	}
	closed := session(t, m, 0)
	closed.Close()
	for first := true; len(got[0]) < n || len(got[1]) < n || len(got[2]) < n; first = false {
		var live []Round
		var idx []int
		for k := range rounds {
			if len(got[k]) < n {
				rounds[k].MaxTokens = n - len(got[k])
				live, idx = append(live, rounds[k]), append(idx, k)
			}
		}
		if first {
			// A bad round and a closed session fail alone.
			live = append(live, Round{Session: session(t, m, 0), Input: prompt}, Round{Session: closed, Input: prompt, MaxTokens: 1})
		}
		res, err := SessionsRound(live)
		if err != nil {
			t.Fatal(err)
		}
		for j, k := range idx {
			if res[j].Err != nil || len(res[j].Tokens) == 0 {
				t.Fatalf("round of %d: %v", k, res[j].Err)
			}
			got[k] = append(got[k], res[j].Tokens...)
			rounds[k].Input = res[j].Tokens[len(res[j].Tokens)-1:]
		}
		if first {
			bad, gone := res[len(res)-2].Err, res[len(res)-1].Err
			if !IsCode(bad, ErrInvalidArgument) || !strings.Contains(bad.Error(), "max_tokens must be at least 1") {
				t.Fatalf("bad round: %v", bad)
			}
			if !IsCode(gone, ErrClosed) {
				t.Fatalf("closed session: %v", gone)
			}
		}
	}
	for k := range got {
		if !slices.Equal(got[k], want[k]) {
			t.Fatalf("session %d: rounds %v, generate %v", k, got[k], want[k])
		}
	}
}

func TestBatchMatchesGenerate(t *testing.T) {
	m := load(t)
	prompt, _ := m.Tokenize("def f(x):", true)
	opt := Options{MaxNewTokens: 16, IgnoreEOS: true}
	full := generated(t, m, prompt, opt)
	b, err := m.NewBatch()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a, s := session(t, m, 0), session(t, m, 0)
	spec := opt
	spec.Mode, spec.ExitLayer, spec.DraftLen = ModeSelfSpeculative, Auto, Auto
	var streamed []int32
	ia, err := b.Add(a, prompt, opt, func(tok int32, _ string) bool { streamed = append(streamed, tok); return true })
	if err != nil {
		t.Fatal(err)
	}
	ib, err := b.Add(s, prompt, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Step(1, 0); !IsCode(err, ErrBusy) {
		t.Fatalf("a lent session: %v", err)
	}
	if _, err := b.Add(a, []int32{-3}, opt, nil); !IsCode(err, ErrBusy) && !IsCode(err, ErrInvalidArgument) {
		t.Fatal(err)
	}
	for {
		n, err := b.Step()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	done, err := b.Finished()
	if err != nil || len(done) != 2 {
		t.Fatal(done, err)
	}
	for _, id := range []uint64{ia, ib} {
		res, err := b.Result(id)
		if err != nil || !slices.Equal(res.Tokens, full) {
			t.Fatalf("generation %d: %v %v", id, res.Tokens, err)
		}
	}
	if !slices.Equal(streamed, full) {
		t.Fatal("streamed tokens differ")
	}
	if _, err := b.Result(ia); !IsCode(err, ErrInvalidArgument) {
		t.Fatalf("collected twice: %v", err)
	}
	if err := b.Cancel(99); !IsCode(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "no running generation 99") {
		t.Fatal(err)
	}
	b.Close()
	if _, err := b.Step(); !IsCode(err, ErrClosed) {
		t.Fatal(err)
	}
}

func TestDraftShortlistIsLossless(t *testing.T) {
	m := load(t)
	prompt, _ := m.Tokenize("def f(x):", true)
	opt := Options{MaxNewTokens: 16, IgnoreEOS: true, Mode: ModeSelfSpeculative, ExitLayer: 1, DraftLen: 3}
	short, err := LoadWith(modelPath(t), LoadOptions{DraftShortlist: 32})
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	full := generated(t, m, prompt, Options{MaxNewTokens: 16, IgnoreEOS: true})
	if got := generated(t, short, prompt, opt); !slices.Equal(got, full) {
		t.Fatalf("with a shortlist %v, full depth %v", got, full)
	}
}

func TestSetAbort(t *testing.T) {
	m := load(t)
	prompt, _ := m.Tokenize("def f(x):", true)
	s := session(t, m, 0)
	if err := s.SetAbort(func() bool { return true }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Prefill(prompt); !IsCode(err, ErrAborted) {
		t.Fatalf("want ErrAborted, got %v", err)
	}
	s.SetAbort(func() bool { panic("boom") })
	if _, err := s.Prefill(prompt); !IsCode(err, ErrAborted) {
		t.Fatalf("a panicking abort function: %v", err)
	}
	s.SetAbort(nil)
	st, _ := s.Stats()
	if st.ShallowLen != 0 {
		t.Fatal("an aborted call left positions behind")
	}
	next, err := s.Prefill(prompt)
	if err != nil || next != generated(t, m, prompt, Options{MaxNewTokens: 1})[0] {
		t.Fatal(next, err)
	}
}

func TestSessionsStepAndSampling(t *testing.T) {
	m := load(t)
	prompt, _ := m.Tokenize("def f(x):", true)
	a, b := session(t, m, 3), session(t, m, 0)
	next, errs, err := SessionsStep([]*Session{a, b}, [][]int32{prompt, {-9}}, nil)
	if err != nil || errs[0] != nil || !IsCode(errs[1], ErrInvalidArgument) || next[1] != -1 {
		t.Fatal(next, errs, err)
	}
	if next[0] != generated(t, m, prompt, Options{MaxNewTokens: 1})[0] {
		t.Fatal("batched step differs from generate")
	}
	// The same seed draws the same sampled token.
	hot := Sampling{Temperature: 1.5}
	x, errX := session(t, m, 11).Prefill(prompt, hot)
	y, errY := session(t, m, 11).Prefill(prompt, hot)
	if errX != nil || errY != nil || x != y {
		t.Fatal(x, y, errX, errY)
	}
	if _, err := a.Step(1, 0, Sampling{TopP: 2}); !IsCode(err, ErrInvalidArgument) {
		t.Fatalf("a bad top-p: %v", err)
	}
	if _, _, err := SessionsStep([]*Session{a}, nil, nil); !IsCode(err, ErrInvalidArgument) {
		t.Fatal(err)
	}
	if err := m.ResetPolicy(); err != nil {
		t.Fatal(err)
	}
	if ABIVersion() != 2 || Version() == "" {
		t.Fatal(ABIVersion(), Version())
	}
}
