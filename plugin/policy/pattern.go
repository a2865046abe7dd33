package policy

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

const (
	dockerHub       = "docker.io"
	legacyDockerHub = "index.docker.io"
	// maxPatternLen bounds a pattern; real image names are at most 255 bytes plus tag and digest.
	maxPatternLen = 512
	// maxImageLen bounds what Match will try to parse.
	maxImageLen = 1024
)

var imageIDRE = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)

var tagPatternRE = regexp.MustCompile(`^[\w*][\w.*-]{0,127}$`)

// pattern is a compiled repositories[].name. The registry host and the repository path are
// matched separately so that a host can only ever match the image's host: '*' in the host
// stays inside the host, '*' in the path may span '/'.
type pattern struct {
	any    bool   // "*": every repository on every host
	host   string // lower-case, may hold '*'
	path   string // may hold '*'
	tag    string // "" = every tag; may hold '*'
	digest string // "" = every digest; never a wildcard

	exact     bool // no wildcard anywhere
	literal   int  // number of non-wildcard bytes: more is more specific
	wildcards int  // number of '*': fewer is more specific
}

// compilePattern normalises a pattern the way distribution/reference normalises image names
// ("nginx" is docker.io/library/nginx, index.docker.io is docker.io) and checks it is a valid
// image name once every '*' is replaced by a letter.
func compilePattern(s string) (*pattern, error) {
	if s == "" {
		return nil, errors.New("empty repository name")
	}
	if len(s) > maxPatternLen {
		return nil, fmt.Errorf("repository name longer than %d bytes", maxPatternLen)
	}
	if strings.ContainsAny(s, " \t\r\n") {
		return nil, errors.New("repository name contains white space")
	}
	p := &pattern{}
	name := s
	if n, d, ok := strings.Cut(name, "@"); ok {
		if strings.Contains(d, "*") {
			return nil, errors.New("a digest cannot hold a wildcard")
		}
		if _, err := digest.Parse(d); err != nil {
			return nil, fmt.Errorf("invalid digest %q: %w", d, err)
		}
		name, p.digest = n, d
	}
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name, p.tag = name[:i], name[i+1:]
		if !tagPatternRE.MatchString(p.tag) {
			return nil, fmt.Errorf("invalid tag %q", p.tag)
		}
	}
	if name == "*" {
		p.any = true
	} else {
		first, rest, hasSlash := strings.Cut(name, "/")
		switch {
		case !hasSlash:
			// A single element is a Docker Hub name, as for images. Something that looks like a
			// host here is almost certainly a mistake for "host/*".
			if strings.Contains(name, ".") {
				return nil, fmt.Errorf("%q has no '/', so it would name docker.io/library/%s; write %q to mean every repository on that host", name, name, name+"/*")
			}
			p.host, p.path = dockerHub, name
		case strings.ContainsAny(first, ".:") || first == "localhost" || strings.ToLower(first) != first:
			p.host, p.path = strings.ToLower(first), rest
		default:
			p.host, p.path = dockerHub, name
		}
		if p.host == legacyDockerHub {
			p.host = dockerHub
		}
		if p.host == dockerHub && !strings.Contains(p.path, "/") && p.path != "*" {
			p.path = "library/" + p.path
		}
		if p.path == "" {
			return nil, errors.New("empty repository path")
		}
		probe := strings.ReplaceAll(p.host+"/"+p.path, "*", "x")
		if _, err := reference.ParseNormalizedNamed(probe); err != nil {
			return nil, fmt.Errorf("not a valid image name pattern: %w", err)
		}
	}
	all := p.host + p.path + p.tag + p.digest
	p.wildcards = strings.Count(all, "*")
	if p.any {
		p.wildcards++
	}
	p.literal = len(all) - strings.Count(all, "*")
	p.exact = p.wildcards == 0
	return p, nil
}

// matches reports whether an image, already normalised, falls under the pattern.
func (p *pattern) matches(img reference.Named) bool {
	if !p.any {
		if !glob(p.host, strings.ToLower(reference.Domain(img))) || !glob(p.path, reference.Path(img)) {
			return false
		}
	}
	if p.tag != "" {
		t, ok := img.(reference.Tagged)
		if !ok || !glob(p.tag, t.Tag()) {
			return false
		}
	}
	if p.digest != "" {
		d, ok := img.(reference.Digested)
		if !ok || d.Digest().String() != p.digest {
			return false
		}
	}
	return true
}

// moreSpecific orders candidate matches: exact first, then more literal bytes, then fewer
// wildcards. Equal patterns are left in their original order by the caller.
func (p *pattern) moreSpecific(q *pattern) bool {
	if p.exact != q.exact {
		return p.exact
	}
	if p.literal != q.literal {
		return p.literal > q.literal
	}
	return p.wildcards < q.wildcards
}

// glob matches s against a pattern in which '*' stands for any run of bytes. It is the
// classic greedy matcher with one backtrack point, linear in practice and bounded by the
// lengths involved (both capped above).
func glob(pat, s string) bool {
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(pat) && pat[pi] == '*':
			star, mark = pi, si
			pi++
		case pi < len(pat) && pat[pi] == s[si]:
			pi++
			si++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(pat) && pat[pi] == '*' {
		pi++
	}
	return pi == len(pat)
}

// NormalizeImage parses an image reference the way Match does: Docker Hub short names are
// expanded, index.docker.io becomes docker.io, and a name with neither tag nor digest gets
// ":latest".
func NormalizeImage(image string) (reference.Named, error) {
	if len(image) > maxImageLen {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrInvalidImage, maxImageLen)
	}
	// "sha256:<hex>" parses as docker.io/library/sha256 with a tag; it is an image ID (CRI
	// passes those in CreateContainer) and must be resolved to a name by the caller.
	if imageIDRE.MatchString(image) {
		return nil, fmt.Errorf("%w %q: an image ID, not a name", ErrInvalidImage, image)
	}
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %v", ErrInvalidImage, image, err)
	}
	return reference.TagNameOnly(named), nil
}
