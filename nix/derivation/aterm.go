package derivation

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strconv"

	"ferry/nix/storepath"
)

// MaxSize is the largest .drv file Parse accepts (64 MiB). Real
// derivations, even with large structured attributes, are far smaller.
const MaxSize = 64 << 20

// ErrSyntax is wrapped by every error Parse returns for malformed input.
var ErrSyntax = errors.New("malformed derivation")

// SyntaxError reports where and why Parse rejected its input.
type SyntaxError struct {
	Offset int    // byte offset of the problem in the input
	Msg    string // what was expected or wrong
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("parse derivation: offset %d: %s", e.Offset, e.Msg)
}

// Unwrap makes errors.Is(err, ErrSyntax) true.
func (e *SyntaxError) Unwrap() error { return ErrSyntax }

// Parse parses the ATerm text of a .drv file in the default store
// directory. name is the derivation name (the .drv file's name without
// ".drv"); if it is "", the "name" environment variable is used.
func Parse(data []byte, name string) (*Derivation, error) {
	return ParseIn(storepath.DefaultDir, data, name)
}

// ParseIn is Parse for derivations whose paths lie in store directory dir.
func ParseIn(dir storepath.Dir, data []byte, name string) (*Derivation, error) {
	return parse(dir, data, name, MaxSize)
}

func parse(dir storepath.Dir, data []byte, name string, limit int) (*Derivation, error) {
	if len(data) > limit {
		return nil, &SyntaxError{limit, fmt.Sprintf("input is %d bytes, more than the limit of %d", len(data), limit)}
	}
	p := &parser{data: data, dir: dir}
	d, err := p.derivation()
	if err != nil {
		return nil, err
	}
	if name == "" {
		name = d.Env["name"]
	}
	d.Name = name
	// A fixed output's path is not free: Nix 2.8 recomputes it from the
	// hash and prints that, so a mismatch would not round-trip.
	if name != "" {
		for _, id := range sortedKeys(d.Outputs) {
			o := d.Outputs[id]
			if o.Kind() != CAFixed {
				continue
			}
			want, err := o.fixedPath(dir, name, id)
			if err != nil {
				return nil, fmt.Errorf("parse derivation: fixed output %q: %w", id, err)
			}
			if want != o.Path {
				return nil, fmt.Errorf("parse derivation: %w: fixed output %q has path %s, but its hash gives %s", ErrSyntax, id, o.Path, want)
			}
		}
	}
	return d, nil
}

type parser struct {
	data []byte
	pos  int
	dir  storepath.Dir
}

func (p *parser) errf(off int, format string, args ...any) error {
	return &SyntaxError{off, fmt.Sprintf(format, args...)}
}

// found describes the input at the current position for an error message.
func (p *parser) found() string {
	if p.pos >= len(p.data) {
		return "end of input"
	}
	rest := p.data[p.pos:]
	if len(rest) > 16 {
		return strconv.Quote(string(rest[:16])) + "..."
	}
	return strconv.Quote(string(rest))
}

func (p *parser) expect(s, what string) error {
	if !bytes.HasPrefix(p.data[p.pos:], []byte(s)) {
		return p.errf(p.pos, "expected %q %s, found %s", s, what, p.found())
	}
	p.pos += len(s)
	return nil
}

// next reports whether a list continues with another element: it consumes
// "," (continue) or "]" (end). first is true for the first element, where
// no comma is allowed.
func (p *parser) next(first bool, what string) (bool, error) {
	if p.pos >= len(p.data) {
		return false, p.errf(p.pos, "unexpected end of input in %s", what)
	}
	c := p.data[p.pos]
	if c == ']' {
		p.pos++
		return false, nil
	}
	if first {
		return true, nil
	}
	if c != ',' {
		return false, p.errf(p.pos, "expected ',' or ']' in %s, found %s", what, p.found())
	}
	p.pos++
	return true, nil
}

