package derivation

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"ferry/nix/storepath"
)

const (
	pA  = "/nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple"
	pB  = "/nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple.drv"
	fod = `("out","/nix/store/1ijqscvmqb6qqvnh2f9rk95bnd5w2ig8-fod.txt","sha256","5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")`
)

// drvText builds a derivation text with the given parts.
func drvText(outputs, inputDrvs, inputSrcs, rest string) string {
	return "Derive([" + outputs + "],[" + inputDrvs + "],[" + inputSrcs + "]," + rest + ")"
}

const okRest = `"x86_64-linux","/bin/sh",["-c","a\"b\\c\nd\re\tf"],[("k","v")]`

func TestParseGood(t *testing.T) {
	tests := []struct {
		name, text string
		check      func(*Derivation) bool
	}{
		{"minimal", drvText(`("out","`+pA+`","","")`, "", "", okRest), func(d *Derivation) bool {
			return d.Outputs["out"].Kind() == InputAddressed && d.Args[1] == "a\"b\\c\nd\re\tf"
		}},
		{"deferred", drvText(`("out","","","")`, "", "", okRest), func(d *Derivation) bool { return d.Outputs["out"].Kind() == Deferred }},
		{"floating", drvText(`("out","","r:sha256","")`, "", "", okRest), func(d *Derivation) bool { return d.Outputs["out"].Kind() == CAFloating }},
		{"impure", drvText(`("out","","r:sha256","impure")`, "", "", okRest), func(d *Derivation) bool { return d.Outputs["out"].Kind() == Impure }},
		{"fixed", drvText(fod, "", "", okRest), func(d *Derivation) bool { return d.Outputs["out"].Kind() == CAFixed }},
		{"inputs", drvText(`("out","","","")`, `("`+pB+`",["dev","out"])`, `"`+pA+`"`, okRest), func(d *Derivation) bool {
			return len(d.InputDrvs[pB]) == 2 && d.InputSrcs[0] == pA
		}},
		{"utf8 and control bytes", drvText(`("out","","","")`, "", "", "\"x86_64-linux\",\"/bin/sh\",[],[(\"é\",\"\x01\x7f$\")]"), func(d *Derivation) bool {
			return d.Env["é"] == "\x01\x7f$"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := "simple"
			if tt.name == "fixed" {
				name = "fod.txt"
			}
			d, err := Parse([]byte(tt.text), name)
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(d) {
				t.Errorf("unexpected result %+v", d)
			}
			if got := string(d.ATerm()); got != tt.text {
				t.Errorf("ATerm:\n got %s\nwant %s", got, tt.text)
			}
		})
	}
}

