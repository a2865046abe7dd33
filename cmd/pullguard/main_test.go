package main

import (
	"bytes"
	"testing"
)

// TestEveryCommandHelpExitsZero: -h on any command prints its flags and exits 0.
func TestEveryCommandHelpExitsZero(t *testing.T) {
	p := program()
	for _, name := range p.Order {
		var out, errb bytes.Buffer
		if code := p.Run([]string{name, "-h"}, &out, &errb); code != 0 || errb.Len()+out.Len() == 0 {
			t.Errorf("%s -h: exit %d, output %q", name, code, out.String()+errb.String())
		}
	}
}
