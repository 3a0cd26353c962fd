package derivation

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"ferry/nix/hash"
	"ferry/nix/storepath"
)

const goldenDir = "/work/shared/nix-golden/libstore-tests/data/derivation"

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

// loadChain reads testdata/chain: .drv files written by nix-instantiate 2.8
// (simple, multi, two FODs, top depending on all four, top2 on top, a CA
// derivation and depca depending on it).
func loadChain(t *testing.T) (map[storepath.Path]*Derivation, map[storepath.Path][]byte) {
	t.Helper()
	files, err := filepath.Glob("testdata/chain/*.drv")
	if err != nil || len(files) == 0 {
		t.Fatalf("no chain fixtures: %v", err)
	}
	drvs := map[storepath.Path]*Derivation{}
	raw := map[storepath.Path][]byte{}
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
		drvs[p] = mustParse(t, data, name)
		raw[p] = data
	}
	return drvs, raw
}

func TestChain(t *testing.T) {
	drvs, raw := loadChain(t)
	resolve := MapResolver(drvs)
	memo := &Memo{}
	for p, d := range drvs {
		t.Run(p.Name(), func(t *testing.T) {
			if got := d.ATerm(); !bytes.Equal(got, raw[p]) {
				t.Errorf("ATerm differs:\n got %s\nwant %s", got, raw[p])
			}
			if got, err := d.Path(storepath.DefaultDir); err != nil || got != p {
				t.Errorf("Path = %s, %v; want %s", got, err, p)
			}
			if err := d.CheckOutputPaths(storepath.DefaultDir, resolve, memo); err != nil {
				t.Errorf("CheckOutputPaths: %v", err)
			}
			// Blank what derivation {…} computes and recompute it.
			c := d.Clone()
			for id, o := range c.Outputs {
				if o.Kind() == InputAddressed {
					c.Outputs[id] = Output{}
					c.Env[id] = ""
				}
				if o.Kind() == CAFixed {
					o.Path = ""
					c.Outputs[id] = o
					c.Env[id] = ""
				}
			}
			if err := c.FillOutputPaths(storepath.DefaultDir, resolve, memo); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c, d) {
				t.Errorf("FillOutputPaths:\n got %s\nwant %s", c.ATerm(), d.ATerm())
			}
		})
	}

	// docs/store.md §4.5: the modulo hashes of the two FODs.
	for base, prefix := range map[string]string{
		"ybrak2irsl9axc0n7ispff2l50f7hi4q-fod.txt.drv": "771ed2961762b5fb9ddd4842b09667f5792b8b82450de3901115ad84891cb874",
		"3c11w2miipv1hhj9dphhmvhyip4h3hhn-fodr.drv":    "e14dde49fbdd82c9d5e5ef4d03aa972fc291f3016ac444b5f2feace1af3e0a1a",
		"951z0fxmjf0xnalgws50cjjjsqd1ph3y-ca.drv":      "",
	} {
		p := storepath.Path("/nix/store/" + base)
		r, err := HashModulo(drvs[p], false, resolve, memo)
		if err != nil {
			t.Fatal(err)
		}
		if prefix == "" {
			if !r.Deferred {
				t.Errorf("%s: not deferred", base)
			}
			continue
		}
		if got := r.Hashes["out"].Hex(); got != prefix || r.Deferred {
			t.Errorf("%s: modulo = %s (deferred %v), want %s", base, got, r.Deferred, prefix)
		}
	}

	// JSON: byte-identical to `nix show-derivation` of all of them.
	want, err := os.ReadFile("testdata/chain-show.json")
	if err != nil {
		t.Fatal(err)
	}
	got, err := MarshalShowJSON(drvs)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("MarshalShowJSON differs from nix show-derivation:\n got %s\nwant %s", got, want)
	}
	for p, d := range drvs {
		js, err := d.ShowJSON(p)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseJSON(js)
		if err != nil {
			t.Fatalf("ParseJSON(%s): %v", p, err)
		}
		if !reflect.DeepEqual(back, d) {
			t.Errorf("ParseJSON(ShowJSON(%s)):\n got %s\nwant %s", p, back.ATerm(), d.ATerm())
		}
	}
}