func TestParseBad(t *testing.T) {
	out := `("out","","","")`
	tests := []struct {
		name, text, want string
	}{
		{"empty", "", `offset 0: expected "Derive(" at the start`},
		{"not aterm", "{}", `expected "Derive("`},
		{"drv with version", `DrvWithVersion("xp-dyn-drv",[],[],[],"x","y",[],[])`, "DrvWithVersion"},
		{"truncated", drvText(out, "", "", okRest)[:40], "offset 32: unterminated string in platform"},
		{"truncated in string", `Derive([("out`, "unterminated string in output name"},
		{"missing close", strings.TrimSuffix(drvText(out, "", "", okRest), ")"), `expected ")" to end the derivation`},
		{"trailing garbage", drvText(out, "", "", okRest) + "\n", "trailing data"},
		{"bad escape", drvText(out, "", "", `"x","/bin/sh",["\x"],[]`), `bad escape "\\x" in argument`},
		{"escape in platform", drvText(out, "", "", `"x\"y","/bin/sh",[],[]`), "backslash in platform"},
		{"escape in path", drvText(`("out","/nix/store/\n","","")`, "", "", okRest), "backslash in output path"},
		{"raw newline", drvText(out, "", "", "\"x\",\"/bin/\nsh\",[],[]"), "raw control character '\\n' in builder"},
		{"non-store path", drvText(`("out","/tmp/foo","","")`, "", "", okRest), "not in the Nix store"},
		{"relative path", drvText(out, "", `"foo"`, okRest), "input source: parse store path"},
		{"bad hash part", drvText(out, "", `"/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x"`, okRest), "input source"},
		{"input not drv", drvText(out, `("`+pA+`",["out"])`, "", okRest), "does not end in .drv"},
		{"output 3-tuple", drvText(`("out","","")`, "", "", okRest), `expected "," before the output hash`},
		{"output 5-tuple", drvText(`("out","","","","")`, "", "", okRest), `expected ")" to end an output (a 4-tuple)`},
		{"env 3-tuple", drvText(out, "", "", `"x","/bin/sh",[],[("a","b","c")]`), "to end an environment variable (a pair)"},
		{"leading comma", drvText(","+out, "", "", okRest), `offset 8: expected "(" to start an output, found ",(`},
		{"missing comma", drvText(out+out, "", "", okRest), "expected ',' or ']' in outputs"},
		{"trailing comma", drvText(out+",", "", "", okRest), `expected "(" to start an output`},
		{"duplicate output", drvText(out+","+out, "", "", okRest), `duplicate output "out"`},
		{"duplicate env", drvText(out, "", "", `"x","/bin/sh",[],[("a","b"),("a","c")]`), `duplicate environment variable "a"`},
		{"duplicate src", drvText(out, "", `"`+pA+`","`+pA+`"`, okRest), "duplicate input source"},
		{"unknown algo", drvText(`("out","","r:sha7","")`, "", "", okRest), "output hash algorithm"},
		{"text method", drvText(`("out","","text:sha256","")`, "", "", okRest), "not supported by Nix 2.8"},
		{"bad fixed hash", drvText(`("out","`+pA+`","sha256","abc")`, "", "", okRest), "offset 77: output hash of output \"out\": parse hash"},
		{"floating with path", drvText(`("out","`+pA+`","r:sha256","")`, "", "", okRest), "floating content-addressed output has path"},
		{"hash without algo", drvText(`("out","","","abc")`, "", "", okRest), "output without hash algorithm has hash"},
		{"fixed path mismatch", drvText(fod, "", "", okRest), "but its hash gives"},
		{"dynamic input", drvText(out, `("`+pB+`",(["out"],[]))`, "", okRest), "dynamic-derivation node"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse([]byte(tt.text), "other")
			if err == nil {
				t.Fatalf("Parse succeeded: %s", d.ATerm())
			}
			if !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrSyntax) {
				t.Errorf("error %q, want it to contain %q and wrap ErrSyntax", err, tt.want)
			}
		})
	}
	t.Run("huge", func(t *testing.T) {
		text := []byte(drvText(out, "", "", `"x","/bin/sh",[],[("a","`+strings.Repeat("b", 1000)+`")]`))
		_, err := parse(storepath.DefaultDir, text, "x", 512)
		if err == nil || !strings.Contains(err.Error(), "more than the limit of 512") {
			t.Errorf("error %v", err)
		}
	})
}

func TestParseUnsorted(t *testing.T) {
	// Nix re-sorts lists it reads; so does Parse.
	text := drvText(`("out","","",""),("dev","","","")`, "", `"`+pB+`","`+pA+`"`, `"x","/bin/sh",[],[("b",""),("a","")]`)
	d, err := Parse([]byte(text), "x")
	if err != nil {
		t.Fatal(err)
	}
	want := drvText(`("dev","","",""),("out","","","")`, "", `"`+pB+`","`+pA+`"`, `"x","/bin/sh",[],[("a",""),("b","")]`)
	// pB (3ghs…) sorts before pA (94f9…).
	if got := string(d.ATerm()); got != want {
		t.Errorf("ATerm:\n got %s\nwant %s", got, want)
	}
}

func fuzzSeeds(f *testing.F) {
	files, _ := filepath.Glob("testdata/drv/*.drv")
	for _, p := range files {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte(drvText(`("out","","r:sha256","impure")`, `("`+pB+`",["a","b"])`, `"`+pA+`"`, okRest)))
}

func FuzzParse(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse(data, "")
		if err != nil {
			return
		}
		out := d.ATerm()
		d2, err := Parse(out, d.Name)
		if err != nil {
			t.Fatalf("reparse of %q: %v", out, err)
		}
		if !reflect.DeepEqual(d, d2) {
			t.Fatalf("reparse differs: %q", out)
		}
		if out2 := d2.ATerm(); !bytes.Equal(out, out2) {
			t.Fatalf("ATerm not stable:\n%q\n%q", out, out2)
		}
	})
}

func FuzzParseJSON(f *testing.F) {
	files, _ := filepath.Glob("testdata/drv/*.drv.json")
	for _, p := range append(files, "testdata/show-derivation.json") {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte(`{"outputs":{"out":{}},"inputSrcs":[],"inputDrvs":{},"system":"x","builder":"y","args":[],"env":{"name":"n"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := ParseJSON(data)
		if err != nil {
			return
		}
		d.ATerm()
		if d.Name != "" && storepath.ValidateName(d.Name+".drv") == nil {
			if _, err := d.ShowJSON(storepath.Path("/nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-" + d.Name + ".drv")); err != nil {
				t.Fatalf("ShowJSON of a parsed derivation: %v", err)
			}
		}
	})
}
