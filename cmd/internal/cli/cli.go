// Package cli is what pullguard's two binaries share on the command line:
// subcommand dispatch, --help and --version the way operators expect them
// (help exits 0, version names the build), and shell completion.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
)

// Command is one subcommand.
type Command struct {
	Run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
	Summary string
}

// Program is a binary's command table.
type Program struct {
	Name     string
	Summary  string
	Version  string // set at build time
	Commands map[string]Command
	// Order lists the commands as usage shows them.
	Order []string
}

// Main runs the program with os.Args and exits with its code.
func (p *Program) Main() {
	os.Exit(p.Run(os.Args[1:], os.Stdout, os.Stderr))
}

// Run dispatches args. Help exits 0; no command or an unknown one exits 2.
func (p *Program) Run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		p.usage(stderr)
		return 2
	}
	switch args[0] {
	case "-h", "--help", "help":
		p.usage(stdout)
		return 0
	case "-v", "--version", "version":
		fmt.Fprintln(stdout, VersionLine(p.Name, p.Version))
		return 0
	case "completion":
		return p.completion(args[1:], stdout, stderr)
	}
	cmd, ok := p.Commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "%s: unknown command %q\n", p.Name, args[0])
		p.usage(stderr)
		return 2
	}
	// Signals end commands through ctx; serve handles its own signals too.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return cmd.Run(ctx, args[1:], stdout, stderr)
}

func (p *Program) usage(w io.Writer) {
	fmt.Fprintf(w, "%s: %s\n\nusage: %s COMMAND [flags]   (COMMAND -h for its flags)\n\ncommands:\n", p.Name, p.Summary, p.Name)
	for _, name := range p.Order {
		fmt.Fprintf(w, "  %-16s %s\n", name, p.Commands[name].Summary)
	}
	fmt.Fprintf(w, "  %-16s %s\n", "completion", "print a shell completion script (completion bash|zsh)")
	fmt.Fprintf(w, "  %-16s %s\n", "version", "print the version, the source revision and the Go version (also --version)")
}

// VersionLine is "NAME VERSION (revision REV[, modified]; goX.Y.Z)".
func VersionLine(name, version string) string {
	rev, modified, goVersion := "unknown", false, "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		goVersion = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if version == "" {
		version = "dev"
	}
	mod := ""
	if modified {
		mod = ", modified"
	}
	return fmt.Sprintf("%s %s (revision %s%s; %s)", name, version, rev, mod, goVersion)
}

// ParseError turns a FlagSet's parse error into an exit code: 0 for -h and
// --help (the usage was printed as asked), 2 otherwise.
func ParseError(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}

// completion prints a bash or zsh script that completes the commands and,
// through `NAME COMMAND -h`, each command's own flags.
func (p *Program) completion(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 || (args[0] != "bash" && args[0] != "zsh") {
		fmt.Fprintf(stderr, "usage: %s completion bash|zsh\n", p.Name)
		return 2
	}
	names := append([]string{"completion", "version", "help"}, p.Order...)
	sort.Strings(names)
	fn := "_" + strings.ReplaceAll(p.Name, "-", "_")
	script := fmt.Sprintf(`# %[1]s completion; load with: source <(%[1]s completion %[4]s)
%[2]s() {
  local cur="${COMP_WORDS[COMP_CWORD]}"
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=( $(compgen -W "%[3]s" -- "$cur") )
    return
  fi
  case "${COMP_WORDS[1]}" in
    completion) COMPREPLY=( $(compgen -W "bash zsh" -- "$cur") ); return ;;
  esac
  if [[ "$cur" == -* ]]; then
    local flags
    flags=$(%[1]s "${COMP_WORDS[1]}" -h 2>&1 | sed -n 's/^  \(-[A-Za-z0-9-]*\).*/-\1/p')
    COMPREPLY=( $(compgen -W "$flags" -- "$cur") )
    return
  fi
  COMPREPLY=( $(compgen -f -- "$cur") )
}
`, p.Name, fn, strings.Join(names, " "), args[0])
	if args[0] == "zsh" {
		script += fmt.Sprintf("autoload -U +X bashcompinit && bashcompinit\ncomplete -F %s %s\n", fn, p.Name)
	} else {
		script += fmt.Sprintf("complete -F %s %s\n", fn, p.Name)
	}
	_, _ = io.WriteString(stdout, script)
	return 0
}
