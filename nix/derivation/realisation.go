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

// DrvOutput names one output of a derivation by the derivation's masked
// hashDerivationModulo (Nix's DrvOutput, src/libstore/realisation.hh@2.8.0).
// Its text form is "<algo>:<base16>!<output>".
type DrvOutput struct {
	DrvHash hash.Hash
	Output  string
}

// String is Nix's DrvOutput::to_string.
func (o DrvOutput) String() string { return o.HashString() + "!" + o.Output }

// HashString is the hash as the Realisations table's drvPath column holds
// it (DrvOutput::strHash): "sha256:<base16>".
func (o DrvOutput) HashString() string { return o.DrvHash.Encode(hash.Base16, true) }

// ParseDrvOutput parses "<hash>!<output>" as Nix's DrvOutput::parse does:
// the text before the first '!' is a prefixed hash in any encoding, the
// rest the output name, which ferry also requires to be non-empty.
func ParseDrvOutput(s string) (DrvOutput, error) {
	h, name, ok := strings.Cut(s, "!")
	if !ok {
		return DrvOutput{}, fmt.Errorf("Invalid derivation output id %s", s)
	}
	if name == "" {
		return DrvOutput{}, fmt.Errorf("invalid derivation output id %q: no output name", s)
	}
	dh, err := hash.Parse(h)
	if err != nil {
		return DrvOutput{}, fmt.Errorf("invalid derivation output id %q: %w", s, err)
	}
	return DrvOutput{DrvHash: dh, Output: name}, nil
}

// Realisation records which store path an output of a derivation was
// built to (Nix's Realisation): what the Realisations table and the serve
// protocol's builtOutputs hold for content-addressed derivations.
type Realisation struct {
	ID      DrvOutput
	OutPath storepath.Path
	// Signatures are "key:base64" signatures of Fingerprint.
	Signatures []string
	// Dependent are the realisations of input derivations whose outputs
	// OutPath refers to (dependentRealisations).
	Dependent map[DrvOutput]storepath.Path
}

// realisationJSON is Realisation::toJSON's object; encoding/json writes
// the keys in this, alphabetical, order, as nlohmann::json does.
type realisationJSON struct {
	DependentRealisations map[string]string `json:"dependentRealisations"`
	ID                    string            `json:"id"`
	OutPath               string            `json:"outPath"`
	Signatures            *[]string         `json:"signatures,omitempty"`
}

func (r *Realisation) toJSON(withSigs bool) ([]byte, error) {
	j := realisationJSON{DependentRealisations: map[string]string{}, ID: r.ID.String(), OutPath: r.OutPath.Base()}
	for id, p := range r.Dependent {
		j.DependentRealisations[id.String()] = p.Base()
	}
	if withSigs {
		sigs := append([]string{}, r.Signatures...)
		sort.Strings(sigs)
		j.Signatures = &sigs
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(j); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// MarshalJSON is Realisation::toJSON dumped compactly: the keys
// dependentRealisations, id, outPath and signatures; paths are base names.
func (r *Realisation) MarshalJSON() ([]byte, error) { return r.toJSON(true) }

// Fingerprint is what a realisation's signatures sign
// (Realisation::fingerprint): its JSON without the signatures.
func (r *Realisation) Fingerprint() (string, error) {
	b, err := r.toJSON(false)
	return string(b), err
}

// ParseRealisationJSON reads a Realisation from Nix's JSON
// (Realisation::fromJSON): "id" and "outPath" are required, "signatures"
// and "dependentRealisations" optional. Paths are base names in dir.
func ParseRealisationJSON(dir storepath.Dir, data []byte) (*Realisation, error) {
	var j struct {
		DependentRealisations map[string]string `json:"dependentRealisations"`
		ID                    *string           `json:"id"`
		OutPath               *string           `json:"outPath"`
		Signatures            []string          `json:"signatures"`
	}
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("parse realisation: %w", err)
	}
	if j.ID == nil || j.OutPath == nil {
		return nil, errors.New("parse realisation: missing id or outPath")
	}
	id, err := ParseDrvOutput(*j.ID)
	if err != nil {
		return nil, fmt.Errorf("parse realisation: %w", err)
	}
	p, err := dir.Join(*j.OutPath)
	if err != nil {
		return nil, fmt.Errorf("parse realisation: %w", err)
	}
	r := &Realisation{ID: id, OutPath: p, Signatures: j.Signatures}
	for k, v := range j.DependentRealisations {
		did, err := ParseDrvOutput(k)
		if err != nil {
			return nil, fmt.Errorf("parse realisation: %w", err)
		}
		dp, err := dir.Join(v)
		if err != nil {
			return nil, fmt.Errorf("parse realisation: %w", err)
		}
		if r.Dependent == nil {
			r.Dependent = map[DrvOutput]storepath.Path{}
		}
		r.Dependent[did] = dp
	}
	return r, nil
}
