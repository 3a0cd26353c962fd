package derivation

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"ferry/nix/hash"
	"ferry/nix/storepath"
)

// Derivation is a store derivation. The zero value has no outputs and is
// not valid for hashing; Parse and ParseJSON return filled-in values.
//
// Maps and slices are owned by the Derivation; ATerm and the hashing
// functions only read them, so a Derivation may be read by many goroutines
// as long as none writes it.
type Derivation struct {
	// Name is the derivation name without ".drv", e.g. "hello-2.12".
	// Fixed output paths and the .drv path are computed from it.
	Name string
	// Outputs maps output names to outputs.
	Outputs map[string]Output
	// InputDrvs maps each input derivation to the output names used from
	// it (sorted, unique).
	InputDrvs map[storepath.Path][]string
	// InputSrcs are the input sources (sorted, unique).
	InputSrcs []storepath.Path
	// Platform is the system type, e.g. "x86_64-linux".
	Platform string
	// Builder is the program to run.
	Builder string
	// Args are the builder's arguments, in order.
	Args []string
	// Env is the builder's environment.
	Env map[string]string
}

// Output is one output of a derivation. Its Kind is determined by which
// fields are set (see Kind).
type Output struct {
	// Path is the output path, or "" when it is not known (deferred,
	// floating content-addressed, impure).
	Path storepath.Path
	// Method is how a content-addressed output is hashed: storepath.Flat
	// or storepath.Recursive ("r:" in ATerm). Unused when HashAlgo is 0.
	Method storepath.Method
	// HashAlgo is the hash algorithm of a content-addressed output, or 0
	// for an input-addressed or deferred one.
	HashAlgo hash.Algorithm
	// Hash is the expected hash of a fixed output; zero otherwise.
	Hash hash.Hash
	// Impure marks an impure output (experimental impure-derivations).
	Impure bool
}

// Kind is the kind of a derivation output (Nix's DerivationOutput variants).
type Kind uint8

// The output kinds.
const (
	InputAddressed Kind = iota // path known, computed from the inputs
	CAFixed                    // fixed-output: path from the expected hash
	CAFloating                 // content-addressed, path known after the build
	Deferred                   // input-addressed, path not computed yet
	Impure                     // impure, path known after the build
)

var kindNames = [...]string{"input-addressed", "fixed", "floating", "deferred", "impure"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", k)
}

// Kind reports which of Nix's output variants o is.
func (o Output) Kind() Kind {
	switch {
	case o.Impure:
		return Impure
	case o.HashAlgo != 0 && !o.Hash.IsZero():
		return CAFixed
	case o.HashAlgo != 0:
		return CAFloating
	case o.Path != "":
		return InputAddressed
	}
	return Deferred
}

// MethodAlgo returns the ATerm hashAlgo field: "" for input-addressed and
// deferred outputs, otherwise the method prefix ("r:" for recursive) and
// the algorithm, e.g. "r:sha256" (Nix's printMethodAlgo).
func (o Output) MethodAlgo() string {
	if o.HashAlgo == 0 {
		return ""
	}
	switch o.Method {
	case storepath.Recursive:
		return "r:" + o.HashAlgo.String()
	case storepath.Text:
		return "text:" + o.HashAlgo.String()
	}
	return o.HashAlgo.String()
}

// HashField returns the ATerm hash field: the bare base16 digest of a
// fixed output, "impure" for an impure one and "" otherwise.
func (o Output) HashField() string {
	switch o.Kind() {
	case CAFixed:
		return o.Hash.Hex()
	case Impure:
		return "impure"
	}
	return ""
}

// Fields returns the three strings that represent o in ATerm and on the
// wire (BasicDerivation): path, hashAlgo and hash. The path is printed as
// stored; masking is up to the caller.
func (o Output) Fields() (path, hashAlgo, hashField string) {
	return string(o.Path), o.MethodAlgo(), o.HashField()
}

// ParseOutput makes an Output from its three fields as they appear in
// ATerm and in the serve protocol's BasicDerivation (Nix's
// parseDerivationOutput). Paths must lie in dir.
func ParseOutput(dir storepath.Dir, path, hashAlgo, hashField string) (Output, error) {
	o, _, err := parseOutput(dir, path, hashAlgo, hashField)
	return o, err
}

// parseOutput also says which field was wrong (0 path, 1 hashAlgo, 2 hash).
func parseOutput(dir storepath.Dir, path, hashAlgo, hashField string) (Output, int, error) {
	var o Output
	if hashAlgo == "" {
		if hashField != "" {
			return o, 2, fmt.Errorf("output without hash algorithm has hash %q", hashField)
		}
		if path == "" {
			return o, 0, nil
		}
		p, err := dir.Parse(path)
		if err != nil {
			return o, 0, err
		}
		o.Path = p
		return o, 0, nil
	}
	m, a, err := parseMethodAlgo(hashAlgo)
	if err != nil {
		return o, 1, err
	}
	o.Method, o.HashAlgo = m, a
	switch hashField {
	case "impure":
		o.Impure = true
		if path != "" {
			return o, 0, fmt.Errorf("impure output has path %q", path)
		}
	case "":
		if path != "" {
			return o, 0, fmt.Errorf("floating content-addressed output has path %q", path)
		}
	default:
		h, err := hash.ParseNonSRIUnprefixed(hashField, a)
		if err != nil {
			return o, 2, err
		}
		o.Hash = h
		p, err := dir.Parse(path)
		if err != nil {
			return o, 0, err
		}
		o.Path = p
	}
	return o, 0, nil
}

