package machines

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"ferry/store"
)

const sys = "x86_64-linux"

// TestParse: every field, the defaults, separators and comments, as
// machines.cc@2.8.0 reads them.
func TestParse(t *testing.T) {
	key := "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSUdyV1VuZmJtcUZCVQ=="
	for _, c := range []struct {
		name, spec string
		want       []Machine
	}{
		{"all fields", "ssh://u@h:22 x86_64-linux,aarch64-linux /k 4 2 kvm,big-parallel,kvm benchmark " + key,
			[]Machine{{URI: "ssh://u@h:22", Systems: []string{"x86_64-linux", "aarch64-linux"}, SSHKey: "/k", MaxJobs: 4, SpeedFactor: 2,
				SupportedFeatures: []string{"big-parallel", "kvm"}, MandatoryFeatures: []string{"benchmark"}, PublicHostKey: key}}},
		{"defaults", "h", []Machine{{URI: "ssh://h", Systems: []string{sys}, MaxJobs: 1, SpeedFactor: 1}}},
		{"dashes", "h - - - - - - -", []Machine{{URI: "ssh://h", Systems: []string{sys}, MaxJobs: 1, SpeedFactor: 1}}},
		{"tabs and extra fields ignored", "h\ti686-linux\t-\t3 - - - - extra more",
			[]Machine{{URI: "ssh://h", Systems: []string{"i686-linux"}, MaxJobs: 3, SpeedFactor: 1}}},
		{"systems keep order and duplicates, drop empties", "h ,b,,a,b,",
			[]Machine{{URI: "ssh://h", Systems: []string{"b", "a", "b"}, MaxJobs: 1, SpeedFactor: 1}}},
		{"only commas: no systems", "h , - 0", []Machine{{URI: "ssh://h", Systems: []string{}, MaxJobs: 0, SpeedFactor: 1}}},
		{"speed 0 is 1, plus sign, leading zeros", "h - - +2 0; g - - 007 +3",
			[]Machine{{URI: "ssh://h", Systems: []string{sys}, MaxJobs: 2, SpeedFactor: 1},
				{URI: "ssh://g", Systems: []string{sys}, MaxJobs: 7, SpeedFactor: 3}}},
		{"largest unsigned int", "h - - 4294967295 4294967295",
			[]Machine{{URI: "ssh://h", Systems: []string{sys}, MaxJobs: 4294967295, SpeedFactor: 4294967295}}},
		{"base64 as lenient as Nix's", "h - - - - - - QUJD=!!; g - - - - - - A",
			[]Machine{{URI: "ssh://h", Systems: []string{sys}, MaxJobs: 1, SpeedFactor: 1, PublicHostKey: "QUJD=!!"},
				{URI: "ssh://g", Systems: []string{sys}, MaxJobs: 1, SpeedFactor: 1, PublicHostKey: "A"}}},
		{"separators, blank entries, comments", " a ;; \n\n  # only a comment\nb # c ; d\r\n;e#f",
			[]Machine{{URI: "ssh://a", Systems: []string{sys}, MaxJobs: 1, SpeedFactor: 1},
				{URI: "ssh://b", Systems: []string{sys}, MaxJobs: 1, SpeedFactor: 1},
				// A ";" ends the comment: Nix splits entries first.
				{URI: "ssh://d", Systems: []string{sys}, MaxJobs: 1, SpeedFactor: 1},
				{URI: "ssh://e", Systems: []string{sys}, MaxJobs: 1, SpeedFactor: 1}}},
		{"empty", "", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := Parse(c.spec, sys)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("got %d machines, want %d: %+v", len(got), len(c.want), got)
			}
			for i, m := range got {
				m := *m
				m.Source, m.Line, m.Text = "", 0, ""
				if !reflect.DeepEqual(m, c.want[i]) {
					t.Errorf("machine %d:\n got  %+v\n want %+v", i, m, c.want[i])
				}
			}
		})
	}
}

