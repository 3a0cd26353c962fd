package store

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseURI(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want URI
	}{
		{"", URI{Scheme: "local"}},
		{"auto", URI{Scheme: "local", Path: "auto"}},
		{"/tmp/s", URI{Scheme: "local", Path: "/tmp/s"}},
		{"rel/dir", URI{Scheme: "local", Path: "rel/dir"}},
		{"local?root=/x", URI{Scheme: "local", Path: "local", Params: map[string]string{"root": "/x"}}},
		{"/tmp/s?store=/nix/store", URI{Scheme: "local", Path: "/tmp/s", Params: map[string]string{"store": "/nix/store"}}},
		{"ssh://h", URI{Scheme: "ssh", Authority: "h"}},
		{"ssh://u@h:22?remote-program=/bin/ferry&remote-store=/s", URI{Scheme: "ssh", Authority: "u@h:22",
			Params: map[string]string{"remote-program": "/bin/ferry", "remote-store": "/s"}}},
		{"ssh://h/path", URI{Scheme: "ssh", Authority: "h", Path: "/path"}},
		{"https://cache.example/", URI{Scheme: "https", Authority: "cache.example", Path: "/"}},
		// Nix's decodeQuery: "+" is kept, a bare key is ignored, the first
		// of two wins, and a nested store URI keeps its own "?" and "=".
		{"ssh://h?remote-store=/r%3Fstore%3D/l%26state%3D/s&a+b=c+d&bare&a+b=x", URI{Scheme: "ssh", Authority: "h",
			Params: map[string]string{"remote-store": "/r?store=/l&state=/s", "a+b": "c+d"}}},
		{"/r?store=/l?x=y", URI{Scheme: "local", Path: "/r", Params: map[string]string{"store": "/l?x=y"}}},
	} {
		got, err := ParseURI(tc.in)
		if err != nil {
			t.Errorf("ParseURI(%q): %v", tc.in, err)
			continue
		}
		tc.want.Raw = tc.in
		if tc.want.Params == nil {
			tc.want.Params = map[string]string{}
		}
		if diff := cmp.Diff(&tc.want, got); diff != "" {
			t.Errorf("ParseURI(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
	for _, bad := range []string{"://h", "ssh://h?a=%zz"} {
		if _, err := ParseURI(bad); err == nil {
			t.Errorf("ParseURI(%q) succeeded", bad)
		}
	}
}

func TestOpenUnknownScheme(t *testing.T) {
	_, err := Open(context.Background(), "daemon-of-doom://x", nil)
	if err == nil || !strings.Contains(err.Error(), "does not support daemon-of-doom://") {
		t.Errorf("Open of an unknown scheme: %v", err)
	}
	if err := Unsupported("ssh://h", "collect garbage"); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), `"ssh://h" cannot collect garbage`) {
		t.Errorf("Unsupported: %v", err)
	}
}

func FuzzParseURI(f *testing.F) {
	for _, s := range []string{"", "/tmp/s?store=/x&state=/y", "ssh://u@h:22/p?remote-program=a%20b", "local?root=x", "a://", "ssh://[::1]:22"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURI(s)
		if err != nil {
			return
		}
		if u.Raw != s || u.Scheme == "" || u.Params == nil {
			t.Fatalf("ParseURI(%q) = %+v", s, u)
		}
		if u.Scheme == "local" && (strings.Contains(u.Path, "?") || u.Authority != "") {
			t.Fatalf("ParseURI(%q): local store path %q authority %q", s, u.Path, u.Authority)
		}
	})
}
