// Package storepath owns the syntax of Nix store paths and every way Nix
// computes one: text paths, source paths (with references and self),
// fixed-output paths and derivation outputs (docs/store.md §1.4 and §2;
// src/libstore/path.cc and store-api.cc).
//
// A Path is a validated absolute path such as
// /nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt. The store
// directory is a Dir, normally DefaultDir; a store rooted somewhere else on
// disk (--store /some/dir) keeps /nix/store as its logical Dir.
package storepath

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"

	"ferry/nix/hash"
	"ferry/nix/nixbase32"
)

// DefaultDir is the logical store directory of every ordinary Nix store.
const DefaultDir Dir = "/nix/store"

// HashLen is the length of the nix32 hash part of a store path.
const HashLen = 32

// MaxNameLen is the longest name Nix accepts.
const MaxNameLen = 211

// ErrInvalid is wrapped by every parse error.
var ErrInvalid = errors.New("invalid store path")

// Dir is a logical store directory: absolute, clean, no trailing slash.
type Dir string

// Path is a store path in its printed form, SD/hashpart-name. The zero
// Path is empty and invalid; values from Parse are valid.
type Path string

// Parse parses an absolute store path in DefaultDir.
func Parse(s string) (Path, error) { return DefaultDir.Parse(s) }

// Parse parses an absolute path, which must lie directly in d, after
// cleaning it as Nix's canonPath does.
func (d Dir) Parse(s string) (Path, error) {
	if !strings.HasPrefix(s, "/") {
		return "", fmt.Errorf("parse store path %q: %w: not absolute", s, ErrInvalid)
	}
	c := path.Clean(s)
	dir, base := path.Split(c)
	if strings.TrimSuffix(dir, "/") != string(d) {
		return "", fmt.Errorf("parse store path %q: %w: not in the Nix store %s", s, ErrInvalid, d)
	}
	if err := ValidateBase(base); err != nil {
		return "", fmt.Errorf("parse store path %q: %w", s, err)
	}
	return Path(c), nil
}

// Join makes the path of base name base in d, validating base.
func (d Dir) Join(base string) (Path, error) {
	if err := ValidateBase(base); err != nil {
		return "", fmt.Errorf("parse store path %q: %w", base, err)
	}
	return Path(string(d) + "/" + base), nil
}

// ValidateBase checks a base name "hashpart-name".
func ValidateBase(base string) error {
	if len(base) < HashLen+2 {
		return fmt.Errorf("%w: %q is too short", ErrInvalid, base)
	}
	if err := nixbase32.ValidateString(base[:HashLen]); err != nil {
		return fmt.Errorf("%w: hash part %q: %v", ErrInvalid, base[:HashLen], err)
	}
	if base[HashLen] != '-' {
		return fmt.Errorf("%w: no '-' after the hash part of %q", ErrInvalid, base)
	}
	return ValidateName(base[HashLen+1:])
}

// ValidateName checks a store path name as current Nix does: 1 to 211
// bytes of [0-9a-zA-Z+-._?=], and not ".", "..", or starting ".-" or "..-".
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty name", ErrInvalid)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: name %.20q... is %d bytes, longer than %d", ErrInvalid, name, len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.IndexByte("+-._?=", c) >= 0) {
			return fmt.Errorf("%w: name %q has the illegal character %q", ErrInvalid, name, c)
		}
	}
	if name == "." || name == ".." || strings.HasPrefix(name, ".-") || strings.HasPrefix(name, "..-") {
		return fmt.Errorf("%w: name %q is not allowed", ErrInvalid, name)
	}
	return nil
}

// String returns p as printed.
func (p Path) String() string { return string(p) }

// Base returns "hashpart-name".
func (p Path) Base() string { return path.Base(string(p)) }

// Dir returns the store directory p lies in.
func (p Path) Dir() Dir { return Dir(path.Dir(string(p))) }

// HashPart returns the 32-character nix32 hash part.
func (p Path) HashPart() string { return p.Base()[:HashLen] }

// Name returns the part after "hashpart-".
func (p Path) Name() string { return p.Base()[HashLen+1:] }

// IsDerivation reports whether p names a .drv file.
func (p Path) IsDerivation() bool { return strings.HasSuffix(string(p), ".drv") }

// Sort sorts paths in Nix's StorePathSet order (by base name).
func Sort(ps []Path) {
	sort.Slice(ps, func(i, j int) bool { return ps[i].Base() < ps[j].Base() })
}

// Make is Nix's makeStorePath: the path of type typ (e.g. "source",
// "text:/nix/store/...", "output:out") whose inner hash is inner.
func (d Dir) Make(typ string, inner hash.Hash, name string) (Path, error) {
	if err := ValidateName(name); err != nil {
		return "", fmt.Errorf("make store path: %w", err)
	}
	s := typ + ":" + inner.Encode(hash.Base16, true) + ":" + string(d) + ":" + name
	h := sha256.Sum256([]byte(s))
	return Path(string(d) + "/" + nixbase32.EncodeToString(hash.Compress(h[:], 20)) + "-" + name), nil
}

