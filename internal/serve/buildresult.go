package serve

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"ferry/nix/hash"
	"ferry/nix/storepath"
	"ferry/nix/wire"
	"ferry/store"
)

// BuildResult is a BuildResult as it travels on the serve wire (§3.9.1), the
// reply to CmdBuildDerivation.
type BuildResult struct {
	Status             store.BuildStatus
	ErrorMsg           string
	TimesBuilt         uint64 // proto >= 2.3
	IsNonDeterministic bool   // proto >= 2.3
	StartTime          uint64 // proto >= 2.3; Unix seconds, 0 when unknown
	StopTime           uint64 // proto >= 2.3; Unix seconds, 0 when unknown
	// BuiltOutputs (proto >= 2.6) lists every output, sorted by name.
	BuiltOutputs []Realisation
}

// Realisation is one entry of builtOutputs.
//
// For proto 2.6 and 2.7 an entry is a pair of strings: the DrvOutput id
// "<algo>:<base16>!<output>" and a Realisation in JSON. Nix 2.4 to 2.34
// servers write the id with the derivation's hashDerivationModulo and the JSON
// with four keys in alphabetical order
// ({"dependentRealisations":{},"id":…,"outPath":<base name>,"signatures":[]});
// Nix 2.35 writes a compatibility form with an all-zero hash and only
// {"id":…,"outPath":…} (Compat). For proto 2.8 an entry is the output name,
// the full out path and the signatures.
type Realisation struct {
	Output string
	// DrvHash is the hash in the DrvOutput id (proto 2.6/2.7). The zero
	// Hash is written as an all-zero SHA-256, as Nix 2.35 does.
	DrvHash    hash.Hash
	OutPath    storepath.Path
	Signatures []string
	// Compat selects Nix 2.35's two-key JSON for proto 2.6/2.7.
	Compat bool
}

// id returns the DrvOutput string of r.
func (r *Realisation) id() string {
	h := r.DrvHash
	if h.IsZero() {
		h, _ = hash.New(hash.SHA256, make([]byte, 32))
	}
	return h.Encode(hash.Base16, true) + "!" + r.Output
}

// FromStore converts a store.BuildResult for the wire. drvHashes gives the
// DrvOutput hash of each output (hashDerivationModulo, masked); a missing
// entry gives the all-zero hash. Times before 1970 or zero become 0.
func FromStore(res *store.BuildResult, drvHashes map[string]hash.Hash) *BuildResult {
	out := &BuildResult{
		Status:             res.Status,
		ErrorMsg:           res.ErrorMsg,
		TimesBuilt:         res.TimesBuilt,
		IsNonDeterministic: res.IsNonDeterministic,
		StartTime:          unixOrZero(res.StartTime),
		StopTime:           unixOrZero(res.StopTime),
	}
	for name, p := range res.BuiltOutputs {
		out.BuiltOutputs = append(out.BuiltOutputs, Realisation{Output: name, DrvHash: drvHashes[name], OutPath: p})
	}
	slices.SortFunc(out.BuiltOutputs, func(a, b Realisation) int { return strings.Compare(a.Output, b.Output) })
	return out
}

// Store converts r to the store vocabulary.
func (r *BuildResult) Store() *store.BuildResult {
	res := &store.BuildResult{
		Status:             r.Status,
		ErrorMsg:           r.ErrorMsg,
		TimesBuilt:         r.TimesBuilt,
		IsNonDeterministic: r.IsNonDeterministic,
	}
	if r.StartTime != 0 {
		res.StartTime = time.Unix(int64(r.StartTime), 0)
	}
	if r.StopTime != 0 {
		res.StopTime = time.Unix(int64(r.StopTime), 0)
	}
	if len(r.BuiltOutputs) > 0 {
		res.BuiltOutputs = map[string]storepath.Path{}
		for _, o := range r.BuiltOutputs {
			res.BuiltOutputs[o.Output] = o.OutPath
		}
	}
	return res
}

func unixOrZero(t time.Time) uint64 {
	if t.IsZero() || t.Unix() < 0 {
		return 0
	}
	return uint64(t.Unix())
}

// WriteBuildResult writes r for a peer of the given version: status and
// message, the times from proto 2.3, builtOutputs from proto 2.6.
// (A server imitating Nix 2.4-2.10 writes builtOutputs whatever the client's
// version: it calls WriteBuildResult and WriteBuiltOutputs separately.)
func WriteBuildResult(w *wire.Writer, version uint64, r *BuildResult) error {
	if err := writeBuildResultHead(w, version, r); err != nil {
		return err
	}
	if Minor(version) >= 6 {
		return WriteBuiltOutputs(w, version, r.BuiltOutputs)
	}
	return nil
}

func writeBuildResultHead(w *wire.Writer, version uint64, r *BuildResult) error {
	w.WriteUint64(uint64(r.Status))
	w.WriteString(r.ErrorMsg)
	if Minor(version) >= 3 {
		w.WriteUint64(r.TimesBuilt)
		w.WriteBool(r.IsNonDeterministic)
		w.WriteUint64(r.StartTime)
		w.WriteUint64(r.StopTime)
	}
	return stickyErr(w)
}

