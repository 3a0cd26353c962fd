package derivation

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"ferry/nix/hash"
	"ferry/nix/storepath"
)

// MarshalShowJSON prints drvs exactly as `nix show-derivation` (Nix 2.8)
// does: a pretty-printed object (two-space indent) keyed by .drv path in
// path order, each value with outputs, inputSrcs, inputDrvs, system,
// builder, args and env, followed by a newline. Strings are escaped as
// Nix's toJSON does (", \, \n, \r, \t, other bytes below 0x20 as \u00XX,
// everything else raw). A fixed output without a path is printed with the
// path its hash gives in the .drv path's store directory.
func MarshalShowJSON(drvs map[storepath.Path]*Derivation) ([]byte, error) {
	paths := make([]string, 0, len(drvs))
	for p := range drvs {
		paths = append(paths, string(p))
	}
	sort.Strings(paths)
	w := &jsonWriter{}
	w.open('{')
	for _, p := range paths {
		d := drvs[storepath.Path(p)]
		w.key(p)
		if err := w.derivation(storepath.Path(p), d); err != nil {
			return nil, err
		}
	}
	w.close('}')
	w.b.WriteByte('\n')
	return w.b.Bytes(), nil
}

// ShowJSON is MarshalShowJSON for the single derivation d stored at drvPath.
func (d *Derivation) ShowJSON(drvPath storepath.Path) ([]byte, error) {
	return MarshalShowJSON(map[storepath.Path]*Derivation{drvPath: d})
}

// jsonWriter mimics Nix 2.8's JSONObject/JSONList with indent=true.
type jsonWriter struct {
	b     bytes.Buffer
	depth int
	first []bool
}

func (w *jsonWriter) open(c byte) {
	w.b.WriteByte(c)
	w.depth++
	w.first = append(w.first, true)
}

func (w *jsonWriter) close(c byte) {
	empty := w.first[len(w.first)-1]
	w.first = w.first[:len(w.first)-1]
	w.depth--
	if !empty {
		w.newline()
	}
	w.b.WriteByte(c)
}

func (w *jsonWriter) newline() {
	w.b.WriteByte('\n')
	for i := 0; i < w.depth; i++ {
		w.b.WriteString("  ")
	}
}

// elem starts a list element or object entry.
func (w *jsonWriter) elem() {
	if !w.first[len(w.first)-1] {
		w.b.WriteByte(',')
	}
	w.first[len(w.first)-1] = false
	w.newline()
}

func (w *jsonWriter) key(k string) {
	w.elem()
	w.str(k)
	w.b.WriteString(": ")
}

func (w *jsonWriter) attr(k, v string) {
	w.key(k)
	w.str(v)
}

func (w *jsonWriter) list(k string, vs []string) {
	w.key(k)
	w.open('[')
	for _, v := range vs {
		w.elem()
		w.str(v)
	}
	w.close(']')
}

// str is Nix 2.8's toJSON for strings (src/libutil/json.cc).
func (w *jsonWriter) str(s string) {
	const hexDigits = "0123456789abcdef"
	w.b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			w.b.WriteByte('\\')
			w.b.WriteByte(c)
		case c == '\n':
			w.b.WriteString(`\n`)
		case c == '\r':
			w.b.WriteString(`\r`)
		case c == '\t':
			w.b.WriteString(`\t`)
		case c < 0x20:
			w.b.WriteString(`\u00`)
			w.b.WriteByte(hexDigits[c>>4])
			w.b.WriteByte(hexDigits[c&15])
		default:
			w.b.WriteByte(c)
		}
	}
	w.b.WriteByte('"')
}

func (w *jsonWriter) derivation(drvPath storepath.Path, d *Derivation) error {
	w.open('{')
	w.key("outputs")
	w.open('{')
	for _, id := range sortedKeys(d.Outputs) {
		o := d.Outputs[id]
		w.key(id)
		w.open('{')
		switch o.Kind() {
		case InputAddressed:
			w.attr("path", string(o.Path))
		case CAFixed:
			p := o.Path
			if p == "" {
				var err error
				if p, err = o.fixedPath(drvPath.Dir(), d.Name, id); err != nil {
					return fmt.Errorf("print derivation %s as JSON: %w", drvPath, err)
				}
			}
			w.attr("path", string(p))
			w.attr("hashAlgo", o.MethodAlgo())
			w.attr("hash", o.Hash.Hex())
		case CAFloating:
			w.attr("hashAlgo", o.MethodAlgo())
		case Impure:
			w.attr("hashAlgo", o.MethodAlgo())
			w.key("impure")
			w.b.WriteString("true")
		}
		w.close('}')
	}
	w.close('}')

	srcs := make([]string, 0, len(d.InputSrcs))
	for _, s := range d.InputSrcs {
		srcs = append(srcs, string(s))
	}
	w.list("inputSrcs", sortedUnique(srcs))

	w.key("inputDrvs")
	w.open('{')
	drvs := make([]string, 0, len(d.InputDrvs))
	for p := range d.InputDrvs {
		drvs = append(drvs, string(p))
	}
	sort.Strings(drvs)
	for _, p := range drvs {
		w.list(p, sortedUnique(d.InputDrvs[storepath.Path(p)]))
	}
	w.close('}')

	w.attr("system", d.Platform)
	w.attr("builder", d.Builder)
	w.list("args", d.Args)
	w.key("env")
	w.open('{')
	for _, k := range sortedKeys(d.Env) {
		w.attr(k, d.Env[k])
	}
	w.close('}')
	w.close('}')
	return nil
}