// str parses a quoted string. With escaped, the escapes Nix's printString
// writes are decoded; otherwise the string must be raw (printUnquotedString).
func (p *parser) str(escaped bool, what string) (string, error) {
	start := p.pos
	if p.pos >= len(p.data) || p.data[p.pos] != '"' {
		return "", p.errf(p.pos, "expected '\"' to start %s, found %s", what, p.found())
	}
	p.pos++
	i := p.pos
	// Fast path: no escapes.
	for i < len(p.data) {
		c := p.data[i]
		if c == '"' {
			s := string(p.data[p.pos:i])
			p.pos = i + 1
			return s, nil
		}
		if c == '\\' {
			break
		}
		if escaped && (c == '\n' || c == '\r' || c == '\t') {
			return "", p.errf(i, "raw control character %q in %s (Nix escapes it)", c, what)
		}
		i++
	}
	if i >= len(p.data) {
		return "", p.errf(start, "unterminated string in %s", what)
	}
	if !escaped {
		return "", p.errf(i, "backslash in %s, which Nix prints without escapes", what)
	}
	buf := make([]byte, 0, i-p.pos+16)
	buf = append(buf, p.data[p.pos:i]...)
	for i < len(p.data) {
		c := p.data[i]
		switch {
		case c == '"':
			p.pos = i + 1
			return string(buf), nil
		case c == '\\':
			if i+1 >= len(p.data) {
				return "", p.errf(start, "unterminated string in %s", what)
			}
			switch e := p.data[i+1]; e {
			case '"', '\\':
				buf = append(buf, e)
			case 'n':
				buf = append(buf, '\n')
			case 'r':
				buf = append(buf, '\r')
			case 't':
				buf = append(buf, '\t')
			default:
				return "", p.errf(i, "bad escape %q in %s", "\\"+string(rune(e)), what)
			}
			i += 2
		case c == '\n' || c == '\r' || c == '\t':
			return "", p.errf(i, "raw control character %q in %s (Nix escapes it)", c, what)
		default:
			buf = append(buf, c)
			i++
		}
	}
	return "", p.errf(start, "unterminated string in %s", what)
}

func (p *parser) path(what string) (storepath.Path, error) {
	off := p.pos
	s, err := p.str(false, what)
	if err != nil {
		return "", err
	}
	sp, err := p.dir.Parse(s)
	if err != nil {
		return "", p.errf(off+1, "%s: %v", what, err)
	}
	return sp, nil
}

func (p *parser) derivation() (*Derivation, error) {
	if bytes.HasPrefix(p.data, []byte("DrvWithVersion(")) {
		return nil, p.errf(0, "DrvWithVersion derivations (dynamic derivations, Nix 2.18 and later) are not supported by Nix 2.8")
	}
	if err := p.expect("Derive(", "at the start of a derivation"); err != nil {
		return nil, err
	}
	d := &Derivation{
		Outputs:   map[string]Output{},
		InputDrvs: map[storepath.Path][]string{},
		Env:       map[string]string{},
	}
	if err := p.outputs(d); err != nil {
		return nil, err
	}
	if err := p.inputDrvs(d); err != nil {
		return nil, err
	}
	if err := p.expect(",[", "before the input sources"); err != nil {
		return nil, err
	}
	for first := true; ; first = false {
		more, err := p.next(first, "input sources")
		if err != nil {
			return nil, err
		}
		if !more {
			break
		}
		off := p.pos
		sp, err := p.path("input source")
		if err != nil {
			return nil, err
		}
		d.InputSrcs = append(d.InputSrcs, sp)
		if n := len(d.InputSrcs); n > 1 && d.InputSrcs[n-2] == sp {
			return nil, p.errf(off, "duplicate input source %s", sp)
		}
	}
	if !sort.SliceIsSorted(d.InputSrcs, func(i, j int) bool { return d.InputSrcs[i] < d.InputSrcs[j] }) {
		storepath.Sort(d.InputSrcs)
		for i := 1; i < len(d.InputSrcs); i++ {
			if d.InputSrcs[i] == d.InputSrcs[i-1] {
				return nil, p.errf(p.pos, "duplicate input source %s", d.InputSrcs[i])
			}
		}
	}
	var err error
	if err = p.expect(",", "before the platform"); err != nil {
		return nil, err
	}
	if d.Platform, err = p.str(false, "platform"); err != nil {
		return nil, err
	}
	if err = p.expect(",", "before the builder"); err != nil {
		return nil, err
	}
	if d.Builder, err = p.str(true, "builder"); err != nil {
		return nil, err
	}
	if err = p.expect(",[", "before the arguments"); err != nil {
		return nil, err
	}
	for first := true; ; first = false {
		more, err := p.next(first, "arguments")
		if err != nil {
			return nil, err
		}
		if !more {
			break
		}
		a, err := p.str(true, "argument")
		if err != nil {
			return nil, err
		}
		d.Args = append(d.Args, a)
	}
	if err = p.expect(",[", "before the environment"); err != nil {
		return nil, err
	}
	for first := true; ; first = false {
		more, err := p.next(first, "environment")
		if err != nil {
			return nil, err
		}
		if !more {
			break
		}
		off := p.pos
		if err := p.expect("(", "to start an environment variable"); err != nil {
			return nil, err
		}
		k, err := p.str(true, "environment variable name")
		if err != nil {
			return nil, err
		}
		if err := p.expect(",", "after an environment variable name"); err != nil {
			return nil, err
		}
		v, err := p.str(true, "environment variable value")
		if err != nil {
			return nil, err
		}
		if err := p.expect(")", "to end an environment variable (a pair)"); err != nil {
			return nil, err
		}
		if _, dup := d.Env[k]; dup {
			return nil, p.errf(off, "duplicate environment variable %q", k)
		}
		d.Env[k] = v
	}
	if err := p.expect(")", "to end the derivation"); err != nil {
		return nil, err
	}
	if p.pos != len(p.data) {
		return nil, p.errf(p.pos, "trailing data after the derivation: %s", p.found())
	}
	return d, nil
}

