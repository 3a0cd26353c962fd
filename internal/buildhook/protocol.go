package buildhook

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"ferry/internal/hookapi"
	"ferry/nix/wire"
)

// The hook protocol, as Nix 2.8 speaks it to its build hook
// (src/libstore/build/hook-instance.cc@2.8.0 sends the settings,
// src/libstore/build/derivation-goal.cc@2.8.0 tryBuildHook the requests,
// src/build-remote/build-remote.cc@2.8.0 reads them; docs/protocol.md
// §7.1 and §13). Everything Nix sends is in its wire format
// (nix/wire): little-endian u64 integers, strings padded to 8 bytes.

// Bounds on what the decoder accepts before allocating. Nix sends every
// setting it has (about a hundred), a machines list inline in "builders",
// and an input closure of any size.
const (
	maxSettings   = 1 << 14
	maxNameLen    = 1 << 10
	maxValueLen   = 16 << 20
	maxWordLen    = 1 << 10 // "try"
	maxSystemLen  = 1 << 10
	maxPathLen    = 1 << 12
	maxFeatures   = 1 << 12
	maxFeatureLen = 1 << 10
	maxInputs     = 1 << 22
	maxOutputs    = 1 << 16
	maxOutputLen  = 1 << 10
)

// Setting is one settings record: the name of a Nix setting and its value
// as Nix prints it (Config::getSettings).
type Setting struct {
	Name, Value string
}

// ReadSettings reads the settings records Nix sends when it starts the
// hook: repeated (u64 1, string name, string value), ended by u64 0. As
// build-remote's loop reads them (while (readInt(source))), any non-zero
// integer below 2^32 announces a record.
func ReadSettings(r *wire.Reader) ([]Setting, error) {
	var out []Setting
	for {
		more, err := r.ReadInt()
		if err != nil {
			return nil, fmt.Errorf("read the settings: %w", wire.NoEOF(err))
		}
		if more == 0 {
			return out, nil
		}
		if len(out) >= maxSettings {
			return nil, fmt.Errorf("read the settings: more than %d", maxSettings)
		}
		name, err := r.ReadString(maxNameLen)
		if err != nil {
			return nil, fmt.Errorf("read a setting's name: %w", wire.NoEOF(err))
		}
		value, err := r.ReadString(maxValueLen)
		if err != nil {
			return nil, fmt.Errorf("read setting '%s': %w", name, wire.NoEOF(err))
		}
		out = append(out, Setting{Name: name, Value: value})
	}
}

// WriteSettings writes settings records as Nix's HookInstance does.
func WriteSettings(w *wire.Writer, settings []Setting) error {
	for _, s := range settings {
		w.WriteUint64(1)
		w.WriteString(s.Name)
		w.WriteString(s.Value)
	}
	return w.WriteUint64(0)
}

// Try is one request of Nix's tryBuildHook: may the hook build drvPath?
type Try struct {
	// AmWilling is 1 when Nix could build it locally now (its local
	// builds are below max-jobs).
	AmWilling bool
	System    string
	DrvPath   string
	// Features are the derivation's requiredSystemFeatures (plus
	// "ca-derivations" for a floating content-addressed one), a set.
	Features []string
}

// ErrEnd is returned by ReadTry when Nix ends the session: it closed the
// pipe, or sent a word other than "try" (build-remote returns then).
var ErrEnd = errors.New("the build hook's session ended")

// ReadTry reads the next request: string "try", u64 amWilling, string
// platform, string drvPath, StringSet requiredSystemFeatures. The end of
// the input, or a first word other than "try", is ErrEnd.
func ReadTry(r *wire.Reader) (*Try, error) {
	word, err := r.ReadString(maxWordLen)
	if err == io.EOF || err == nil && word != "try" {
		return nil, ErrEnd
	}
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, ErrEnd // build-remote catches EndOfFile there too
		}
		return nil, fmt.Errorf("read a request: %w", err)
	}
	t := &Try{}
	if t.AmWilling, err = r.ReadBoolLenient(); err != nil {
		return nil, fmt.Errorf("read a request's amWilling: %w", wire.NoEOF(err))
	}
	if t.System, err = r.ReadString(maxSystemLen); err != nil {
		return nil, fmt.Errorf("read a request's platform: %w", wire.NoEOF(err))
	}
	if t.DrvPath, err = r.ReadString(maxPathLen); err != nil {
		return nil, fmt.Errorf("read a request's derivation: %w", wire.NoEOF(err))
	}
	if t.Features, err = r.ReadStrings(maxFeatures, maxFeatureLen); err != nil {
		return nil, fmt.Errorf("read the required features of %s: %w", t.DrvPath, wire.NoEOF(err))
	}
	t.Features = set(t.Features)
	return t, nil
}

