package derivation

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"ferry/nix/hash"
	"ferry/nix/storepath"
)

func mustParse(t testing.TB, data []byte, name string) *Derivation {
	t.Helper()
	d, err := Parse(data, name)
	if err != nil {
		t.Fatalf("Parse(%s): %v", name, err)
	}
	return d
}

// simpleDrv is `simple` of docs/store.md §4.5 as derivation {…} builds it.
func simpleDrv() *Derivation {
	return &Derivation{
		Name:     "simple",
		Outputs:  map[string]Output{"out": {}},
		Platform: "x86_64-linux",
		Builder:  "/bin/sh",
		Args:     []string{"-c", "echo hello > $out"},
		Env: map[string]string{
			"builder": "/bin/sh", "name": "simple", "system": "x86_64-linux",
		},
	}
}

func TestWorkedExample(t *testing.T) {
	d := simpleDrv()
	d.Env["out"] = ""
	masked, err := ModuloATerm(d, true, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantMasked := `Derive([("out","","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo hello > $out"],[("builder","/bin/sh"),("name","simple"),("out",""),("system","x86_64-linux")])`
	if string(masked) != wantMasked {
		t.Errorf("masked string:\n got %s\nwant %s", masked, wantMasked)
	}
	if got := hash.Sum(hash.SHA256, masked).Hex(); !strings.HasPrefix(got, "cbd84a88") || !strings.HasSuffix(got, "8ea813") {
		t.Errorf("masked hash = %s, want cbd84a88…8ea813", got)
	}

	d = simpleDrv()
	if err := d.FillOutputPaths(storepath.DefaultDir, nil, nil); err != nil {
		t.Fatal(err)
	}
	const out = "/nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple"
	if d.Outputs["out"].Path != out || d.Env["out"] != out {
		t.Errorf("out = %q, env out = %q, want %s", d.Outputs["out"].Path, d.Env["out"], out)
	}
	wantDrv := `Derive([("out","/nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo hello > $out"],[("builder","/bin/sh"),("name","simple"),("out","/nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple"),("system","x86_64-linux")])`
	if got := string(d.ATerm()); got != wantDrv || len(got) != 263 {
		t.Errorf("ATerm (%d bytes):\n got %s\nwant %s", len(got), got, wantDrv)
	}
	r, err := HashModulo(d, false, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Hashes["out"].Hex(); got != "d00ef3a220516efccd495b796868b4e1653f864d80d1026c4204f63d63a5845b" {
		t.Errorf("modulo hash = %s", got)
	}
	p, err := d.Path(storepath.DefaultDir)
	if err != nil || p != "/nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple.drv" {
		t.Errorf("Path = %s, %v", p, err)
	}
	if err := d.CheckOutputPaths(storepath.DefaultDir, nil, nil); err != nil {
		t.Error(err)
	}
	d.Env["out"] = "/nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simplx"
	if err := d.CheckOutputPaths(storepath.DefaultDir, nil, nil); err == nil || !strings.Contains(err.Error(), "incorrect environment variable 'out'") {
		t.Errorf("CheckOutputPaths with a wrong env var: %v", err)
	}
}

// The fixtures under testdata were recorded from Nix 2.8 by
// scripts/record-fixtures from testdata/drvs.nix:
//
//   - drv/<base>.drv: each .drv file nix-instantiate wrote;
//   - drv/<base>.drv.json: `nix show-derivation` of it alone;
//   - show-derivation.json: `nix show-derivation` of all of them at once;
//   - attrs.txt: the drvs.nix attribute (the fixture's role) of each;
//   - path-info.json: `nix path-info --json --derivation` of them.

// recorded is the derivation fixtures, parsed.
type recorded struct {
	drvs  map[storepath.Path]*Derivation
	raw   map[storepath.Path][]byte
	attrs map[string]storepath.Path // drvs.nix attribute → .drv path
}

func loadRecorded(t *testing.T) *recorded {
	t.Helper()
	files, err := filepath.Glob("testdata/drv/*.drv")
	if err != nil || len(files) == 0 {
		t.Fatalf("no derivation fixtures (run scripts/record-fixtures derivation): %v", err)
	}
	r := &recorded{drvs: map[storepath.Path]*Derivation{}, raw: map[storepath.Path][]byte{}, attrs: map[string]storepath.Path{}}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		p, err := storepath.DefaultDir.Join(filepath.Base(f))
		if err != nil {
			t.Fatal(err)
		}
		name, err := NameFromPath(p)
		if err != nil {
			t.Fatal(err)
		}
		r.drvs[p] = mustParse(t, data, name)
		r.raw[p] = data
	}
	attrs, err := os.ReadFile("testdata/attrs.txt")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(attrs)), "\n") {
		attr, p, ok := strings.Cut(line, " ")
		if !ok || r.drvs[storepath.Path(p)] == nil {
			t.Fatalf("attrs.txt: bad line %q", line)
		}
		r.attrs[attr] = storepath.Path(p)
	}
	return r
}