func (p *parser) outputs(d *Derivation) error {
	if err := p.expect("[", "to start the outputs"); err != nil {
		return err
	}
	for first := true; ; first = false {
		more, err := p.next(first, "outputs")
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
		off := p.pos
		if err := p.expect("(", "to start an output"); err != nil {
			return err
		}
		id, err := p.str(false, "output name")
		if err != nil {
			return err
		}
		var fields [3]string
		var offs [3]int
		whats := [3]string{"output path", "output hash algorithm", "output hash"}
		for i, what := range whats {
			if err := p.expect(",", "before the "+what); err != nil {
				return err
			}
			offs[i] = p.pos
			if fields[i], err = p.str(false, what); err != nil {
				return err
			}
		}
		if err := p.expect(")", "to end an output (a 4-tuple)"); err != nil {
			return err
		}
		if id == "" {
			return p.errf(off+1, "empty output name")
		}
		if _, dup := d.Outputs[id]; dup {
			return p.errf(off, "duplicate output %q", id)
		}
		o, which, err := parseOutput(p.dir, fields[0], fields[1], fields[2])
		if err != nil {
			return p.errf(offs[which], "%s of output %q: %v", whats[which], id, err)
		}
		d.Outputs[id] = o
	}
}

func (p *parser) inputDrvs(d *Derivation) error {
	if err := p.expect(",[", "before the input derivations"); err != nil {
		return err
	}
	for first := true; ; first = false {
		more, err := p.next(first, "input derivations")
		if err != nil {
			return err
		}
		if !more {
			return nil
		}
		off := p.pos
		if err := p.expect("(", "to start an input derivation"); err != nil {
			return err
		}
		drvOff := p.pos + 1
		dp, err := p.path("input derivation")
		if err != nil {
			return err
		}
		if !dp.IsDerivation() {
			return p.errf(drvOff, "input derivation %s does not end in .drv", dp)
		}
		if p.pos+1 < len(p.data) && bytes.HasPrefix(p.data[p.pos:], []byte(",(")) {
			return p.errf(p.pos+1, "expected '[' with the output names of %s, found a dynamic-derivation node (Nix 2.18 and later)", dp)
		}
		if err := p.expect(",[", "before the output names of an input derivation"); err != nil {
			return err
		}
		var names []string
		seen := map[string]bool{}
		for first := true; ; first = false {
			more, err := p.next(first, "output names of "+string(dp))
			if err != nil {
				return err
			}
			if !more {
				break
			}
			noff := p.pos
			n, err := p.str(false, "output name")
			if err != nil {
				return err
			}
			if seen[n] {
				return p.errf(noff, "duplicate output name %q of %s", n, dp)
			}
			seen[n] = true
			names = append(names, n)
		}
		sort.Strings(names)
		if err := p.expect(")", "to end an input derivation (a pair)"); err != nil {
			return err
		}
		if _, dup := d.InputDrvs[dp]; dup {
			return p.errf(off, "duplicate input derivation %s", dp)
		}
		if names == nil {
			names = []string{}
		}
		d.InputDrvs[dp] = names
	}
}