func TestGoldenATerm(t *testing.T) {
	tests := []struct {
		file, name string
		exact      bool   // re-prints byte for byte
		wantErr    string // substring of the error
	}{
		{file: "simple-derivation.drv", name: "simple-derivation", exact: true},
		{file: "hello.drv", name: "hello-2.12.2"}, // inputDrvs are not in order
		{file: "firefox.drv", name: "firefox-140.0.4"},
		{file: "hash-modulo/source-first.drv", name: "source", exact: true},
		{file: "hash-modulo/source-second.drv", name: "source", exact: true},
		{file: "hash-modulo/intermediate-first.drv", name: "intermediate", exact: true},
		{file: "hash-modulo/intermediate-second.drv", name: "intermediate", exact: true},
		{file: "hash-modulo/parent-joined.drv", name: "parent", exact: true},
		{file: "hash-modulo/parent-split.drv", name: "parent", exact: true},
		{file: "dyn-dep-derivation.drv", name: "dyn-dep-derivation", wantErr: "DrvWithVersion"},
		{file: "bad-version.drv", name: "bad-version", wantErr: "DrvWithVersion"},
		{file: "bad-old-version-dyn-deps.drv", name: "x", wantErr: "dynamic-derivation node"},
		{file: "bad-ca-fixed-path.drv", name: "fixed", wantErr: "but its hash gives"},
		// The -modulo files hold hex digests where drv paths go.
		{file: "hash-modulo/parent-joined-modulo.drv", name: "parent", wantErr: "input derivation: parse store path"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(goldenDir, tt.file))
			if err != nil {
				t.Skipf("golden fixture missing: %v", err)
			}
			d, err := Parse(data, tt.name)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrSyntax) {
					t.Fatalf("Parse error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			out := d.ATerm()
			if tt.exact && !bytes.Equal(out, data) {
				t.Errorf("ATerm differs:\n got %s\nwant %s", out, data)
			}
			if len(out) != len(data) {
				t.Errorf("ATerm is %d bytes, input %d", len(out), len(data))
			}
			d2 := mustParse(t, out, tt.name)
			if !reflect.DeepEqual(d, d2) {
				t.Errorf("parse(ATerm(d)) != d")
			}
		})
	}
}

// TestGoldenHashModulo checks the hash-modulo fixtures of current Nix: two
// FODs with the same output but different builders hash alike, so two
// intermediates over them hash alike, and a parent over both merges them
// into one input entry.
func TestGoldenHashModulo(t *testing.T) {
	read := func(f string) []byte {
		data, err := os.ReadFile(filepath.Join(goldenDir, "hash-modulo", f))
		if err != nil {
			t.Skipf("golden fixture missing: %v", err)
		}
		return data
	}
	drvs := map[storepath.Path]*Derivation{}
	add := func(f, name string) *Derivation {
		d := mustParse(t, read(f), name)
		p, err := d.Path(storepath.DefaultDir)
		if err != nil {
			t.Fatal(err)
		}
		drvs[p] = d
		return d
	}
	add("source-first.drv", "source")
	add("source-second.drv", "source")
	i1 := add("intermediate-first.drv", "intermediate")
	i2 := add("intermediate-second.drv", "intermediate")
	for _, p := range []string{"kp6i4n4bb3hlniwqjakhlf046qpdc0gl-intermediate.drv", "f8g8x4m83da3b2f79iv84q2r3qlc58lr-intermediate.drv"} {
		if drvs[storepath.Path("/nix/store/"+p)] == nil {
			t.Fatalf("the intermediates do not hash to %s", p)
		}
	}
	resolve := MapResolver(drvs)
	for _, tt := range []struct {
		d      *Derivation
		masked string
	}{
		{i1, "intermediate-first-modulo.drv"},
		{i2, "intermediate-second-modulo.drv"},
		{add("parent-joined.drv", "parent"), "parent-joined-modulo.drv"},
		{add("parent-split.drv", "parent"), "parent-split-modulo.drv"},
	} {
		got, err := ModuloATerm(tt.d, true, resolve, nil)
		if err != nil {
			t.Fatal(err)
		}
		if want := read(tt.masked); !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %s\nwant %s", tt.masked, got, want)
		}
	}
	r, err := HashModulo(i1, false, resolve, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Hashes["dev"].Hex(); got != "6df335a6cafec6b08aa38163a4a3d1b8f04bc8dc10de4ad35d677f911f2d3b5a" {
		t.Errorf("unmasked modulo hash of intermediate = %s", got)
	}
}

