package cli

import (
	"bytes"
	"context"
	"flag"
	"io"
	"strings"
	"testing"
)

func testProgram() *Program {
	run := func(_ context.Context, args []string, _, stderr io.Writer) int {
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		fs.SetOutput(stderr)
		fs.String("config", "", "a flag")
		if err := fs.Parse(args); err != nil {
			return ParseError(err)
		}
		return 7
	}
	return &Program{Name: "tool-x", Summary: "s", Version: "v1.2.3", Order: []string{"do"},
		Commands: map[string]Command{"do": {Run: run, Summary: "does"}}}
}

// TestConventions: help exits 0 (the program's and a command's), version names the build,
// unknown commands and bad flags exit 2, completion scripts name the commands.
func TestConventions(t *testing.T) {
	p := testProgram()
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"-h"}, 0, "usage: tool-x COMMAND"},
		{[]string{"--help"}, 0, "completion"},
		{[]string{"help"}, 0, "does"},
		{[]string{"--version"}, 0, "tool-x v1.2.3 (revision "},
		{[]string{"version"}, 0, "; go1."},
		{[]string{"do", "-h"}, 0, "-config"},
		{[]string{"do", "--help"}, 0, "-config"},
		{[]string{"do", "--bogus"}, 2, "flag provided but not defined"},
		{[]string{"do"}, 7, ""},
		{[]string{"nope"}, 2, `unknown command "nope"`},
		{nil, 2, "usage:"},
		{[]string{"completion", "bash"}, 0, "complete -F _tool_x tool-x"},
		{[]string{"completion", "zsh"}, 0, "bashcompinit"},
		{[]string{"completion", "fish"}, 2, "usage: tool-x completion bash|zsh"},
	} {
		var out, errb bytes.Buffer
		if code := p.Run(tc.args, &out, &errb); code != tc.code || !strings.Contains(out.String()+errb.String(), tc.out) {
			t.Errorf("%v: exit %d, want %d and %q in:\n%s%s", tc.args, code, tc.code, tc.out, out.String(), errb.String())
		}
	}
}