// get returns the derivation recorded for drvs.nix attribute attr.
func (r *recorded) get(t *testing.T, attr string) (storepath.Path, *Derivation) {
	t.Helper()
	p, ok := r.attrs[attr]
	if !ok {
		t.Fatalf("no fixture for attribute %q", attr)
	}
	return p, r.drvs[p]
}

// TestRecorded checks every recorded derivation: it must print back byte
// for byte, hash to its .drv path, have Nix's references, pass
// CheckOutputPaths, get its output paths back from FillOutputPaths after
// they are blanked, and print and parse as `nix show-derivation` does.
func TestRecorded(t *testing.T) {
	r := loadRecorded(t)
	resolve := MapResolver(r.drvs)
	memo := &Memo{}
	var infos []struct {
		Path       storepath.Path
		References []storepath.Path
		CA         string
	}
	data, err := os.ReadFile("testdata/path-info.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &infos); err != nil {
		t.Fatal(err)
	}
	if len(infos) != len(r.drvs) {
		t.Fatalf("path-info.json has %d entries for %d derivations", len(infos), len(r.drvs))
	}
	kinds := map[Kind]int{}
	for _, info := range infos {
		p := info.Path
		d := r.drvs[p]
		if d == nil {
			t.Fatalf("path-info.json: %s is not a fixture", p)
		}
		for _, o := range d.Outputs {
			kinds[o.Kind()]++
		}
		t.Run(p.Name(), func(t *testing.T) {
			if got := d.ATerm(); !bytes.Equal(got, r.raw[p]) {
				t.Errorf("ATerm differs:\n got %q\nwant %q", got, r.raw[p])
			}
			if got, err := d.Path(storepath.DefaultDir); err != nil || got != p {
				t.Errorf("Path = %s, %v; want %s", got, err, p)
			}
			refs := d.References()
			if len(refs) == 0 {
				refs = nil
			}
			if len(info.References) == 0 {
				info.References = nil
			}
			if !reflect.DeepEqual(refs, info.References) {
				t.Errorf("References = %v, Nix %v", refs, info.References)
			}
			if want := "text:" + hash.Sum(hash.SHA256, r.raw[p]).String(); info.CA != want {
				t.Errorf("Nix's ca %s, ferry %s", info.CA, want)
			}
			if err := d.CheckOutputPaths(storepath.DefaultDir, resolve, memo); err != nil {
				t.Errorf("CheckOutputPaths: %v", err)
			}
			// Blank what derivation {…} computes and recompute it, with the
			// output env vars blank and missing.
			for _, drop := range []bool{false, true} {
				c := d.Clone()
				for id, o := range c.Outputs {
					switch o.Kind() {
					case InputAddressed:
						c.Outputs[id] = Output{}
					case CAFixed:
						o.Path = ""
						c.Outputs[id] = o
					}
					c.Env[id] = ""
					if drop {
						delete(c.Env, id)
					}
				}
				if err := c.FillOutputPaths(storepath.DefaultDir, resolve, memo); err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(c, d) {
					t.Errorf("FillOutputPaths (env vars dropped: %v):\n got %s\nwant %s", drop, c.ATerm(), d.ATerm())
				}
			}
			// `nix show-derivation` of this derivation alone.
			want, err := os.ReadFile(filepath.Join("testdata", "drv", p.Base()+".json"))
			if err != nil {
				t.Fatal(err)
			}
			js, err := d.ShowJSON(p)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(js, want) {
				t.Errorf("ShowJSON differs from nix show-derivation:\n got %s\nwant %s", js, want)
			}
			back, err := ParseJSON(want)
			if err != nil {
				t.Fatalf("ParseJSON(nix show-derivation): %v", err)
			}
			if !utf8.Valid(r.raw[p]) {
				return // ParseJSON maps invalid UTF-8 to U+FFFD
			}
			if !reflect.DeepEqual(back, d) {
				t.Errorf("ParseJSON(nix show-derivation):\n got %s\nwant %s", back.ATerm(), d.ATerm())
			}
		})
	}
	for k := InputAddressed; k <= Impure; k++ {
		if kinds[k] == 0 {
			t.Errorf("no fixture has a %v output", k)
		}
	}

	// All of them at once.
	want, err := os.ReadFile("testdata/show-derivation.json")
	if err != nil {
		t.Fatal(err)
	}
	got, err := MarshalShowJSON(r.drvs)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("MarshalShowJSON differs from nix show-derivation:\n got %s\nwant %s", got, want)
	}
}

