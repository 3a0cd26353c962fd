package derivation

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"ferry/internal/nixtest"
	"ferry/nix/hash"
	"ferry/nix/storepath"
)

// nixString quotes s as a Nix string literal.
func nixString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "${", `\${`, "\n", `\n`, "\r", `\r`, "\t", `\t`)
	return `"` + r.Replace(s) + `"`
}

// narOfFile is the NAR of a regular file with contents data.
func narOfFile(data []byte) []byte {
	var b bytes.Buffer
	str := func(s []byte) {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(s)))
		b.Write(n[:])
		b.Write(s)
		b.Write(make([]byte, (8-len(s)%8)%8))
	}
	for _, s := range []string{"nix-archive-1", "(", "type", "regular", "contents"} {
		str([]byte(s))
	}
	str(data)
	str([]byte(")"))
	return b.Bytes()
}

var weirdPieces = []string{
	`quote"`, `back\slash`, "new\nline", "tab\t", "cr\r", "dollar$", "${notinterp}", "unicode é ☃",
	"\x01ctl\x1f", "del\x7f", "''", `\n literal`, " ", "",
}

func weird(r *rand.Rand) string {
	var b strings.Builder
	for i := r.Intn(4); i >= 0; i-- {
		b.WriteString(weirdPieces[r.Intn(len(weirdPieces))])
	}
	return b.String()
}

// genExpr writes a Nix file with seeded random derivations: fixed-output
// ones (flat and recursive, md5/sha1/sha256/sha512, hashes in several
// encodings), then four levels of multi-output derivations referring to
// outputs of earlier ones, with odd env values, passAsFile, toFile and
// path inputs.
func genExpr(r *rand.Rand, dir string) string {
	var b strings.Builder
	b.WriteString("let\n")
	var names []string // attribute names of earlier derivations
	outs := map[string][]string{}
	algos := []hash.Algorithm{hash.MD5, hash.SHA1, hash.SHA256, hash.SHA512}
	n := 0
	for _, a := range algos {
		for _, rec := range []bool{false, true} {
			name := fmt.Sprintf("fod%d", n)
			n++
			content := []byte(fmt.Sprintf("content %d %d\n", n, r.Int()))
			var h hash.Hash
			mode := "flat"
			if rec {
				mode = "recursive"
				h = hash.Sum(a, narOfFile(content))
			} else {
				h = hash.Sum(a, content)
			}
			var hashAttrs string
			switch r.Intn(3) {
			case 0:
				hashAttrs = fmt.Sprintf("outputHashAlgo = %q; outputHash = %q;", a, h.Hex())
			case 1:
				hashAttrs = fmt.Sprintf("outputHashAlgo = %q; outputHash = %q;", a, h.Encode(hash.Nix32, false))
			default:
				hashAttrs = fmt.Sprintf("outputHash = %q;", h.SRI())
			}
			fmt.Fprintf(&b, "  %s = derivation { name = \"fod-%s-%s.txt\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [\"-c\" %s]; outputHashMode = %q; %s };\n",
				name, a, mode, nixString("printf %s "+fmt.Sprintf("%q", content)+" > $out"), mode, hashAttrs)
			names = append(names, name)
			outs[name] = []string{"out"}
		}
	}
	os.WriteFile(filepath.Join(dir, "src.txt"), []byte("a source\n"), 0o644)
	allOuts := []string{"out", "dev", "lib", "doc", "bin"}
	for level := 1; level <= 4; level++ {
		for i := 0; i < 6; i++ {
			name := fmt.Sprintf("l%dd%d", level, i)
			var os []string
			if r.Intn(2) == 0 {
				os = []string{"out"}
			} else {
				perm := r.Perm(len(allOuts))
				for _, j := range perm[:1+r.Intn(len(allOuts))] {
					os = append(os, allOuts[j])
				}
			}
			var attrs []string
			attrs = append(attrs, fmt.Sprintf("name = \"drv-%d-%d\"", level, i), `system = "x86_64-linux"`, `builder = "/bin/sh"`)
			if !(len(os) == 1 && os[0] == "out" && r.Intn(2) == 0) {
				attrs = append(attrs, "outputs = [ "+quoteAll(os)+" ]")
			}
			var deps []string
			for k := r.Intn(4); k >= 0; k-- {
				dep := names[r.Intn(len(names))]
				if level > 1 && k == 0 {
					dep = fmt.Sprintf("l%dd%d", level-1, r.Intn(6)) // a chain through every level
				}
				o := outs[dep][r.Intn(len(outs[dep]))]
				deps = append(deps, fmt.Sprintf("${%s.%s}", dep, o))
			}
			attrs = append(attrs, fmt.Sprintf("deps = \"%s\"", strings.Join(deps, " ")))
			for k := r.Intn(4); k > 0; k-- {
				attrs = append(attrs, fmt.Sprintf("v%d = %s", k, nixString(weird(r))))
			}
			args := []string{nixString("-c"), nixString("echo " + weird(r))}
			attrs = append(attrs, "args = [ "+strings.Join(args, " ")+" ]")
			if r.Intn(2) == 0 {
				attrs = append(attrs, `passAsFile = [ "deps" "v1" ]`, fmt.Sprintf("v1 = %s", nixString(weird(r))))
			}
			switch r.Intn(4) {
			case 0:
				attrs = append(attrs, fmt.Sprintf("file = builtins.toFile \"f%d-%d\" %s", level, i, nixString(weird(r))))
			case 1:
				attrs = append(attrs, "src = ./src.txt")
			case 2:
				attrs = append(attrs, "flag = true", "off = false", "num = 42", `list = [ "a" 1 true ]`, "nul = null")
			}
			fmt.Fprintf(&b, "  %s = derivation { %s; };\n", name, strings.Join(dedupAttrs(attrs), "; "))
			names = append(names, name)
			outs[name] = os
		}
	}
	b.WriteString("in {\n")
	for _, n := range names {
		fmt.Fprintf(&b, "  inherit %s;\n", n)
	}
	b.WriteString("}\n")
	return b.String()
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, " ")
}