// jsonDrv is the union of the 2.8 `nix show-derivation` shape and the
// version-4 shape of current Nix.
type jsonDrv struct {
	Outputs   map[string]jsonOutput `json:"outputs"`
	InputSrcs []string              `json:"inputSrcs"`
	InputDrvs map[string][]string   `json:"inputDrvs"`
	System    *string               `json:"system"`
	Builder   *string               `json:"builder"`
	Args      []string              `json:"args"`
	Env       map[string]string     `json:"env"`

	// version 4 only
	Name    string `json:"name"`
	Version *int   `json:"version"`
	Inputs  *struct {
		Srcs []string `json:"srcs"`
		Drvs map[string]struct {
			Outputs        []string        `json:"outputs"`
			DynamicOutputs json.RawMessage `json:"dynamicOutputs"`
		} `json:"drvs"`
	} `json:"inputs"`
}

type jsonOutput struct {
	Path     string `json:"path"`
	HashAlgo string `json:"hashAlgo"`
	Hash     string `json:"hash"`
	Impure   bool   `json:"impure"`
	Method   string `json:"method"` // version 4
}

// ParseJSON reads one derivation in the JSON shape of `nix show-derivation`
// 2.8: either the object keyed by its .drv path (exactly one entry; the
// name comes from the path) or the bare derivation object (the name comes
// from env "name"). Output paths may be missing: a fixed output's path is
// computed from its hash, an input-addressed output without a path becomes
// Deferred, for FillOutputPaths to compute. Paths lie in the default store
// directory (ParseJSONIn for another).
//
// The version-4 shape of current Nix ("inputs", "name", base-name paths,
// SRI hashes with "method") is accepted too, except dynamic outputs.
//
// Strings go through encoding/json, so bytes that are not UTF-8 (which Nix
// prints raw) come back as U+FFFD.
func ParseJSON(data []byte) (*Derivation, error) {
	return ParseJSONIn(storepath.DefaultDir, data)
}

// ParseJSONIn is ParseJSON for derivations whose paths lie in store
// directory dir.
func ParseJSONIn(dir storepath.Dir, data []byte) (*Derivation, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("parse derivation JSON: %w", err)
	}
	name := ""
	body := data
	if len(top) == 1 {
		for k, v := range top {
			if strings.HasPrefix(k, "/") {
				p, err := dir.Parse(k)
				if err != nil {
					return nil, fmt.Errorf("parse derivation JSON: %w", err)
				}
				if name, err = NameFromPath(p); err != nil {
					return nil, fmt.Errorf("parse derivation JSON: %w", err)
				}
				body = v
			}
		}
	} else if len(top) > 1 {
		if _, ok := top["outputs"]; !ok {
			return nil, fmt.Errorf("parse derivation JSON: %d derivations, want one", len(top))
		}
	}
	d, err := parseJSONBody(dir, body, name)
	if err != nil {
		return nil, fmt.Errorf("parse derivation JSON: %w", err)
	}
	return d, nil
}

