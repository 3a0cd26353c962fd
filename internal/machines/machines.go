// Package machines reads Nix 2.8's machines format (the builders setting
// and /etc/nix/machines) and takes the slot locks of Nix's build-remote, so
// that ferry and real Nix share a pool of build machines without
// overbooking it. docs/machines.md describes the format and the lock files.
//
// Sources: src/libstore/machines.cc@2.8.0 (parsing, Machine),
// src/build-remote/build-remote.cc@2.8.0 (selection, current-load),
// src/libstore/pathlocks.cc@2.8.0 (the flock primitive).
package machines

import (
	"errors"
	"ferry/nix/nixbase64"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Machine is one line of the machines format.
type Machine struct {
	// URI is the store URI as Nix keeps it (Machine::storeUri): the first
	// field as written, with "ssh://" put in front of a schemeless host.
	// It names the lock files (Load).
	URI string
	// Systems are the platforms it builds for, in order, as written
	// (duplicates kept); the local system when the field is unset. A
	// field of only commas gives none.
	Systems []string
	// SSHKey is the ssh identity file, "" for none.
	SSHKey string
	// MaxJobs is the number of builds at once (slots); default 1. Zero is
	// accepted, as by Nix: such a machine never has a free slot.
	MaxJobs uint32
	// SpeedFactor weighs the load in selection; at least 1 (0 becomes 1,
	// as Nix's std::max(1U, speedFactor)).
	SpeedFactor uint32
	// SupportedFeatures and MandatoryFeatures are sets: sorted, unique.
	SupportedFeatures []string
	MandatoryFeatures []string
	// PublicHostKey is the base64 public host key as written, "" for none.
	PublicHostKey string

	// Source, Line and Text say where the machine was read: "builders"
	// or a file name, the 1-based line in it, and the entry as parsed
	// (trimmed, without its comment).
	Source string
	Line   int
	Text   string
}

// Field names, by column, for errors.
var fieldNames = [8]string{"store URI", "systems", "ssh identity file", "max jobs", "speed factor",
	"supported features", "mandatory features", "public host key"}

// LineError is a malformed machines line.
type LineError struct {
	Source string // "builders" (the setting's value) or the file
	Line   int    // 1-based line in Source
	Text   string // the entry, trimmed, without its comment
	Column int    // 0-based field index, as Nix's message numbers it
	Reason string
}

func (e *LineError) Error() string {
	return fmt.Sprintf("%s, line %d: bad machine specification: column #%d (%s) of '%s': %s",
		sourceName(e.Source), e.Line, e.Column, fieldNames[e.Column], e.Text, e.Reason)
}

func sourceName(s string) string {
	if s == SettingSource {
		return "builders setting"
	}
	return "machines file " + s
}

// SettingSource is the Source of machines read from the setting's value
// itself rather than from an @file.
const SettingSource = "builders"

// Parser reads the machines format.
type Parser struct {
	// System is the default of the systems field: the local system (Nix's
	// settings.thisSystem).
	System string
	// ReadFile reads an @file; nil means os.ReadFile. A file that does not
	// exist (fs.ErrNotExist) is skipped, as Nix skips ENOENT; any other
	// error is returned. Relative names are taken from the current
	// directory, as Nix's readFile does.
	ReadFile func(name string) ([]byte, error)
}

// maxDepth bounds @file nesting. Nix 2.8 recurses without bound (a file
// that includes itself overflows its stack); ferry names the loop instead.
const maxDepth = 32

// Parse reads a builders setting value with the local system as the
// default platform.
func Parse(builders, system string) ([]*Machine, error) {
	return (&Parser{System: system}).Parse(builders)
}

// Parse reads a builders setting value: entries separated by newlines or
// ";", each cut at its first "#", "@FILE" reading FILE's entries in its
// place (src/libstore/machines.cc@2.8.0 expandBuilderLines), every other
// entry one machine (parseBuilderLine).
func (p *Parser) Parse(builders string) ([]*Machine, error) {
	var ms []*Machine
	if err := p.expand(builders, SettingSource, nil, &ms); err != nil {
		return nil, err
	}
	return ms, nil
}

// nixSpace is the white space of Nix's tokenizeString and trim defaults.
const nixSpace = " \t\n\r"

func trim(s string) string { return strings.Trim(s, nixSpace) }

// fields splits s at runs of Nix's white space, dropping empty fields
// (tokenizeString(s) with its default separators).
func fields(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return strings.ContainsRune(nixSpace, r) })
}

// splitList splits a comma-separated field, dropping empty items
// (tokenizeString(s, ",")).
func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' })
}