// dedupAttrs keeps the last of attributes with the same name.
func dedupAttrs(attrs []string) []string {
	seen := map[string]int{}
	var out []string
	for _, a := range attrs {
		k, _, _ := strings.Cut(a, " =")
		if i, ok := seen[k]; ok {
			out[i] = a
			continue
		}
		seen[k] = len(out)
		out = append(out, a)
	}
	return out
}

// TestInteropNix instantiates seeded random derivations with the real
// nix-instantiate 2.8 and checks that Parse/ATerm, Path, FillOutputPaths,
// CheckOutputPaths and MarshalShowJSON agree with Nix byte for byte.
func TestInteropNix(t *testing.T) {
	nixtest.RequireNix(t)
	for _, seed := range []int64{20220510, 1, 2} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { interop(t, seed) })
	}
}

func interop(t *testing.T, seed int64) {
	tmp := t.TempDir()
	store := filepath.Join(tmp, "store")
	r := rand.New(rand.NewSource(seed))
	expr := genExpr(r, tmp)
	exprFile := filepath.Join(tmp, "expr.nix")
	if err := os.WriteFile(exprFile, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	nixtest.Nix(t, nil, "nix-instantiate", "--store", store, exprFile)

	storeDir := filepath.Join(store, "nix", "store")
	files, err := filepath.Glob(filepath.Join(storeDir, "*.drv"))
	if err != nil || len(files) < 30 {
		t.Fatalf("expected many .drv files, got %d (%v)", len(files), err)
	}
	raw := map[storepath.Path][]byte{}
	drvs := map[storepath.Path]*Derivation{}
	resolve := func(p storepath.Path) (*Derivation, error) {
		data, err := os.ReadFile(filepath.Join(storeDir, p.Base()))
		if err != nil {
			return nil, err
		}
		name, err := NameFromPath(p)
		if err != nil {
			return nil, err
		}
		return Parse(data, name)
	}
	memo := &Memo{}
	kinds := map[Kind]int{}
	for _, f := range files {
		p, err := storepath.DefaultDir.Join(filepath.Base(f))
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		name, _ := NameFromPath(p)
		d, err := Parse(data, name)
		if err != nil {
			t.Fatalf("Parse(%s): %v\n%s", p, err, data)
		}
		raw[p], drvs[p] = data, d
		if got := d.ATerm(); !bytes.Equal(got, data) {
			t.Errorf("%s: ATerm differs:\n got %q\nwant %q", p, got, data)
		}
		if got, err := d.Path(storepath.DefaultDir); err != nil || got != p {
			t.Errorf("%s: Path = %s, %v", p, got, err)
		}
		if err := d.CheckOutputPaths(storepath.DefaultDir, resolve, memo); err != nil {
			t.Errorf("%s: CheckOutputPaths: %v", p, err)
		}
		c := d.Clone()
		for id, o := range c.Outputs {
			kinds[o.Kind()]++
			if o.Kind() == CAFixed {
				o.Path = ""
			} else {
				o = Output{}
			}
			c.Outputs[id] = o
			c.Env[id] = ""
		}
		if err := c.FillOutputPaths(storepath.DefaultDir, resolve, memo); err != nil {
			t.Fatalf("%s: FillOutputPaths: %v", p, err)
		}
		if !reflect.DeepEqual(c, d) {
			t.Errorf("%s: FillOutputPaths:\n got %s\nwant %s", p, c.ATerm(), d.ATerm())
		}
	}
	t.Logf("%d derivations, outputs by kind %v", len(drvs), kinds)
	if kinds[CAFixed] < 8 || kinds[InputAddressed] < 24 {
		t.Errorf("too few outputs of each kind: %v", kinds)
	}

	// JSON, compared byte for byte with nix show-derivation.
	args := []string{"show-derivation", "--store", store}
	var paths []string
	for p := range drvs {
		paths = append(paths, string(p))
	}
	sort.Strings(paths)
	want := nixtest.Nix(t, nil, "nix", append(args, paths...)...)
	got, err := MarshalShowJSON(drvs)
	if err != nil {
		t.Fatal(err)
	}
	for _, esc := range []string{`\u0001`, `\u001f`, `\r`, `\t`, `\"`, `\\`, "é", "\x7f"} {
		if !bytes.Contains(want, []byte(esc)) {
			t.Errorf("generated derivations never produce %q in JSON; raise the variety", esc)
		}
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		for i := 0; i < len(gl) && i < len(wl); i++ {
			if gl[i] != wl[i] {
				t.Fatalf("JSON differs from nix show-derivation at line %d:\n got %q\nwant %q", i+1, gl[i], wl[i])
			}
		}
		t.Fatalf("JSON differs in length: %d vs %d lines", len(gl), len(wl))
	}
	for _, p := range paths {
		js, err := drvs[storepath.Path(p)].ShowJSON(storepath.Path(p))
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseJSON(js)
		if err != nil {
			t.Fatalf("ParseJSON(%s): %v", p, err)
		}
		if !utf8Only(back) {
			continue
		}
		if !bytes.Equal(back.ATerm(), raw[storepath.Path(p)]) {
			t.Errorf("%s: ATerm(ParseJSON(JSON)) differs", p)
		}
	}
}

func utf8Only(d *Derivation) bool {
	s := string(d.ATerm())
	return strings.ToValidUTF8(s, "\uFFFD") == s
}