// TestRecordedModulo checks hashDerivationModulo on the recorded cases
// built for it, against the output paths Nix gave them.
func TestRecordedModulo(t *testing.T) {
	r := loadRecorded(t)
	resolve := MapResolver(r.drvs)
	memo := &Memo{}
	modulo := func(attr string, mask bool) DrvHash {
		t.Helper()
		_, d := r.get(t, attr)
		h, err := HashModulo(d, mask, resolve, memo)
		if err != nil {
			t.Fatalf("HashModulo(%s): %v", attr, err)
		}
		return h
	}

	// docs/store.md §4.5: the modulo hash of a fixed-output derivation is
	// that of its fixed output; derivations on a floating or impure one
	// are deferred.
	for attr, want := range map[string]string{
		"fod-flat": "771ed2961762b5fb9ddd4842b09667f5792b8b82450de3901115ad84891cb874",
		"fod-rec":  "e14dde49fbdd82c9d5e5ef4d03aa972fc291f3016ac444b5f2feace1af3e0a1a",
	} {
		if h := modulo(attr, false); h.Deferred || h.Hashes["out"].Hex() != want {
			t.Errorf("%s: modulo = %s (deferred %v), want %s", attr, h.Hashes["out"].Hex(), h.Deferred, want)
		}
	}
	for _, attr := range []string{"ca", "ca-multi", "impure", "depca", "depimpure"} {
		if h := modulo(attr, false); !h.Deferred {
			t.Errorf("%s: not deferred", attr)
		}
	}

	// Two fixed-output derivations with the same output and different
	// builders: different .drv files, one modulo hash.
	s1, d1 := r.get(t, "source-first")
	s2, d2 := r.get(t, "source-second")
	if s1 == s2 || d1.Builder == d2.Builder || d1.Outputs["out"].Path != d2.Outputs["out"].Path {
		t.Fatalf("the source fixtures are not two builders of one output")
	}
	if a, b := modulo("source-first", false), modulo("source-second", false); !a.Hashes["out"].Equal(b.Hashes["out"]) {
		t.Errorf("the sources hash apart: %s, %s", a.Hashes["out"], b.Hashes["out"])
	}

	// So the intermediates over them, and the parents over one or both
	// intermediates, got the same output paths from Nix. The string ferry
	// hashes must give exactly those paths, and a parent's must merge its
	// two intermediates into one input entry.
	for _, pair := range [][2]string{{"intermediate-first", "intermediate-second"}, {"parent-joined", "parent-split"}} {
		pa, a := r.get(t, pair[0])
		pb, b := r.get(t, pair[1])
		if pa == pb || reflect.DeepEqual(a.InputDrvs, b.InputDrvs) {
			t.Fatalf("%s and %s are not different derivations", pair[0], pair[1])
		}
		if !reflect.DeepEqual(a.OutputPaths(), b.OutputPaths()) {
			t.Fatalf("Nix gave %s and %s different outputs: %v, %v", pair[0], pair[1], a.OutputPaths(), b.OutputPaths())
		}
		sa, err := ModuloATerm(a, true, resolve, memo)
		if err != nil {
			t.Fatal(err)
		}
		sb, err := ModuloATerm(b, true, resolve, memo)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(sa, sb) {
			t.Errorf("masked modulo strings differ:\n%s\n%s", sa, sb)
		}
		for id, want := range a.OutputPaths() {
			got, err := storepath.DefaultDir.MakeOutput(id, hash.Sum(hash.SHA256, sa), a.Name)
			if err != nil || got != want {
				t.Errorf("%s: output %s from the modulo string = %s, %v; Nix %s", pair[0], id, got, err, want)
			}
		}
		// The hex digests where input paths go do not parse as a .drv.
		if _, err := Parse(sa, a.Name); err == nil || !strings.Contains(err.Error(), "input derivation: parse store path") {
			t.Errorf("Parse(modulo string): %v", err)
		}
		if strings.HasPrefix(pair[0], "parent") {
			m := mustParseModulo(t, sa)
			if len(m) != 1 || !reflect.DeepEqual(m[0], []string{"dev", "out"}) {
				t.Errorf("parent modulo string inputs = %v, want one entry [dev out]", m)
			}
		}
	}
}