func (p *Parser) expand(text, source string, stack []string, ms *[]*Machine) error {
	for n, physical := range strings.Split(text, "\n") {
		for _, entry := range strings.Split(physical, ";") {
			entry = trim(entry)
			if i := strings.IndexByte(entry, '#'); i >= 0 {
				entry = entry[:i]
			}
			if entry == "" {
				continue
			}
			if entry[0] != '@' {
				m, err := parseLine(entry, p.System)
				if err != nil {
					err.Source, err.Line = source, n+1
					return err
				}
				m.Source, m.Line = source, n+1
				*ms = append(*ms, m)
				continue
			}
			name := trim(entry[1:])
			key := name
			if abs, err := filepath.Abs(name); err == nil {
				key = abs
			}
			for _, s := range stack {
				if s == key {
					return fmt.Errorf("%s, line %d: machines file %s includes itself (%s)", sourceName(source), n+1, name, strings.Join(append(stack, key), " → "))
				}
			}
			if len(stack) >= maxDepth {
				return fmt.Errorf("%s, line %d: machines files nested more than %d deep", sourceName(source), n+1, maxDepth)
			}
			read := p.ReadFile
			if read == nil {
				read = os.ReadFile
			}
			data, err := read(name)
			if errors.Is(err, fs.ErrNotExist) {
				continue // as Nix: "cannot find machines file"
			}
			if err != nil {
				return fmt.Errorf("%s, line %d: read machines file: %w", sourceName(source), n+1, err)
			}
			if err := p.expand(string(data), name, append(stack[:len(stack):len(stack)], key), ms); err != nil {
				return err
			}
		}
	}
	return nil
}

// parseLine reads one machine (parseBuilderLine). Fields after the eighth
// are ignored, as by Nix.
func parseLine(line, system string) (*Machine, *LineError) {
	tok := fields(line)
	set := func(i int) bool { return len(tok) > i && tok[i] != "-" }
	bad := func(i int, format string, args ...any) *LineError {
		return &LineError{Text: line, Column: i, Reason: fmt.Sprintf(format, args...)}
	}
	if !set(0) {
		return nil, bad(0, "no store URI in the first column")
	}
	m := &Machine{URI: storeURI(tok[0]), Systems: []string{system}, MaxJobs: 1, SpeedFactor: 1, Text: line}
	if set(1) {
		m.Systems = splitList(tok[1])
	}
	if set(2) {
		m.SSHKey = tok[2]
	}
	for _, i := range []int{3, 4} {
		if !set(i) {
			continue
		}
		v, ok := parseUint32(tok[i])
		if !ok {
			return nil, bad(i, "%q is not an unsigned 32-bit integer (Nix: failed to convert to 'unsigned int')", tok[i])
		}
		if i == 3 {
			m.MaxJobs = v
		} else {
			m.SpeedFactor = max(1, v)
		}
	}
	if set(5) {
		m.SupportedFeatures = featureSet(tok[5])
	}
	if set(6) {
		m.MandatoryFeatures = featureSet(tok[6])
	}
	if set(7) {
		if _, err := nixbase64.Decode(tok[7]); err != nil {
			return nil, bad(7, "%q is not valid base64: %v", tok[7], err)
		}
		m.PublicHostKey = tok[7]
	}
	return m, nil
}

// storeURI is Machine's constructor rule: a value with no "://" and no
// "/" that is not auto, daemon or local (alone or with "?params"), nor
// only "?params", is a host, taken as ssh://.
func storeURI(s string) string {
	if strings.Contains(s, "://") || strings.Contains(s, "/") || strings.HasPrefix(s, "?") {
		return s
	}
	for _, w := range []string{"auto", "daemon", "local"} {
		if s == w || strings.HasPrefix(s, w+"?") {
			return s
		}
	}
	return "ssh://" + s
}

// parseUint32 is Nix 2.8's string2Int<unsigned int> (src/libutil/util.hh):
// no "-", then boost::lexical_cast, which takes an optional "+" and
// decimal digits, and rejects overflow.
func parseUint32(s string) (uint32, bool) {
	d := strings.TrimPrefix(s, "+")
	if d == "" || strings.TrimLeft(d, "0123456789") != "" {
		return 0, false
	}
	v, err := strconv.ParseUint(d, 10, 32)
	return uint32(v), err == nil
}

func featureSet(s string) []string {
	fs := splitList(s)
	sort.Strings(fs)
	out := fs[:0]
	for i, f := range fs {
		if i == 0 || f != fs[i-1] {
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// AllFeatures is supported ∪ mandatory, sorted.
func (m *Machine) AllFeatures() []string {
	return featureSet(strings.Join(append(append([]string(nil), m.SupportedFeatures...), m.MandatoryFeatures...), ","))
}

// CanBuild reports whether build-remote would consider m for a derivation
// of system with the required features (build-remote.cc@2.8.0): system is
// "builtin" or one of m's systems, every required feature is supported or
// mandatory (Machine::allSupported), and every mandatory feature is
// required (Machine::mandatoryMet). Whether the machine is still enabled
// is the caller's business.
func (m *Machine) CanBuild(system string, required []string) bool {
	ok := system == "builtin"
	for _, s := range m.Systems {
		ok = ok || s == system
	}
	if !ok {
		return false
	}
	has := func(set []string, f string) bool {
		i := sort.SearchStrings(set, f)
		return i < len(set) && set[i] == f
	}
	for _, f := range required {
		if !has(m.SupportedFeatures, f) && !has(m.MandatoryFeatures, f) {
			return false
		}
	}
	for _, f := range m.MandatoryFeatures {
		found := false
		for _, r := range required {
			found = found || r == f
		}
		if !found {
			return false
		}
	}
	return true
}