// ReadBuildResult reads what WriteBuildResult writes. A client talking to a
// Nix 2.4-2.10 server that advertised a version below 2.6 must also call
// ReadBuiltOutputs (docs/protocol.md §3.9.3).
func ReadBuildResult(r *wire.Reader, dir storepath.Dir, version uint64) (*BuildResult, error) {
	var res BuildResult
	st, err := r.ReadInt()
	if err != nil {
		return nil, fmt.Errorf("read build status: %w", wire.NoEOF(err))
	}
	res.Status = store.BuildStatus(st)
	if res.ErrorMsg, err = r.ReadString(MaxStringLen * 16); err != nil {
		return nil, fmt.Errorf("read build error message: %w", wire.NoEOF(err))
	}
	if Minor(version) >= 3 {
		if res.TimesBuilt, err = r.ReadInt(); err != nil {
			return nil, fmt.Errorf("read timesBuilt: %w", wire.NoEOF(err))
		}
		if res.IsNonDeterministic, err = r.ReadBool(); err != nil {
			return nil, fmt.Errorf("read isNonDeterministic: %w", wire.NoEOF(err))
		}
		if res.StartTime, err = r.ReadUint64(); err != nil {
			return nil, fmt.Errorf("read startTime: %w", wire.NoEOF(err))
		}
		if res.StopTime, err = r.ReadUint64(); err != nil {
			return nil, fmt.Errorf("read stopTime: %w", wire.NoEOF(err))
		}
	}
	if Minor(version) >= 6 {
		if res.BuiltOutputs, err = ReadBuiltOutputs(r, dir, version); err != nil {
			return nil, err
		}
	}
	return &res, nil
}

// realisationJSON is the 2.4-2.34 Realisation JSON (realisation.cc).
type realisationJSON struct {
	DependentRealisations *map[string]string `json:"dependentRealisations,omitempty"`
	ID                    string             `json:"id"`
	OutPath               string             `json:"outPath"`
	Signatures            *[]string          `json:"signatures,omitempty"`
}

// WriteBuiltOutputs writes builtOutputs in the form of the given version:
// proto 2.8 as (name, path, signatures) triples, otherwise as (DrvOutput id,
// Realisation JSON) string pairs sorted by id.
func WriteBuiltOutputs(w *wire.Writer, version uint64, outs []Realisation) error {
	sorted := slices.Clone(outs)
	w.WriteUint64(uint64(len(sorted)))
	if Minor(version) >= 8 {
		slices.SortFunc(sorted, func(a, b Realisation) int { return strings.Compare(a.Output, b.Output) })
		for _, o := range sorted {
			w.WriteString(o.Output)
			WritePath(w, o.OutPath)
			WriteStringSet(w, o.Signatures)
		}
		return stickyErr(w)
	}
	slices.SortFunc(sorted, func(a, b Realisation) int { return strings.Compare(a.id(), b.id()) })
	for _, o := range sorted {
		id := o.id()
		j := realisationJSON{ID: id, OutPath: o.OutPath.Base()}
		if !o.Compat {
			deps := map[string]string{}
			sigs := slices.Clone(o.Signatures)
			if sigs == nil {
				sigs = []string{}
			}
			j.DependentRealisations, j.Signatures = &deps, &sigs
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(j); err != nil {
			return fmt.Errorf("write realisation: %w", err)
		}
		w.WriteString(id)
		w.WriteBytes(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
	}
	return stickyErr(w)
}

// ReadBuiltOutputs reads builtOutputs in the form of the given version.
// In the 2.6/2.7 form the output name comes from the id after '!' and the
// path from "outPath" (a base name), as Nix's readers use them;
// dependentRealisations are ignored (Nix never fills them on this wire).
func ReadBuiltOutputs(r *wire.Reader, dir storepath.Dir, version uint64) ([]Realisation, error) {
	n, err := r.ReadUint64()
	if err != nil {
		return nil, fmt.Errorf("read builtOutputs: %w", wire.NoEOF(err))
	}
	if n > MaxOutputs {
		return nil, fmt.Errorf("read builtOutputs: %d entries: %w", n, wire.ErrTooLong)
	}
	var outs []Realisation
	for i := uint64(0); i < n; i++ {
		var o Realisation
		if Minor(version) >= 8 {
			if o.Output, err = r.ReadString(MaxStringLen); err != nil {
				return nil, fmt.Errorf("read output name: %w", wire.NoEOF(err))
			}
			if o.OutPath, err = ReadPath(r, dir); err != nil {
				return nil, err
			}
			if o.Signatures, err = ReadStringSet(r, MaxSigs, MaxStringLen); err != nil {
				return nil, fmt.Errorf("read signatures: %w", err)
			}
			outs = append(outs, o)
			continue
		}
		key, err := r.ReadString(MaxStringLen)
		if err != nil {
			return nil, fmt.Errorf("read DrvOutput: %w", wire.NoEOF(err))
		}
		val, err := r.ReadString(MaxStringLen * 16)
		if err != nil {
			return nil, fmt.Errorf("read realisation: %w", wire.NoEOF(err))
		}
		hs, name, ok := strings.Cut(key, "!")
		if !ok || name == "" {
			return nil, fmt.Errorf("read DrvOutput: invalid id %q", key)
		}
		o.Output = name
		if o.DrvHash, err = hash.Parse(hs); err != nil {
			return nil, fmt.Errorf("read DrvOutput %q: %w", key, err)
		}
		var j realisationJSON
		if err := json.Unmarshal([]byte(val), &j); err != nil {
			return nil, fmt.Errorf("read realisation of %q: %w", key, err)
		}
		if j.OutPath == "" {
			return nil, fmt.Errorf("read realisation of %q: no outPath", key)
		}
		if o.OutPath, err = dir.Join(j.OutPath); err != nil {
			return nil, fmt.Errorf("read realisation of %q: %w", key, err)
		}
		if j.Signatures != nil {
			o.Signatures = *j.Signatures
		}
		o.Compat = j.DependentRealisations == nil
		outs = append(outs, o)
	}
	return outs, nil
}
