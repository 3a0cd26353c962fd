package localstore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"ferry/internal/nixtest"
	"ferry/nix/hash"
	"ferry/nix/storepath"
	"ferry/store"
)

// TestMain doubles as the helper process for the multi-process tests: with
// FERRY_LS_HELPER set, the test binary runs one helper and exits.
func TestMain(m *testing.M) {
	if mode := os.Getenv("FERRY_LS_HELPER"); mode != "" {
		os.Exit(runHelper(mode, os.Getenv("FERRY_LS_ROOT"), os.Getenv("FERRY_LS_ARG")))
	}
	os.Exit(m.Run())
}

// helperCmd returns a command running helper mode in a re-executed test
// binary.
func helperCmd(mode, root, arg string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FERRY_LS_HELPER="+mode, "FERRY_LS_ROOT="+root, "FERRY_LS_ARG="+arg)
	return cmd
}

func openStore(t testing.TB, root string) *Store {
	t.Helper()
	s, err := Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustPath(t testing.TB, s string) storepath.Path {
	t.Helper()
	p, err := storepath.Parse(strings.TrimSpace(s))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// writeTree creates files under dir from a map of relative path to
// contents; a name ending in "*" is executable, "@target" makes a symlink.
func writeTree(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, "*") {
			name = strings.TrimSuffix(name, "*")
			mode = 0o755
		}
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(content, "@"); ok {
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
}

// facts is what both ferry and nix path-info --json report about a path.
type facts struct {
	NarHash    string
	NarSize    uint64
	References []string
	Deriver    string
	CA         string
	Ultimate   bool
	Sigs       []string
	RegTime    int64
}

func nixFacts(t testing.TB, root string) map[string]facts {
	t.Helper()
	out := nixtest.Nix(t, nil, "nix", "path-info", "--store", root, "--json", "--all")
	var rows []struct {
		Path             string   `json:"path"`
		NarHash          string   `json:"narHash"`
		NarSize          uint64   `json:"narSize"`
		References       []string `json:"references"`
		Deriver          string   `json:"deriver"`
		CA               string   `json:"ca"`
		Ultimate         bool     `json:"ultimate"`
		Signatures       []string `json:"signatures"`
		RegistrationTime int64    `json:"registrationTime"`
	}
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("nix path-info: %v\n%s", err, out)
	}
	m := map[string]facts{}
	for _, r := range rows {
		h, err := hash.Parse(r.NarHash)
		if err != nil {
			t.Fatal(err)
		}
		refs := append([]string{}, r.References...)
		sort.Strings(refs)
		m[r.Path] = facts{h.Encode(hash.Nix32, true), r.NarSize, refs, r.Deriver, r.CA, r.Ultimate, r.Signatures, r.RegistrationTime}
	}
	return m
}

func ferryFacts(t testing.TB, s *Store) map[string]facts {
	t.Helper()
	ctx := context.Background()
	all, err := s.QueryAllValidPaths(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]facts{}
	for _, p := range all {
		info, err := s.QueryPathInfo(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		m[string(p)] = infoFacts(info)
	}
	return m
}

func infoFacts(info *store.PathInfo) facts {
	refs := []string{}
	for _, r := range info.References {
		refs = append(refs, string(r))
	}
	sort.Strings(refs)
	return facts{info.NarHash.Encode(hash.Nix32, true), info.NarSize, refs, string(info.Deriver), info.CA.String(), info.Ultimate, info.Sigs, info.RegistrationTime.Unix()}
}

func compareFacts(t testing.TB, ferry, nix map[string]facts) {
	t.Helper()
	if len(ferry) != len(nix) {
		t.Errorf("ferry knows %d paths, nix %d", len(ferry), len(nix))
	}
	for p, f := range ferry {
		n, ok := nix[p]
		if !ok {
			t.Errorf("%s: unknown to nix", p)
			continue
		}
		if !reflect.DeepEqual(f, n) {
			t.Errorf("%s:\nferry %+v\nnix   %+v", p, f, n)
		}
	}
}

// nixVerify runs nix-store --verify --check-contents and fails on any
// complaint.
func nixVerify(t testing.TB, root string) {
	t.Helper()
	_, stderr, err := nixtest.Try(t, nil, "nix-store", "--store", root, "--verify", "--check-contents")
	if err != nil || bytes.Contains(stderr, []byte("modified")) || bytes.Contains(stderr, []byte("disappeared")) || bytes.Contains(stderr, []byte("error")) {
		t.Fatalf("nix-store --verify --check-contents: %v\n%s", err, stderr)
	}
}

func fatalIf(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

var _ = fmt.Sprint