// TestGoldenInvariants runs current Nix's fill-in fixtures through
// ParseJSON, FillOutputPaths and CheckOutputPaths.
func TestGoldenInvariants(t *testing.T) {
	read := func(f string) *Derivation {
		data, err := os.ReadFile(filepath.Join(goldenDir, "invariants", f))
		if err != nil {
			t.Skipf("golden fixture missing: %v", err)
		}
		d, err := ParseJSON(data)
		if err != nil {
			t.Fatalf("ParseJSON(%s): %v", f, err)
		}
		return d
	}
	for _, tt := range []struct{ pre, post string }{
		{"filled-in-deferred-empty-env-var-pre.json", "filled-in-deferred-empty-env-var-post.json"},
		{"filled-in-idempotent.json", "filled-in-idempotent.json"},
	} {
		d := read(tt.pre)
		if err := d.FillOutputPaths(storepath.DefaultDir, nil, nil); err != nil {
			t.Fatal(err)
		}
		if want := read(tt.post); !reflect.DeepEqual(d, want) {
			t.Errorf("%s: filled in\n got %s\nwant %s", tt.pre, d.ATerm(), want.ATerm())
		}
		if err := d.CheckOutputPaths(storepath.DefaultDir, nil, nil); err != nil {
			t.Error(err)
		}
	}
	// Nix 2.8's derivationStrict always sets env[o] before hashing, so a
	// derivation without the env var gets the env var's path (current Nix
	// hashes without it).
	d := read("filled-in-deferred-no-env-var-pre.json")
	if err := d.FillOutputPaths(storepath.DefaultDir, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.CheckOutputPaths(storepath.DefaultDir, nil, nil); err != nil {
		t.Error(err)
	}
	if err := read("bad-path.json").CheckOutputPaths(storepath.DefaultDir, nil, nil); err == nil || !strings.Contains(err.Error(), "incorrect output") {
		t.Errorf("bad-path.json: CheckOutputPaths: %v", err)
	}
	// Nix 2.8's checkDerivationOutputs does not look at deferred outputs,
	// so a wrong env var of one passes (current Nix rejects it).
	if err := read("bad-env-var.json").CheckOutputPaths(storepath.DefaultDir, nil, nil); err != nil {
		t.Errorf("bad-env-var.json: CheckOutputPaths: %v", err)
	}
}

func TestJSONFixtures(t *testing.T) {
	for _, f := range []string{"simple-derivation.json", "hash-modulo/source-first.json", "hash-modulo/intermediate-first.json", "hash-modulo/parent-split.json"} {
		data, err := os.ReadFile(filepath.Join(goldenDir, f))
		if err != nil {
			t.Skipf("golden fixture missing: %v", err)
		}
		d, err := ParseJSON(data)
		if err != nil {
			t.Fatalf("ParseJSON(%s): %v", f, err)
		}
		drvFile := strings.TrimSuffix(f, ".json") + ".drv"
		want, err := os.ReadFile(filepath.Join(goldenDir, drvFile))
		if err != nil {
			t.Fatal(err)
		}
		if got := d.ATerm(); !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %s\nwant %s", f, got, want)
		}
	}
	data, err := os.ReadFile(filepath.Join(goldenDir, "dyn-dep-derivation.json"))
	if err == nil {
		if _, err := ParseJSON(data); err == nil || !strings.Contains(err.Error(), "dynamic outputs") {
			t.Errorf("dyn-dep JSON: %v", err)
		}
	}
}