// WriteTry writes a request as Nix's tryBuildHook does.
func WriteTry(w *wire.Writer, t *Try) error {
	w.WriteString("try")
	if t.AmWilling {
		w.WriteUint64(1)
	} else {
		w.WriteUint64(0)
	}
	w.WriteString(t.System)
	w.WriteString(t.DrvPath)
	return w.WriteStrings(set(t.Features))
}

// Accepted is what Nix sends after "# accept": the derivation's input
// closure (StorePathSet) and the outputs it wants (StringSet, those not
// valid locally). Nix then closes the hook's stdin.
type Accepted struct {
	Inputs        []string
	WantedOutputs []string
}

// ReadAccepted reads the inputs and wanted outputs that follow an accept.
func ReadAccepted(r *wire.Reader) (*Accepted, error) {
	a := &Accepted{}
	var err error
	if a.Inputs, err = r.ReadStrings(maxInputs, maxPathLen); err != nil {
		return nil, fmt.Errorf("read the inputs: %w", wire.NoEOF(err))
	}
	if a.WantedOutputs, err = r.ReadStrings(maxOutputs, maxOutputLen); err != nil {
		return nil, fmt.Errorf("read the wanted outputs: %w", wire.NoEOF(err))
	}
	a.Inputs, a.WantedOutputs = set(a.Inputs), set(a.WantedOutputs)
	return a, nil
}

// WriteAccepted writes the inputs and wanted outputs as Nix does.
func WriteAccepted(w *wire.Writer, a *Accepted) error {
	w.WriteStrings(set(a.Inputs))
	return w.WriteStrings(set(a.WantedOutputs))
}

// WriteReply writes the hook's answer to a try on its stderr: "# accept"
// and the machine's store URI on the next line, or "# decline",
// "# decline-permanently", "# postpone".
func WriteReply(w io.Writer, d hookapi.Decision, machine string) error {
	switch d {
	case hookapi.Accept:
		if machine == "" || strings.ContainsAny(machine, "\n") {
			return fmt.Errorf("cannot accept on machine %q", machine)
		}
		_, err := fmt.Fprintf(w, "# accept\n%s\n", machine)
		return err
	case hookapi.Decline, hookapi.DeclinePermanently, hookapi.Postpone:
		_, err := fmt.Fprintf(w, "# %s\n", d)
		return err
	}
	return fmt.Errorf("no such hook reply %q", d)
}

// ReadReply reads the hook's answer as Nix's tryBuildHook does: lines
// before it that do not start with "# " are returned in other (Nix
// handles "@nix {json}" lines as log messages and prints the rest); then
// the word, and for "accept" the next line, the machine.
func ReadReply(r *bufio.Reader) (d hookapi.Decision, machine string, other []string, err error) {
	for {
		line, err := readLine(r)
		if err != nil {
			return "", "", other, fmt.Errorf("read the build hook's reply: %w", err)
		}
		if !strings.HasPrefix(line, "# ") {
			other = append(other, line)
			continue
		}
		switch d = hookapi.Decision(line[2:]); d {
		case hookapi.Decline, hookapi.DeclinePermanently, hookapi.Postpone:
			return d, "", other, nil
		case hookapi.Accept:
			machine, err := readLine(r)
			if err != nil {
				return "", "", other, fmt.Errorf("read the machine name from the build hook: %w", err)
			}
			return d, machine, other, nil
		}
		return "", "", other, fmt.Errorf("bad hook reply '%s'", line[2:])
	}
}

func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return "", err
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// set sorts ss and drops duplicates, as a std::set holds them.
func set(ss []string) []string {
	if len(ss) == 0 {
		return nil
	}
	out := append([]string(nil), ss...)
	sort.Strings(out)
	n := 1
	for _, s := range out[1:] {
		if s != out[n-1] {
			out[n] = s
			n++
		}
	}
	return out[:n]
}