// mustParseModulo returns the output lists of the input entries of a
// modulo string (whose keys are hex digests, not paths).
func mustParseModulo(t *testing.T, s []byte) [][]string {
	t.Helper()
	_, rest, ok := bytes.Cut(s, []byte(")],["))
	if !ok {
		t.Fatalf("no inputs in %s", s)
	}
	inputs, _, ok := bytes.Cut(rest, []byte("])],"))
	if !ok {
		inputs, _, _ = bytes.Cut(rest, []byte("],"))
	}
	var outs [][]string
	for _, e := range bytes.Split(inputs, []byte("]),(")) {
		_, list, ok := bytes.Cut(e, []byte(",["))
		if !ok {
			t.Fatalf("bad input entry %q", e)
		}
		list = bytes.TrimRight(list, "])")
		var l []string
		for _, o := range bytes.Split(list, []byte(",")) {
			l = append(l, strings.Trim(string(o), `"`))
		}
		outs = append(outs, l)
	}
	return outs
}

// TestRecordedMutations changes recorded derivations the way a wrong
// implementation or a forged .drv would, and checks the errors.
func TestRecordedMutations(t *testing.T) {
	r := loadRecorded(t)
	resolve := MapResolver(r.drvs)

	// A wrong input-addressed output path (the env var agreeing with it).
	_, top := r.get(t, "top")
	c := top.Clone()
	c.Outputs["out"] = Output{Path: "/nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-top"}
	c.Env["out"] = string(c.Outputs["out"].Path)
	if err := c.CheckOutputPaths(storepath.DefaultDir, resolve, nil); err == nil || !strings.Contains(err.Error(), "incorrect output") {
		t.Errorf("wrong output path: CheckOutputPaths = %v", err)
	}
	// A right path with a wrong env var.
	c = top.Clone()
	c.Env["out"] = ""
	if err := c.CheckOutputPaths(storepath.DefaultDir, resolve, nil); err == nil || !strings.Contains(err.Error(), "incorrect environment variable 'out'") {
		t.Errorf("wrong env var: CheckOutputPaths = %v", err)
	}
	// An input whose output changed: top2's path no longer matches.
	c = top.Clone()
	c.Env["weird"] += "!"
	changed := map[storepath.Path]*Derivation{}
	for p, d := range r.drvs {
		changed[p] = d
	}
	changed[r.attrs["top"]] = c
	_, top2 := r.get(t, "top2")
	if err := top2.CheckOutputPaths(storepath.DefaultDir, MapResolver(changed), nil); err == nil || !strings.Contains(err.Error(), "incorrect output") {
		t.Errorf("changed input: CheckOutputPaths = %v", err)
	}
	// Nix 2.8's checkDerivationOutputs does not look at deferred outputs,
	// so a wrong env var of one passes (current Nix rejects it).
	_, depca := r.get(t, "depca")
	c = depca.Clone()
	c.Env["out"] = "/nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-depca"
	if err := c.CheckOutputPaths(storepath.DefaultDir, resolve, nil); err != nil {
		t.Errorf("deferred output with a wrong env var: %v", err)
	}
	// A fixed output whose stated path is not the one its hash gives.
	p, fod := r.get(t, "fod-flat")
	forged := bytes.Replace(r.raw[p], []byte(`("out","`+string(fod.Outputs["out"].Path)), []byte(`("out","/nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-fod.txt`), 1)
	if bytes.Equal(forged, r.raw[p]) {
		t.Fatal("could not forge the fixed output path")
	}
	if _, err := Parse(forged, fod.Name); err == nil || !strings.Contains(err.Error(), "but its hash gives") || !errors.Is(err, ErrSyntax) {
		t.Errorf("forged fixed output path: Parse = %v", err)
	}
}

