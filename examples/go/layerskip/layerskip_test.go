package layerskip

import (
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// The bundled model, or LAYERSKIP_TEST_MODEL.
func modelPath(t *testing.T) string {
	if p := os.Getenv("LAYERSKIP_TEST_MODEL"); p != "" {
		return p
	}
	return filepath.Join("..", "..", "..", "tests", "fixtures", "gqa-bf16-tied-llama3-sharded")
}

func load(t *testing.T) *Model {
	m, err := Load(modelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestLoadErrors(t *testing.T) {
	_, err := Load("/no/such/model")
	if !IsCode(err, ErrIO) {
		t.Fatalf("want ErrIO, got %v", err)
	}
}

func TestLoadOnCUDA(t *testing.T) {
	m, err := LoadWith(modelPath(t), LoadOptions{CUDA: true, MaxContext: 64})
	if err == nil {
		// A machine with a GPU: it must decode there too.
		s, err := m.NewSession(0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if res, err := s.Generate([]int32{2, 3, 4}, Options{MaxNewTokens: 5, IgnoreEOS: true}, nil); err != nil || len(res.Tokens) != 5 {
			t.Fatal(res, err)
		}
		return
	}
	if !IsCode(err, ErrUnsupported) && !IsCode(err, ErrInvalidArgument) {
		t.Fatalf("want ErrUnsupported (no driver) or ErrInvalidArgument (no such GPU), got %v", err)
	}
	if _, err := LoadWith(modelPath(t), LoadOptions{CUDA: true, DeviceIndex: 99}); err == nil {
		t.Fatal("GPU 99 must not load")
	}
}

func TestLoadWithQuantize(t *testing.T) {
	if _, err := LoadWith(modelPath(t), LoadOptions{Quantize: 7}); !IsCode(err, ErrInvalidArgument) {
		t.Fatalf("want ErrInvalidArgument, got %v", err)
	}
	for _, q := range []int{QuantizeInt8, QuantizeBf16} {
		m, err := LoadWith(modelPath(t), LoadOptions{Quantize: q, MaxContext: 64})
		if err != nil {
			t.Fatal(err)
		}
		s, err := m.NewSession(0, 0)
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.Generate([]int32{2, 3, 4}, Options{MaxNewTokens: 5, IgnoreEOS: true}, nil)
		if err != nil || len(res.Tokens) != 5 {
			t.Fatal(q, res, err)
		}
		s.Close()
		m.Close()
	}
}

func TestGenerateModesAgree(t *testing.T) {
	m := load(t)
	info, err := m.Info()
	if err != nil || info.Layers < 2 {
		t.Fatal(info, err)
	}
	prompt, err := m.Tokenize("def f(x):", true)
	if err != nil {
		t.Fatal(err)
	}
	var outs [][]int32
	for i, mode := range []int{ModeFull, ModeSelfSpeculative, ModeSelfSpeculative} {
		s, err := m.NewSession(0, 0)
		if err != nil {
			t.Fatal(err)
		}
		var streamed string
		opt := Options{MaxNewTokens: 20, Mode: mode, ExitLayer: 1, DraftLen: 3, IgnoreEOS: true}
		if i == 2 {
			opt.ExitLayer, opt.DraftLen = Auto, Auto
		}
		res, err := s.Generate(prompt, opt,
			func(tok int32, text string) bool { streamed += text; return true })
		if err != nil {
			t.Fatal(err)
		}
		text, _ := m.Detokenize(res.Tokens)
		if len(res.Tokens) != 20 || streamed != res.Text || text != res.Text {
			t.Fatalf("mode %d: %d tokens, %q vs %q vs %q", mode, len(res.Tokens), streamed, res.Text, text)
		}
		outs = append(outs, res.Tokens)
		s.Close()
		s.Close() // idempotent
	}
	for k := 1; k < len(outs); k++ {
		for i := range outs[0] {
			if outs[0][i] != outs[k][i] {
				t.Fatalf("self-speculative run %d differs from full at %d", k, i)
			}
		}
	}
}

func TestCallbackStopAndErrors(t *testing.T) {
	m := load(t)
	s, _ := m.NewSession(0, 0)
	defer s.Close()
	prompt, _ := m.Tokenize("x", true)
	n := 0
	res, err := s.Generate(prompt, Options{MaxNewTokens: 20, IgnoreEOS: true}, func(int32, string) bool { n++; return n < 3 })
	if err != nil || len(res.Tokens) != 3 {
		t.Fatal(res, err)
	}
	if _, err := s.Step(-1, 0); !IsCode(err, ErrInvalidArgument) {
		t.Fatalf("want ErrInvalidArgument, got %v", err)
	}
	if _, err := s.Step(1, 99); !IsCode(err, ErrInvalidArgument) {
		t.Fatalf("want ErrInvalidArgument, got %v", err)
	}
	// Still usable after errors.
	if _, err := s.Step(1, 0); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := s.Step(1, 0); !IsCode(err, ErrClosed) {
		t.Fatalf("closed session: %v", err)
	}
	if _, err := s.Generate([]int32{1}, Options{}, nil); !IsCode(err, ErrClosed) {
		t.Fatalf("closed session: %v", err)
	}
}

func TestMaxNewTokensIsRequired(t *testing.T) {
	m := load(t)
	s, err := m.NewSession(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Generate([]int32{1, 2}, Options{}, nil); !IsCode(err, ErrInvalidArgument) {
		t.Fatalf("want ErrInvalidArgument, got %v", err)
	}
}

// Close while Generate runs on another goroutine, many times: no crash, and
// every call returns a result, ErrBusy or ErrClosed. Run with -race.
func TestCloseDuringGenerate(t *testing.T) {
	m := load(t)
	prompt, _ := m.Tokenize("def g(y):", true)
	reps := 1000
	if testing.Short() {
		reps = 50
	}
	for i := 0; i < reps; i++ {
		s, err := m.NewSession(0, 0)
		if err != nil {
			t.Fatal(err)
		}
		started := make(chan struct{})
		done := make(chan error, 2)
		for g := 0; g < 2; g++ {
			go func(g int) {
				if g == 0 {
					close(started)
				}
				res, err := s.Generate(prompt, Options{MaxNewTokens: 8, Mode: ModeSelfSpeculative, ExitLayer: 1, IgnoreEOS: true}, nil)
				if err == nil && len(res.Tokens) != 8 {
					err = &Error{Code: -100, Message: "short result"}
				}
				done <- err
			}(g)
		}
		<-started
		if i%2 == 0 {
			runtime.Gosched()
		}
		s.Close()
		for g := 0; g < 2; g++ {
			if err := <-done; err != nil && !IsCode(err, ErrBusy) && !IsCode(err, ErrClosed) {
				t.Fatalf("rep %d: %v", i, err)
			}
		}
	}
}

func TestConcurrentSessionsOnOneModel(t *testing.T) {
	m := load(t)
	prompt, _ := m.Tokenize("def g(y):", true)
	run := func() []int32 {
		s, err := m.NewSession(0, 0)
		if err != nil {
			t.Error(err)
			return nil
		}
		defer s.Close()
		res, err := s.Generate(prompt, Options{MaxNewTokens: 16, Mode: ModeSelfSpeculative, ExitLayer: 2, IgnoreEOS: true}, nil)
		if err != nil {
			t.Error(err)
		}
		return res.Tokens
	}
	want := run()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.Gosched()
			got := run()
			for j := range want {
				if got[j] != want[j] {
					t.Errorf("concurrent run differs at %d", j)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// The low-level calls reproduce Generate's greedy stream: prefill, then
// rounds of draft and verify; logits rows, rewind and stats work.
func TestLowLevelCallsMatchGenerate(t *testing.T) {
	m := load(t)
	prompt, _ := m.Tokenize("def g(y):", true)
	s, err := m.NewSession(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want, err := s.Generate(prompt, Options{MaxNewTokens: 12, IgnoreEOS: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	low, _ := m.NewSession(0, 0)
	defer low.Close()
	next, err := low.Prefill(prompt)
	if err != nil {
		t.Fatal(err)
	}
	if row, err := low.Logits(-1); err != nil || len(row) == 0 {
		t.Fatal(row, err)
	}
	got := []int32{next}
	for len(got) < 12 {
		drafts, err := low.Draft(next, 1, 3)
		if err != nil {
			t.Fatal(err)
		}
		acc, after, err := low.Verify(next, drafts)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, drafts[:acc]...)
		got = append(got, after)
		next = after
	}
	for i := range want.Tokens {
		if got[i] != want.Tokens[i] {
			t.Fatalf("token %d: %d, Generate gave %d", i, got[i], want.Tokens[i])
		}
	}
	st, err := low.Stats()
	if err != nil || st.Drafted == 0 || st.Rounds == 0 {
		t.Fatal(st, err)
	}
	if err := low.Rewind(len(prompt)); err != nil {
		t.Fatal(err)
	}
	if st, _ := low.Stats(); st.ShallowLen != len(prompt) {
		t.Fatalf("after rewind: %+v", st)
	}
	if _, err := low.Logits(99); !IsCode(err, ErrInvalidArgument) {
		t.Fatalf("want ErrInvalidArgument, got %v", err)
	}
	auto, _ := m.NewSession(0, 0)
	defer auto.Close()
	if _, err := auto.Generate(prompt, Options{MaxNewTokens: 8, Mode: ModeSelfSpeculative, ExitLayer: Auto, DraftLen: Auto, IgnoreEOS: true}, nil); err != nil {
		t.Fatal(err)
	}
	if spans, err := auto.Choices(); err != nil || len(spans) == 0 {
		t.Fatal(spans, err)
	}
}
