// Command generate prints a greedy continuation, like `layerskip generate`.
//
//	go run ./cmd/generate -model ../../assets/layerskip-pycode-8l -prompt "def fibonacci(n):"
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/layerskip/layerskip-go/layerskip"
)

func main() {
	model := flag.String("model", "../../assets/layerskip-pycode-8l", "checkpoint directory")
	prompt := flag.String("prompt", "def fibonacci(n):", "prompt text")
	n := flag.Int("max-new-tokens", 64, "token budget")
	mode := flag.Int("mode", layerskip.ModeSelfSpeculative, "0 full, 1 early exit, 2 self-speculative")
	flag.Parse()

	m, err := layerskip.Load(*model)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer m.Close()
	s, err := m.NewSession(0, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer s.Close()
	ids, err := m.Tokenize(*prompt, true)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Print(*prompt)
	res, err := s.Generate(ids, layerskip.Options{MaxNewTokens: *n, Mode: *mode}, func(_ int32, text string) bool {
		fmt.Print(text)
		return true
	})
	fmt.Println()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "[%d tokens, %d/%d drafts accepted]\n", len(res.Tokens), res.Accepted, res.Drafted)
}
