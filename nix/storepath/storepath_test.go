package storepath

import (
	"strings"
	"testing"

	"ferry/nix/hash"
)

func mustHash(t *testing.T, s string) hash.Hash {
	t.Helper()
	h, err := hash.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// The worked examples of docs/store.md §2.5, verified with Nix 2.8.0.
func TestWorkedExamples(t *testing.T) {
	narHello := mustHash(t, "sha256:1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13")
	flatHello := hash.SumString(hash.SHA256, "hello\n")
	d := DefaultDir
	tests := []struct {
		name string
		got  func() (Path, error)
		want Path
	}{
		{"add", func() (Path, error) { return d.MakeFixedOutput("hello.txt", Recursive, narHello, nil, false) }, "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"},
		{"add-fixed sha256", func() (Path, error) { return d.MakeFixedOutput("hello.txt", Flat, flatHello, nil, false) }, "/nix/store/gy454w1cxaq731grqwylhzf4pp9r5izh-hello.txt"},
		{"add-fixed sha1", func() (Path, error) {
			return d.MakeFixedOutput("hello.txt", Flat, hash.SumString(hash.SHA1, "hello\n"), nil, false)
		}, "/nix/store/svdva85yi507g9vncgsaxvnd1r808h4w-hello.txt"},
		{"add-fixed md5", func() (Path, error) {
			return d.MakeFixedOutput("hello.txt", Flat, hash.SumString(hash.MD5, "hello\n"), nil, false)
		}, "/nix/store/dra1cz5vbrhclpv4y1q0psnbkxz581bk-hello.txt"},
		{"add-fixed sha512", func() (Path, error) {
			return d.MakeFixedOutput("hello.txt", Flat, hash.SumString(hash.SHA512, "hello\n"), nil, false)
		}, "/nix/store/9a8mxachqmcv8x2cfijdps9dyxgyyrzm-hello.txt"},
		{"toFile", func() (Path, error) { return d.MakeText("foo.txt", flatHello, nil) }, "/nix/store/xl3jbiq4g9jnqn8yp9y4cski5n3ylk1q-foo.txt"},
		{"toFile with ref", func() (Path, error) {
			return d.MakeText("ref.txt", hash.SumString(hash.SHA256, "see /nix/store/xl3jbiq4g9jnqn8yp9y4cski5n3ylk1q-foo.txt\n"),
				[]Path{"/nix/store/xl3jbiq4g9jnqn8yp9y4cski5n3ylk1q-foo.txt"})
		}, "/nix/store/4vra9dlsyfwvsxycm1pfnwvd4p8b7aan-ref.txt"},
		{"output out", func() (Path, error) {
			return d.MakeOutput("out", mustHash(t, "sha256:cbd84a88dac33c14a874f676ab17db2518d565dc03e891ccf9d4be35138ea813"), "simple")
		}, "/nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple"},
		{"output dev", func() (Path, error) {
			return d.MakeOutput("dev", mustHash(t, "sha256:341615841a2a1f50df6dcdec8682745b28d042ff6b48e0ebd7770754e9a079d0"), "multi")
		}, "/nix/store/qczjas54a9hqfzzngs1ggix0sl4klq0c-multi-dev"},
		{"source with refs and self", func() (Path, error) {
			return d.MakeFixedOutput("rsch-ca2", Recursive, mustHash(t, "sha256:03g08bnpslhgxh1drbgplv7qgh7ysjpqc2rbk24xdchr4v99d557"),
				[]Path{"/nix/store/pfpbg7d54670x5bzv691nkpj87kps8mw-rsch-in.txt"}, true)
		}, "/nix/store/w6yn66wmg27g1fzfsawdc89bc438z0jq-rsch-ca2"},
		{"scratch", func() (Path, error) {
			zero, _ := hash.New(hash.SHA256, make([]byte, 32))
			return d.Make("rewrite:12qnhm73x7lwibimpsz595m9hmav15kd-rsch-ca2.drv:name:out", zero, "rsch-ca2")
		}, "/nix/store/qipnq7zy96a9lg6pfr6ijg986d01kr62-rsch-ca2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.got()
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestHashPlaceholder(t *testing.T) {
	if got := HashPlaceholder("out"); got != "/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9" {
		t.Errorf("HashPlaceholder(out) = %s", got)
	}
}

func TestParse(t *testing.T) {
	good := []string{
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt",
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-.hidden",
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-a+b-c._?=",
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-" + strings.Repeat("x", 211),
		"/nix/store/../store/i9pmrzmpshapij2kin22pff6fc2adavx-x",
		"/nix/store//i9pmrzmpshapij2kin22pff6fc2adavx-x/",
	}
	for _, s := range good {
		p, err := Parse(s)
		if err != nil {
			t.Errorf("Parse(%q): %v", s, err)
			continue
		}
		if p.HashPart() != "i9pmrzmpshapij2kin22pff6fc2adavx" {
			t.Errorf("HashPart(%q) = %q", s, p.HashPart())
		}
	}
	bad := []string{
		"", "nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-x",
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx",
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-",
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavxxfoo",
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adave-x", // e is not nix32
		"/nix/store/I9pmrzmpshapij2kin22pff6fc2adavx-x",
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-" + strings.Repeat("x", 212),
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-a b",
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-a@b",
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-é",
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-.",
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-..",
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-.-foo",
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-..-foo",
		"/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-x/sub",
		"/tmp/i9pmrzmpshapij2kin22pff6fc2adavx-x",
		"/nix/store",
	}
	for _, s := range bad {
		if p, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) = %q, want error", s, p)
		}
	}
}

func TestContentAddress(t *testing.T) {
	for _, s := range []string{
		"fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
		"fixed:md5:4425hx5d1mc9y39llj4k4nm55i",
		"text:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq",
	} {
		ca, err := ParseContentAddress(s)
		if err != nil {
			t.Fatalf("ParseContentAddress(%q): %v", s, err)
		}
		if ca.String() != s {
			t.Errorf("round trip %q -> %q", s, ca.String())
		}
	}
	for _, s := range []string{"fixed", "text:md5:4425hx5d1mc9y39llj4k4nm55i", "nar:sha256:x", "fixed:r:"} {
		if _, err := ParseContentAddress(s); err == nil {
			t.Errorf("ParseContentAddress(%q) succeeded", s)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt")
	f.Add("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-..-foo")
	f.Add("/nix/store/../x")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := Parse(s)
		if err != nil {
			return
		}
		q, err := Parse(string(p))
		if err != nil || q != p {
			t.Fatalf("re-parse of %q gave %q, %v", p, q, err)
		}
		if len(p.HashPart()) != HashLen || p.Name() == "" {
			t.Fatalf("bad parts of %q", p)
		}
	})
}