// TestSchemeless: Machine's constructor rule for the first field.
func TestSchemeless(t *testing.T) {
	for in, want := range map[string]string{
		"host":                     "ssh://host",
		"user@host":                "ssh://user@host",
		"host:2222":                "ssh://host:2222",
		"host?remote-store=x":      "ssh://host?remote-store=x",
		"host?remote-program=/bin": "host?remote-program=/bin", // a "/" anywhere: a path
		"ssh-ng://host":            "ssh-ng://host",
		"ssh://host":               "ssh://host",
		"/srv/store":               "/srv/store",
		"auto":                     "auto",
		"auto?root=x":              "auto?root=x",
		"daemon":                   "daemon",
		"daemon?x=y":               "daemon?x=y",
		"local":                    "local",
		"local?state=x":            "local?state=x",
		"?root=x":                  "?root=x",
		"autos":                    "ssh://autos",
		"localhost":                "ssh://localhost",
	} {
		ms, err := Parse(in, sys)
		if err != nil {
			t.Fatal(err)
		}
		if ms[0].URI != want {
			t.Errorf("%q: URI %q, want %q", in, ms[0].URI, want)
		}
	}
}

// TestParseErrors: a bad line names its source, line, text and column
// (numbered from 0 as Nix's messages do).
func TestParseErrors(t *testing.T) {
	dir := t.TempDir()
	inc := filepath.Join(dir, "inc")
	os.WriteFile(inc, []byte("ok\n\nbad - - x\n"), 0o644)
	for _, c := range []struct {
		spec   string
		source string
		line   int
		text   string
		column int
	}{
		{"h - - 1.5", SettingSource, 1, "h - - 1.5", 3},
		{"a\nb;h x - 4294967296", SettingSource, 2, "h x - 4294967296", 3},
		{"h - - -1", SettingSource, 1, "h - - -1", 3},
		{"h - - -0", SettingSource, 1, "h - - -0", 3},
		{"h - - +", SettingSource, 1, "h - - +", 3},
		{"h - - 1 1.5", SettingSource, 1, "h - - 1 1.5", 4},
		{"h - - 1 -1", SettingSource, 1, "h - - 1 -1", 4},
		{"h - - 1 0x1", SettingSource, 1, "h - - 1 0x1", 4},
		{"h - - 1 1e3 # comment", SettingSource, 1, "h - - 1 1e3 ", 4},
		{"h - - - - - - !!!", SettingSource, 1, "h - - - - - - !!!", 7},
		{"h - - - - - - QUJD!=", SettingSource, 1, "h - - - - - - QUJD!=", 7},
		{"- x86_64-linux", SettingSource, 1, "- x86_64-linux", 0},
		{"a;@" + inc, inc, 3, "bad - - x", 3},
	} {
		_, err := Parse(c.spec, sys)
		var le *LineError
		if !errors.As(err, &le) {
			t.Errorf("%q: error %v, want a LineError", c.spec, err)
			continue
		}
		if le.Source != c.source || le.Line != c.line || le.Text != c.text || le.Column != c.column {
			t.Errorf("%q: %+v, want source %s line %d text %q column %d", c.spec, le, c.source, c.line, c.text, c.column)
		}
		msg := err.Error()
		for _, part := range []string{"line " + itoa(c.line), "'" + c.text + "'", "column #" + itoa(c.column) + " (" + fieldNames[c.column] + ")"} {
			if !strings.Contains(msg, part) {
				t.Errorf("%q: message %q lacks %q", c.spec, msg, part)
			}
		}
		if c.source != SettingSource && !strings.Contains(msg, c.source) {
			t.Errorf("%q: message %q does not name the file", c.spec, msg)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestIncludes: @files nested, relative to the current directory, a
// missing one skipped, an unreadable one an error, a loop an error.
func TestIncludes(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	c := write("c", "c1 - - 3\n")
	b := write("b", "b1 ; @"+c+" ; b2 # @nothing\n@ "+filepath.Join(dir, "missing")+"  \n")
	a := write("a", "# machines\na1\n@"+b+"\n@"+c+"\na2 i686-linux\n")
	ms, err := Parse("first;@"+a+";@"+filepath.Join(dir, "nope")+";last", sys)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, strings.TrimPrefix(m.URI, "ssh://")+"@"+filepath.Base(m.Source)+":"+itoa(m.Line))
	}
	want := []string{"first@builders:1", "a1@a:2", "b1@b:1", "c1@c:1", "b2@b:1", "c1@c:1", "a2@a:5", "last@builders:1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if ms[3].MaxJobs != 3 || ms[6].Systems[0] != "i686-linux" {
		t.Errorf("fields of included machines: %+v %+v", ms[3], ms[6])
	}

	// Relative to the current directory, as Nix's readFile.
	t.Chdir(dir)
	if ms, err := Parse("@c", sys); err != nil || len(ms) != 1 || ms[0].URI != "ssh://c1" {
		t.Errorf("relative @c: %v %+v", err, ms)
	}

	// A directory is not ENOENT: an error, as in Nix.
	if _, err := Parse("@"+dir, sys); err == nil || !errors.Is(err, syscall.EISDIR) {
		t.Errorf("@dir: %v, want EISDIR", err)
	}

	// Loops, direct and through another file.
	self := write("self", "s1\n@"+filepath.Join(dir, "self")+"\n")
	x := filepath.Join(dir, "x")
	write("y", "@"+x+"\n")
	write("x", "x1\n@"+filepath.Join(dir, "y")+"\n")
	for _, p := range []string{self, x} {
		if _, err := Parse("@"+p, sys); err == nil || !strings.Contains(err.Error(), "includes itself") {
			t.Errorf("@%s: %v, want a loop error", p, err)
		}
	}
	// The same file twice (not a loop) gives its machines twice, as Nix.
	if ms, err := Parse("@c;@c", sys); err != nil || len(ms) != 2 {
		t.Errorf("@c;@c: %v %d machines", err, len(ms))
	}
	// A custom reader.
	p := &Parser{System: "s", ReadFile: func(name string) ([]byte, error) {
		if name == "m" {
			return []byte("q"), nil
		}
		return nil, fs.ErrNotExist
	}}
	if ms, err := p.Parse("@m;@n"); err != nil || len(ms) != 1 || ms[0].Systems[0] != "s" {
		t.Errorf("custom reader: %v %+v", err, ms)
	}
}

// TestCanBuild: Machine::allSupported, Machine::mandatoryMet and the
// builtin system rule of build-remote.cc@2.8.0.
func TestCanBuild(t *testing.T) {
	ms, err := Parse("h x86_64-linux,i686-linux - 1 1 kvm,big big", sys)
	if err != nil {
		t.Fatal(err)
	}
	m := ms[0]
	if got := m.AllFeatures(); !reflect.DeepEqual(got, []string{"big", "kvm"}) {
		t.Errorf("AllFeatures %q", got)
	}
	for _, c := range []struct {
		system   string
		required []string
		want     bool
	}{
		{"x86_64-linux", []string{"big"}, true},
		{"i686-linux", []string{"big", "kvm"}, true},
		{"builtin", []string{"big"}, true},
		{"x86_64-linux", nil, false},                  // mandatory big not required
		{"x86_64-linux", []string{"kvm"}, false},      // same
		{"x86_64-linux", []string{"big", "x"}, false}, // x unsupported
		{"aarch64-linux", []string{"big"}, false},
	} {
		if got := m.CanBuild(c.system, c.required); got != c.want {
			t.Errorf("CanBuild(%s, %q) = %v", c.system, c.required, got)
		}
	}
	none, _ := Parse("h , - 1", sys)
	if none[0].CanBuild(sys, nil) || !none[0].CanBuild("builtin", nil) {
		t.Error("a machine without systems builds only builtin")
	}
}

// TestStoreURI: Machine::openStore's parameters, merged as openStore(uri,
// params) does (the machine's win), and readable by store.ParseURI.
func TestStoreURI(t *testing.T) {
	key := "QUJD+/=="
	for _, c := range []struct {
		line   string
		want   string
		params map[string]string
	}{
		{"h - /k - - kvm,big bench " + key,
			"ssh://h?base64-ssh-public-host-key=QUJD+/==&ssh-key=/k&system-features=big%20kvm%20bench",
			map[string]string{"max-connections": "1", "log-fd": "4", "ssh-key": "/k", "base64-ssh-public-host-key": key, "system-features": "big kvm bench"}},
		{"ssh://h?remote-program=ferry&ssh-key=/uri&system-features=x&compress=true&flag",
			// The URI's ssh-key stays: the machine sets none.
			"ssh://h?remote-program=ferry&ssh-key=/uri&compress=true&system-features=",
			map[string]string{"max-connections": "1", "log-fd": "4", "system-features": ""}},
		{"ssh://h?ssh-key=/uri - /field",
			"ssh://h?ssh-key=/field&system-features=", nil},
		{"ssh-ng://h - /k - - a",
			"ssh-ng://h?ssh-key=/k&system-features=a",
			map[string]string{"ssh-key": "/k", "system-features": "a"}},
		// Not ssh: no key parameters, still system-features.
		{"/srv/st?root=/x - /k - - a - " + key, "/srv/st?root=/x&system-features=a",
			map[string]string{"system-features": "a"}},
		{"h - /a&b%c", "ssh://h?ssh-key=/a%26b%25c&system-features=", nil},
	} {
		ms, err := Parse(c.line, sys)
		if err != nil {
			t.Fatal(err)
		}
		m := ms[0]
		if got := m.StoreURI(); got != c.want {
			t.Errorf("%q: StoreURI %q, want %q", c.line, got, c.want)
		}
		if c.params != nil && !reflect.DeepEqual(m.OpenParams(), c.params) {
			t.Errorf("%q: OpenParams %v, want %v", c.line, m.OpenParams(), c.params)
		}
		u, err := store.ParseURI(m.StoreURI())
		if err != nil {
			t.Fatalf("%q: ParseURI: %v", c.line, err)
		}
		for k, v := range m.OpenParams() {
			if internalParams[k] {
				continue
			}
			if u.Params[k] != v {
				t.Errorf("%q: parsed %s=%q, want %q", c.line, k, u.Params[k], v)
			}
		}
	}
}

// FuzzParse: the parser never panics, and what it returns is consistent:
// each machine's text parses alone to the same machine, and its store URI
// parses.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"ssh://u@h x86_64-linux,aarch64-linux /k 4 2 kvm,big benchmark QUJD",
		"h - - - - - - -;g , - 0 +3\n# c\n@inc\n@loop", "a#b;c\r\n", "- x", "h - - 99999999999",
		"h - - 1 1 - - !!", "local?x=y", "?a", "h?system-features=a&&=&x",
	} {
		f.Add(s)
	}
	files := map[string]string{"inc": "i1 - - 2\n@inc2", "inc2": "i2;@missing", "loop": "@loop"}
	f.Fuzz(func(t *testing.T, spec string) {
		p := &Parser{System: sys, ReadFile: func(name string) ([]byte, error) {
			if s, ok := files[name]; ok {
				return []byte(s), nil
			}
			return nil, fs.ErrNotExist
		}}
		ms, err := p.Parse(spec)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		for _, m := range ms {
			if m.SpeedFactor < 1 || m.URI == "" || m.Text == "" || m.Line < 1 {
				t.Fatalf("bad machine %+v", m)
			}
			again, err := p.Parse(m.Text)
			if err != nil || len(again) != 1 {
				t.Fatalf("%q alone: %v, %d machines", m.Text, err, len(again))
			}
			a := *again[0]
			a.Source, a.Line, a.Text = m.Source, m.Line, m.Text // the text may end in the space before a comment
			if !reflect.DeepEqual(&a, m) {
				t.Fatalf("%q alone: %+v, was %+v", m.Text, a, *m)
			}
			// The added parameters never make a URI unreadable. (They may
			// make one readable: the machine's system-features replaces
			// the URI's own, bad escapes and all, as in Nix.)
			_, errURI := store.ParseURI(m.URI)
			if _, err := store.ParseURI(m.StoreURI()); errURI == nil && err != nil {
				t.Fatalf("StoreURI %q: %v; URI %q reads", m.StoreURI(), err, m.URI)
			}
		}
	})
}