// TestJSONVersion4 parses the version-4 JSON of current Nix for some of
// the recorded derivations (written from their 2.8 show-derivation JSON:
// base-name paths, "inputs", "name", SRI hashes with "method") and checks
// that the result prints as the .drv Nix 2.8 wrote.
func TestJSONVersion4(t *testing.T) {
	r := loadRecorded(t)
	for _, attr := range []string{"simple", "multi", "top2", "parent-split", "intermediate-first", "depca"} {
		t.Run(attr, func(t *testing.T) {
			p, d := r.get(t, attr)
			js, err := os.ReadFile(filepath.Join("testdata", "drv", p.Base()+".json"))
			if err != nil {
				t.Fatal(err)
			}
			v4 := toVersion4(t, js, d.Name)
			back, err := ParseJSON(v4)
			if err != nil {
				t.Fatalf("ParseJSON(%s): %v", v4, err)
			}
			if got := back.ATerm(); !bytes.Equal(got, r.raw[p]) {
				t.Errorf("version 4 JSON:\n got %s\nwant %s", got, r.raw[p])
			}
		})
	}
	// A fixed output: its hash as SRI with "method".
	p, _ := r.get(t, "source-first")
	v4 := `{"args":[],"builder":"/bin/first","env":{"builder":"/bin/first","name":"source","out":"/nix/store/h10qymscvggrb1icws0vbss5xnx8sd0k-source","outputHash":"sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=","outputHashMode":"recursive","system":"x86_64-linux"},` +
		`"inputs":{"drvs":{},"srcs":[]},"name":"source","outputs":{"out":{"hash":"sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=","method":"nar"}},"system":"x86_64-linux","version":4}`
	if d, err := ParseJSON([]byte(v4)); err != nil {
		t.Errorf("ParseJSON(version 4 fixed output): %v", err)
	} else if got := d.ATerm(); !bytes.Equal(got, r.raw[p]) {
		t.Errorf("version 4 fixed output:\n got %s\nwant %s", got, r.raw[p])
	}
	// Dynamic outputs (current Nix only) are refused.
	dyn := `{"args":[],"builder":"foo","env":{},"inputs":{"drvs":{"3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple.drv":{"dynamicOutputs":{"out":{"dynamicOutputs":{},"outputs":["x"]}},"outputs":["out"]}},"srcs":[]},"name":"dyn","outputs":{},"system":"x","version":4}`
	if _, err := ParseJSON([]byte(dyn)); err == nil || !strings.Contains(err.Error(), "dynamic outputs") {
		t.Errorf("ParseJSON(dynamic outputs): %v", err)
	}
}

// toVersion4 rewrites `nix show-derivation` (2.8) JSON of one derivation
// without content-addressed outputs into the version-4 shape.
func toVersion4(t *testing.T, js []byte, name string) []byte {
	t.Helper()
	var top map[string]struct {
		Outputs   map[string]map[string]string `json:"outputs"`
		InputSrcs []string                     `json:"inputSrcs"`
		InputDrvs map[string][]string          `json:"inputDrvs"`
		System    string                       `json:"system"`
		Builder   string                       `json:"builder"`
		Args      []string                     `json:"args"`
		Env       map[string]string            `json:"env"`
	}
	if err := json.Unmarshal(js, &top); err != nil || len(top) != 1 {
		t.Fatalf("show-derivation JSON: %v", err)
	}
	type input struct {
		DynamicOutputs struct{} `json:"dynamicOutputs"`
		Outputs        []string `json:"outputs"`
	}
	for _, d := range top {
		outs := map[string]map[string]string{}
		for id, o := range d.Outputs {
			if len(o) > 1 || (len(o) == 1 && o["path"] == "") {
				t.Fatalf("output %s is content-addressed: %v", id, o)
			}
			outs[id] = map[string]string{}
			if o["path"] != "" {
				outs[id]["path"] = filepath.Base(o["path"])
			}
		}
		drvs := map[string]input{}
		for p, o := range d.InputDrvs {
			drvs[filepath.Base(p)] = input{Outputs: o}
		}
		srcs := []string{}
		for _, p := range d.InputSrcs {
			srcs = append(srcs, filepath.Base(p))
		}
		v4, err := json.Marshal(map[string]any{
			"args": d.Args, "builder": d.Builder, "env": d.Env, "name": name, "outputs": outs,
			"system": d.System, "version": 4,
			"inputs": map[string]any{"drvs": drvs, "srcs": srcs},
		})
		if err != nil {
			t.Fatal(err)
		}
		return v4
	}
	return nil
}