// ATerm returns the .drv file contents of d, byte for byte what Nix's
// Derivation::unparse prints with maskOutputs=false. Outputs, input
// derivations, input sources, output names and env are printed sorted;
// args keep their order. Output paths are printed as stored (run
// FillOutputPaths first for a derivation built in memory).
func (d *Derivation) ATerm() []byte {
	return d.unparse(false, nil)
}

// unparse is Derivation::unparse. With mask, output paths and env vars
// named like an output are printed empty. With inputs non-nil, the input
// derivations are replaced by inputs (hex modulo hash -> output names).
func (d *Derivation) unparse(mask bool, inputs map[string][]string) []byte {
	b := make([]byte, 0, d.sizeHint())
	b = append(b, "Derive(["...)
	for i, id := range sortedKeys(d.Outputs) {
		o := d.Outputs[id]
		if i > 0 {
			b = append(b, ',')
		}
		path, algo, h := o.Fields()
		if mask {
			path = ""
		}
		b = append(b, '(')
		b = appendRaw(b, id)
		b = append(b, ',')
		b = appendRaw(b, path)
		b = append(b, ',')
		b = appendRaw(b, algo)
		b = append(b, ',')
		b = appendRaw(b, h)
		b = append(b, ')')
	}
	b = append(b, "],["...)
	appendInput := func(i int, key string, names []string) {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '(')
		b = appendRaw(b, key)
		b = append(b, ",["...)
		for j, n := range names {
			if j > 0 {
				b = append(b, ',')
			}
			b = appendRaw(b, n)
		}
		b = append(b, "])"...)
	}
	if inputs != nil {
		for i, k := range sortedKeys(inputs) {
			appendInput(i, k, sortedUnique(inputs[k]))
		}
	} else {
		keys := make([]string, 0, len(d.InputDrvs))
		for k := range d.InputDrvs {
			keys = append(keys, string(k))
		}
		sort.Strings(keys)
		for i, k := range keys {
			appendInput(i, k, sortedUnique(d.InputDrvs[storepath.Path(k)]))
		}
	}
	b = append(b, "],["...)
	srcs := append([]storepath.Path(nil), d.InputSrcs...)
	sort.Slice(srcs, func(i, j int) bool { return srcs[i] < srcs[j] })
	for i, s := range srcs {
		if i > 0 && s == srcs[i-1] {
			continue
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = appendRaw(b, string(s))
	}
	b = append(b, "],"...)
	b = appendRaw(b, d.Platform)
	b = append(b, ',')
	b = appendEscaped(b, d.Builder)
	b = append(b, ",["...)
	for i, a := range d.Args {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendEscaped(b, a)
	}
	b = append(b, "],["...)
	for i, k := range sortedKeys(d.Env) {
		if i > 0 {
			b = append(b, ',')
		}
		v := d.Env[k]
		if mask {
			if _, isOut := d.Outputs[k]; isOut {
				v = ""
			}
		}
		b = append(b, '(')
		b = appendEscaped(b, k)
		b = append(b, ',')
		b = appendEscaped(b, v)
		b = append(b, ')')
	}
	b = append(b, "])"...)
	return b
}

func (d *Derivation) sizeHint() int {
	n := 64 + len(d.Platform) + len(d.Builder)
	for k, o := range d.Outputs {
		n += 16 + len(k) + len(o.Path) + 140
	}
	for k, v := range d.InputDrvs {
		n += 8 + len(k)
		for _, s := range v {
			n += 3 + len(s)
		}
	}
	for _, s := range d.InputSrcs {
		n += 3 + len(s)
	}
	for _, a := range d.Args {
		n += 3 + len(a)
	}
	for k, v := range d.Env {
		n += 6 + len(k) + len(v) + len(v)/16
	}
	return n
}

func sortedUnique(ss []string) []string {
	if sort.StringsAreSorted(ss) {
		dup := false
		for i := 1; i < len(ss); i++ {
			if ss[i] == ss[i-1] {
				dup = true
				break
			}
		}
		if !dup {
			return ss
		}
	}
	c := append([]string(nil), ss...)
	sort.Strings(c)
	out := c[:0]
	for i, s := range c {
		if i == 0 || s != c[i-1] {
			out = append(out, s)
		}
	}
	return out
}

// appendRaw is Nix's printUnquotedString.
func appendRaw(b []byte, s string) []byte {
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendEscaped is Nix's printString.
func appendEscaped(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