func parseJSONBody(dir storepath.Dir, data []byte, name string) (*Derivation, error) {
	var j jsonDrv
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return nil, err
	}
	if j.System == nil || j.Builder == nil || j.Outputs == nil {
		return nil, errors.New("missing outputs, system or builder")
	}
	v4 := j.Version != nil
	if v4 && *j.Version != 4 {
		return nil, fmt.Errorf("unsupported version %d", *j.Version)
	}
	abs := func(s string) (storepath.Path, error) {
		if v4 {
			return dir.Join(s)
		}
		return dir.Parse(s)
	}
	d := &Derivation{
		Outputs:   map[string]Output{},
		InputDrvs: map[storepath.Path][]string{},
		Platform:  *j.System,
		Builder:   *j.Builder,
		Env:       j.Env,
	}
	if len(j.Args) > 0 {
		d.Args = j.Args // nil when empty, as Parse leaves it
	}
	if d.Env == nil {
		d.Env = map[string]string{}
	}
	switch {
	case name != "":
		d.Name = name
	case v4 && j.Name != "":
		d.Name = j.Name
	default:
		d.Name = d.Env["name"]
	}
	srcs, drvs := j.InputSrcs, j.InputDrvs
	if v4 {
		if j.Inputs == nil {
			return nil, errors.New("missing inputs")
		}
		srcs = j.Inputs.Srcs
		drvs = map[string][]string{}
		for p, in := range j.Inputs.Drvs {
			if dyn := bytes.TrimSpace(in.DynamicOutputs); len(dyn) > 0 && !bytes.Equal(dyn, []byte("{}")) {
				return nil, fmt.Errorf("input %s has dynamic outputs, which Nix 2.8 does not support", p)
			}
			drvs[p] = in.Outputs
		}
	}
	for _, s := range srcs {
		p, err := abs(s)
		if err != nil {
			return nil, err
		}
		d.InputSrcs = append(d.InputSrcs, p)
	}
	storepath.Sort(d.InputSrcs)
	for i := 1; i < len(d.InputSrcs); i++ {
		if d.InputSrcs[i] == d.InputSrcs[i-1] {
			return nil, fmt.Errorf("duplicate input source %s", d.InputSrcs[i])
		}
	}
	for s, outs := range drvs {
		p, err := abs(s)
		if err != nil {
			return nil, err
		}
		if !p.IsDerivation() {
			return nil, fmt.Errorf("input derivation %s does not end in .drv", p)
		}
		d.InputDrvs[p] = sortedUnique(append([]string{}, outs...))
	}
	for id, jo := range j.Outputs {
		o, err := jo.output(dir, v4)
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", id, err)
		}
		if o.Kind() == CAFixed {
			if d.Name == "" {
				return nil, errors.New("fixed output but no derivation name")
			}
			want, err := o.fixedPath(dir, d.Name, id)
			if err != nil {
				return nil, fmt.Errorf("output %q: %w", id, err)
			}
			if o.Path != "" && o.Path != want {
				return nil, fmt.Errorf("fixed output %q has path %s, but its hash gives %s", id, o.Path, want)
			}
			o.Path = want
		}
		d.Outputs[id] = o
	}
	return d, nil
}

func (jo jsonOutput) output(dir storepath.Dir, v4 bool) (Output, error) {
	if !v4 {
		if jo.Method != "" {
			return Output{}, errors.New(`unexpected "method" in a Nix 2.8 output`)
		}
		h := jo.Hash
		if jo.Impure {
			if h != "" {
				return Output{}, errors.New("impure output with a hash")
			}
			h = "impure"
		}
		if jo.HashAlgo != "" && h != "" && h != "impure" {
			// The path of a fixed output is optional; the caller computes
			// and checks it.
			m, a, err := parseMethodAlgo(jo.HashAlgo)
			if err != nil {
				return Output{}, err
			}
			hh, err := hash.ParseNonSRIUnprefixed(h, a)
			if err != nil {
				return Output{}, err
			}
			o := Output{Method: m, HashAlgo: a, Hash: hh}
			if jo.Path != "" {
				if o.Path, err = dir.Parse(jo.Path); err != nil {
					return Output{}, err
				}
			}
			return o, nil
		}
		return ParseOutput(dir, jo.Path, jo.HashAlgo, h)
	}
	var o Output
	switch jo.Method {
	case "":
		if jo.Hash != "" || jo.HashAlgo != "" || jo.Impure {
			return o, errors.New(`content-addressed output without "method"`)
		}
		if jo.Path != "" {
			p, err := dir.Join(jo.Path)
			if err != nil {
				return o, err
			}
			o.Path = p
		}
		return o, nil
	case "flat":
		o.Method = storepath.Flat
	case "nar":
		o.Method = storepath.Recursive
	default:
		return o, fmt.Errorf("method %q is not supported by Nix 2.8", jo.Method)
	}
	if jo.Path != "" {
		return o, errors.New("content-addressed output with a path")
	}
	if jo.Hash != "" {
		h, err := hash.Parse(jo.Hash)
		if err != nil {
			return o, err
		}
		o.Hash, o.HashAlgo = h, h.Algorithm()
		return o, nil
	}
	a, err := hash.ParseAlgorithm(jo.HashAlgo)
	if err != nil {
		return o, err
	}
	o.HashAlgo, o.Impure = a, jo.Impure
	return o, nil
}