// parseMethodAlgo parses "[r:]algo" (Nix 2.8's parseDerivationOutput).
func parseMethodAlgo(s string) (storepath.Method, hash.Algorithm, error) {
	m, algo := storepath.Flat, s
	if rest, ok := strings.CutPrefix(s, "r:"); ok {
		m, algo = storepath.Recursive, rest
	} else if strings.HasPrefix(s, "text:") {
		return 0, 0, fmt.Errorf("hash method in %q is not supported by Nix 2.8", s)
	}
	a, err := hash.ParseAlgorithm(algo)
	return m, a, err
}

// fixedPath computes the path of fixed output id of a derivation named
// drvName (DerivationOutput::CAFixed::path).
func (o Output) fixedPath(dir storepath.Dir, drvName, id string) (storepath.Path, error) {
	return dir.MakeFixedOutput(storepath.OutputPathName(drvName, id), o.Method, o.Hash, nil, false)
}

// Type is the type of a whole derivation (Nix's DerivationType).
type Type uint8

// The derivation types. All outputs of a derivation must be of one kind.
const (
	TypeInputAddressed Type = iota // all outputs InputAddressed
	TypeDeferred                   // all outputs Deferred
	TypeFixed                      // exactly one CAFixed output, "out"
	TypeFloating                   // all outputs CAFloating, one hash algorithm
	TypeImpure                     // all outputs Impure
)

// Type classifies d as Nix's BasicDerivation::type does, with its errors.
func (d *Derivation) Type() (Type, error) {
	var counts [5]int
	var floatAlgo hash.Algorithm
	for _, name := range sortedKeys(d.Outputs) {
		o := d.Outputs[name]
		k := o.Kind()
		counts[k]++
		if k == CAFloating {
			if floatAlgo == 0 {
				floatAlgo = o.HashAlgo
			} else if floatAlgo != o.HashAlgo {
				return 0, errors.New("all floating outputs must use the same hash type")
			}
		}
	}
	n := len(d.Outputs)
	switch {
	case n == 0:
		return 0, errors.New("must have at least one output")
	case counts[InputAddressed] == n:
		return TypeInputAddressed, nil
	case counts[CAFixed] == n:
		if n > 1 {
			return 0, errors.New("only one fixed output is allowed for now")
		}
		if _, ok := d.Outputs["out"]; !ok {
			return 0, errors.New(`single fixed output must be named "out"`)
		}
		return TypeFixed, nil
	case counts[CAFloating] == n:
		return TypeFloating, nil
	case counts[Deferred] == n:
		return TypeDeferred, nil
	case counts[Impure] == n:
		return TypeImpure, nil
	}
	return 0, errors.New("can't mix derivation output types")
}

// NameFromPath returns the derivation name of a .drv path: its name
// without ".drv".
func NameFromPath(drvPath storepath.Path) (string, error) {
	n, ok := strings.CutSuffix(drvPath.Name(), ".drv")
	if !ok {
		return "", fmt.Errorf("derivation name of %s: not a .drv path", drvPath)
	}
	return n, nil
}

// References returns the references of the .drv file: the input sources
// and the input derivations, sorted. Outputs are not references.
func (d *Derivation) References() []storepath.Path {
	refs := make([]storepath.Path, 0, len(d.InputSrcs)+len(d.InputDrvs))
	refs = append(refs, d.InputSrcs...)
	for p := range d.InputDrvs {
		refs = append(refs, p)
	}
	storepath.Sort(refs)
	// inputSrcs and inputDrvs may overlap; a StorePathSet holds each once.
	out := refs[:0]
	for i, p := range refs {
		if i == 0 || p != refs[i-1] {
			out = append(out, p)
		}
	}
	return out
}

// Path returns the store path of the .drv file in dir (Nix's
// writeDerivation): a text path named Name+".drv" over the ATerm, with
// References as references.
func (d *Derivation) Path(dir storepath.Dir) (storepath.Path, error) {
	if d.Name == "" {
		return "", errors.New("compute derivation path: derivation has no name")
	}
	p, err := dir.MakeText(d.Name+".drv", hash.Sum(hash.SHA256, d.ATerm()), d.References())
	if err != nil {
		return "", fmt.Errorf("compute derivation path: %w", err)
	}
	return p, nil
}

// OutputPaths returns the known output paths by output name. Deferred,
// floating and impure outputs are left out.
func (d *Derivation) OutputPaths() map[string]storepath.Path {
	m := make(map[string]storepath.Path, len(d.Outputs))
	for name, o := range d.Outputs {
		if o.Path != "" {
			m[name] = o.Path
		}
	}
	return m
}

// OutputNames returns the output names, sorted.
func (d *Derivation) OutputNames() []string { return sortedKeys(d.Outputs) }

// Clone returns a deep copy of d.
func (d *Derivation) Clone() *Derivation {
	c := *d
	c.Outputs = make(map[string]Output, len(d.Outputs))
	for k, v := range d.Outputs {
		c.Outputs[k] = v
	}
	c.InputDrvs = make(map[storepath.Path][]string, len(d.InputDrvs))
	for k, v := range d.InputDrvs {
		c.InputDrvs[k] = append([]string(nil), v...)
	}
	c.InputSrcs = append([]storepath.Path(nil), d.InputSrcs...)
	c.Args = append([]string(nil), d.Args...)
	c.Env = make(map[string]string, len(d.Env))
	for k, v := range d.Env {
		c.Env[k] = v
	}
	return &c
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