// makeType appends sorted references and ":self" to base (Nix's makeType).
func makeType(base string, refs []Path, self bool) string {
	sorted := append([]Path(nil), refs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	var b strings.Builder
	b.WriteString(base)
	for _, r := range sorted {
		b.WriteString(":")
		b.WriteString(string(r))
	}
	if self {
		b.WriteString(":self")
	}
	return b.String()
}

// MakeText is the path of a text object (builtins.toFile, .drv files)
// whose contents hash to contentHash (SHA-256) with the given references.
func (d Dir) MakeText(name string, contentHash hash.Hash, refs []Path) (Path, error) {
	if contentHash.Algorithm() != hash.SHA256 {
		return "", fmt.Errorf("make text path %q: hash must be sha256, not %v", name, contentHash.Algorithm())
	}
	return d.Make(makeType("text", refs, false), contentHash, name)
}

// Method is how a content-addressed object is hashed.
type Method uint8

// Methods: Flat hashes a regular file's bytes, Recursive hashes a NAR, Text
// is for text objects (always sha256 of the contents).
const (
	Flat Method = iota
	Recursive
	Text
)

// MakeFixedOutput is Nix's makeFixedOutputPath. References are allowed
// only for recursive SHA-256 (and self only there).
func (d Dir) MakeFixedOutput(name string, m Method, h hash.Hash, refs []Path, self bool) (Path, error) {
	switch {
	case m == Text:
		if self {
			return "", fmt.Errorf("make text path %q: a text object cannot refer to itself", name)
		}
		return d.MakeText(name, h, refs)
	case m == Recursive && h.Algorithm() == hash.SHA256:
		return d.Make(makeType("source", refs, self), h, name)
	}
	if len(refs) > 0 || self {
		return "", fmt.Errorf("make fixed-output path %q: only recursive sha256 paths may have references", name)
	}
	rec := ""
	if m == Recursive {
		rec = "r:"
	}
	inner := hash.SumString(hash.SHA256, "fixed:out:"+rec+h.Algorithm().String()+":"+h.Hex()+":")
	return d.Make("output:out", inner, name)
}

// OutputPathName is the name of output id of a derivation named drvName.
func OutputPathName(drvName, id string) string {
	if id == "out" {
		return drvName
	}
	return drvName + "-" + id
}

// MakeOutput is the path of input-addressed output id of the derivation
// named drvName whose hashDerivationModulo is h.
func (d Dir) MakeOutput(id string, h hash.Hash, drvName string) (Path, error) {
	return d.Make("output:"+id, h, OutputPathName(drvName, id))
}

// ContentAddress is the "ca" assertion of a store object, e.g.
// "fixed:r:sha256:<nix32>" or "text:sha256:<nix32>". The zero value means
// none.
type ContentAddress struct {
	Method Method
	Hash   hash.Hash
}

// IsZero reports whether ca is the empty content address.
func (ca ContentAddress) IsZero() bool { return ca.Hash.IsZero() }

// String renders ca as Nix's renderContentAddress, or "" for none.
func (ca ContentAddress) String() string {
	if ca.IsZero() {
		return ""
	}
	switch ca.Method {
	case Text:
		return "text:" + ca.Hash.String()
	case Recursive:
		return "fixed:r:" + ca.Hash.String()
	}
	return "fixed:" + ca.Hash.String()
}

// ParseContentAddress parses a rendered content address; "" gives the zero
// value. Any digest encoding is accepted.
func ParseContentAddress(s string) (ContentAddress, error) {
	if s == "" {
		return ContentAddress{}, nil
	}
	var ca ContentAddress
	rest, ok := strings.CutPrefix(s, "text:")
	if ok {
		ca.Method = Text
	} else if rest, ok = strings.CutPrefix(s, "fixed:"); ok {
		ca.Method = Flat
		if r, ok := strings.CutPrefix(rest, "r:"); ok {
			ca.Method, rest = Recursive, r
		}
	} else {
		return ContentAddress{}, fmt.Errorf("parse content address %q: unknown prefix", s)
	}
	h, err := hash.Parse(rest)
	if err != nil {
		return ContentAddress{}, fmt.Errorf("parse content address %q: %w", s, err)
	}
	if ca.Method == Text && h.Algorithm() != hash.SHA256 {
		return ContentAddress{}, fmt.Errorf("parse content address %q: text hashes must be sha256", s)
	}
	ca.Hash = h
	return ca, nil
}

// MakeFromCA computes the path of a content-addressed object.
func (d Dir) MakeFromCA(name string, ca ContentAddress, refs []Path, self bool) (Path, error) {
	return d.MakeFixedOutput(name, ca.Method, ca.Hash, refs, self)
}

// HashPlaceholder is Nix's hashPlaceholder for output name o: the string
// a derivation uses for an output path that is not known yet.
func HashPlaceholder(o string) string {
	h := sha256.Sum256([]byte("nix-output:" + o))
	return "/" + nixbase32.EncodeToString(h[:])
}
