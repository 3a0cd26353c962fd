package signature_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"ferry/internal/nixtest"
	"ferry/nix/hash"
	"ferry/nix/signature"
	"ferry/nix/storepath"
)

// nixKeys has Nix 2.8 make a key pair and returns ferry's parse of it and
// the files' paths.
func nixKeys(t *testing.T, dir, name string) (sk signature.SecretKey, pk signature.PublicKey, skFile, pkFile string) {
	t.Helper()
	skFile, pkFile = filepath.Join(dir, name+".sec"), filepath.Join(dir, name+".pub")
	nixtest.Nix(t, nil, "nix-store", "--generate-binary-cache-key", name, skFile, pkFile)
	skText, err := os.ReadFile(skFile)
	if err != nil {
		t.Fatal(err)
	}
	pkText, err := os.ReadFile(pkFile)
	if err != nil {
		t.Fatal(err)
	}
	if sk, err = signature.ParseSecretKey(string(skText)); err != nil {
		t.Fatalf("Nix's secret key: %v", err)
	}
	if pk, err = signature.ParsePublicKey(string(pkText)); err != nil {
		t.Fatalf("Nix's public key %s: %v", pkText, err)
	}
	// Byte-identical re-encoding, and the public half is Nix's.
	if sk.Encode() != string(skText) || pk.String() != string(pkText) || sk.Name() != name || pk.Name() != name {
		t.Errorf("key %s does not round-trip: %q / %q", name, pk.String(), pkText)
	}
	if !sk.PublicKey().Equal(pk) {
		t.Errorf("key %s: ferry's public half %s, Nix's %s", name, sk.PublicKey(), pk)
	}
	return sk, pk, skFile, pkFile
}

// ferryKeys writes a key pair ferry generated where Nix can read it.
func ferryKeys(t *testing.T, dir, name string) (sk signature.SecretKey, skFile, pub string) {
	t.Helper()
	sk, err := signature.GenerateSecretKey(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	skFile = filepath.Join(dir, name+".sec")
	if err := os.WriteFile(skFile, []byte(sk.Encode()), 0o600); err != nil {
		t.Fatal(err)
	}
	return sk, skFile, sk.PublicKey().String()
}

type info struct {
	Path       storepath.Path   `json:"path"`
	NarHash    string           `json:"narHash"`
	NarSize    uint64           `json:"narSize"`
	References []storepath.Path `json:"references"`
	CA         string           `json:"ca"`
	Signatures []string         `json:"signatures"`
}

// pathInfos is `nix path-info --json` with the signatures.
func pathInfos(t *testing.T, store string, paths ...string) map[storepath.Path]info {
	t.Helper()
	out := nixtest.Nix(t, nil, "nix", append([]string{"path-info", "--json", "--store", store}, paths...)...)
	var list []info
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("nix path-info: %v\n%s", err, out)
	}
	m := map[storepath.Path]info{}
	for _, i := range list {
		m[i.Path] = i
	}
	return m
}

func (i info) hash(t *testing.T) hash.Hash {
	t.Helper()
	h, err := hash.Parse(i.NarHash)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// inputAddressedPaths builds, in a fresh store, three paths without a
// content address (so that Nix checks their signatures): two files and a
// text object referring to both, as a store that built them would have
// them. Nix makes them content-addressed in a scratch store (nix-store
// --add, builtins.toFile) and nix-store --import brings them over as
// plain input-addressed paths.
func inputAddressedPaths(t *testing.T, dir string) (store string, paths []string) {
	t.Helper()
	scratch, store := filepath.Join(dir, "scratch"), filepath.Join(dir, "store")
	for _, name := range []string{"one", "two"} {
		f := filepath.Join(dir, name)
		os.WriteFile(f, []byte("contents of "+name+"\n"), 0o644)
		paths = append(paths, nixtest.Line(t, "nix-store", "--store", scratch, "--add", f))
	}
	expr := `builtins.toFile "refs" "${builtins.storePath "` + paths[1] + `"} ${builtins.storePath "` + paths[0] + `"}"`
	text := strings.Trim(nixtest.Line(t, "nix-instantiate", "--store", scratch, "--read-write-mode", "--eval", "-E", expr), `"`)
	paths = append(paths, text)
	exp := nixtest.Nix(t, nil, "nix-store", append([]string{"--store", scratch, "--export"}, paths...)...)
	nixtest.Nix(t, exp, "nix-store", "--store", store, "--import")
	infos := pathInfos(t, store, paths...)
	if len(infos) != 3 || len(infos[storepath.Path(text)].References) != 2 {
		t.Fatalf("imported %+v", infos)
	}
	for _, i := range infos {
		if i.CA != "" || len(i.Signatures) != 0 {
			t.Fatalf("imported path %+v has a content address or signatures", i)
		}
	}
	return store, paths
}

// Keys Nix generates parse, and re-encode byte for byte.
func TestInteropKeys(t *testing.T) {
	nixtest.RequireNix(t)
	dir := t.TempDir()
	for _, name := range []string{"test-1", "cache.example.org-1", "x"} {
		nixKeys(t, dir, name)
	}
}

// ferry's signatures of real store paths are byte-identical to `nix store
// sign`'s, with Nix's key and with a key ferry generated; ferry verifies
// Nix's, and `nix store verify` accepts the paths only once signed.
func TestInteropSign(t *testing.T) {
	nixtest.RequireNix(t)
	dir := t.TempDir()
	store, paths := inputAddressedPaths(t, dir)
	nixSK, nixPK, nixSKFile, _ := nixKeys(t, dir, "nix-test-1")
	ferrySK, ferrySKFile, ferryPub := ferryKeys(t, dir, "ferry-test-1")

	verify := func(pub string) error {
		_, _, err := nixtest.Try(t, nil, "nix", append([]string{"store", "verify", "--no-contents", "--store", store, "--trusted-public-keys", pub}, paths...)...)
		return err
	}
	if verify(nixPK.String()) == nil {
		t.Fatal("nix store verify accepts unsigned paths: the test would prove nothing")
	}
	nixtest.Nix(t, nil, "nix", append([]string{"store", "sign", "--store", store, "-k", nixSKFile}, paths...)...)
	nixtest.Nix(t, nil, "nix", append([]string{"store", "sign", "--store", store, "-k", ferrySKFile}, paths...)...)
	if err := verify(nixPK.String()); err != nil {
		t.Errorf("nix store verify with Nix's key: %v", err)
	}
	if err := verify(ferryPub); err != nil {
		t.Errorf("nix store verify with ferry's key: %v", err)
	}

	keys := signature.PublicKeys{}
	keys.Add(nixPK)
	keys.Add(ferrySK.PublicKey())
	for p, i := range pathInfos(t, store, paths...) {
		var want []string
		for _, sk := range []signature.SecretKey{nixSK, ferrySK} {
			s, err := sk.SignPath(p, i.hash(t), i.NarSize, i.References)
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, s)
		}
		for _, w := range want {
			found := false
			for _, s := range i.Signatures {
				found = found || s == w
			}
			if !found {
				t.Errorf("%s: ferry's signature %s is not among Nix's %q", p, w, i.Signatures)
			}
		}
		if len(i.Signatures) != 2 {
			t.Errorf("%s: Nix has %d signatures, want 2: %q", p, len(i.Signatures), i.Signatures)
		}
		n, err := keys.VerifyPath(p, i.hash(t), i.NarSize, i.References, i.Signatures)
		if n != 2 || err != nil {
			t.Errorf("%s: ferry verifies %d of Nix's signatures, %v", p, n, err)
		}
		only, _ := signature.ParsePublicKeys([]string{nixPK.String()})
		if n, err := only.VerifyPath(p, i.hash(t), i.NarSize, i.References, i.Signatures); n != 1 || err != nil {
			t.Errorf("%s: with Nix's key alone %d, %v", p, n, err)
		}
		if n, _ := keys.VerifyPath(p, i.hash(t), i.NarSize+1, i.References, i.Signatures); n != 0 {
			t.Errorf("%s: signatures verify for another NAR size", p)
		}
	}
}

var sigLine = regexp.MustCompile(`(?m)^Sig: .*\n?`)

// Nix, copying from a binary cache into a local store with require-sigs,
// accepts a path carrying only a signature ferry made, and rejects, or
// fails on, exactly the signatures ferry rejects or fails on.
func TestInteropNixChecksFerrySignatures(t *testing.T) {
	nixtest.RequireNix(t)
	dir := t.TempDir()
	store, paths := inputAddressedPaths(t, dir)
	cache := filepath.Join(dir, "cache")
	nixtest.Nix(t, nil, "nix", "copy", "--store", store, "--to", "file://"+cache, paths[2])
	infos := pathInfos(t, store, paths...)
	sk, _, pub := ferryKeys(t, dir, "ferry-test-1")
	other, _, _ := ferryKeys(t, dir, "other-1")

	narinfo := func(p string) string {
		return filepath.Join(cache, storepath.Path(p).HashPart()+".narinfo")
	}
	setSigs := func(p string, sigs []string) {
		t.Helper()
		data, err := os.ReadFile(narinfo(p))
		if err != nil {
			t.Fatal(err)
		}
		data = sigLine.ReplaceAll(data, nil)
		if !bytes.HasSuffix(data, []byte("\n")) {
			data = append(data, '\n')
		}
		for _, s := range sigs {
			data = append(data, "Sig: "+s+"\n"...)
		}
		if err := os.WriteFile(narinfo(p), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sign := func(k signature.SecretKey, p string, sizeDelta uint64) string {
		i := infos[storepath.Path(p)]
		s, err := k.SignPath(i.Path, i.hash(t), i.NarSize+sizeDelta, i.References)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	// The whole closure, signed by ferry alone, copies; Nix keeps
	// ferry's signatures as they are and `nix store verify` takes them.
	t.Run("closure", func(t *testing.T) {
		want := map[storepath.Path]string{}
		for _, p := range paths {
			want[storepath.Path(p)] = sign(sk, p, 0)
			setSigs(p, []string{want[storepath.Path(p)]})
		}
		dst := filepath.Join(t.TempDir(), "dst")
		nixtest.Nix(t, nil, "nix", "copy", "--store", dst, "--from", "file://"+cache,
			"--option", "require-sigs", "true", "--trusted-public-keys", pub, paths[2])
		for p, i := range pathInfos(t, dst, paths...) {
			if len(i.Signatures) != 1 || i.Signatures[0] != want[p] {
				t.Errorf("%s: signatures %q, want %q", p, i.Signatures, want[p])
			}
		}
		nixtest.Nix(t, nil, "nix", append([]string{"store", "verify", "--store", dst, "--trusted-public-keys", pub}, paths...)...)
	})

	// One path (the file: no references needed), many signatures.
	p := paths[0]
	i := infos[storepath.Path(p)]
	good := sign(sk, p, 0)
	_, goodB64, _ := strings.Cut(good, ":")
	identity := make([]byte, 32)
	identity[0] = 1
	evilPub := "evil:" + base64.StdEncoding.EncodeToString(identity)
	evilSig := "evil:" + base64.StdEncoding.EncodeToString(append(identity, make([]byte, 32)...))
	for _, c := range []struct {
		name    string
		sigs    []string
		trusted string
		// ferry's verdict: accepted, or else the error's text ("" for
		// simply untrusted); Nix must agree.
		accept bool
		err    string
	}{
		{"good", []string{good}, pub, true, ""},
		{"good among others", []string{sign(other, p, 0), good, "unknown:!!"}, pub, true, ""},
		{"good without padding", []string{strings.TrimRight(good, "=")}, pub, true, ""},
		{"none", nil, pub, false, ""},
		{"other fingerprint", []string{sign(sk, p, 1)}, pub, false, ""},
		{"untrusted key", []string{sign(other, p, 0)}, pub, false, ""},
		{"trusted key's name, other key", []string{"ferry-test-1:" + strings.SplitN(sign(other, p, 0), ":", 2)[1]}, pub, false, ""},
		{"good under an unknown name", []string{"unknown:" + goodB64}, pub, false, ""},
		{"no name", []string{":" + goodB64}, pub, false, ""},
		{"short", []string{"ferry-test-1:AAAA"}, pub, false, "signature is not valid"},
		{"good and short", []string{good, "ferry-test-1:AAAA"}, pub, false, "signature is not valid"},
		{"bad base64", []string{"ferry-test-1:!!!!"}, pub, false, "invalid character in Base64 string"},
		{"small-order key", []string{evilSig}, evilPub, false, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			keys, err := signature.ParsePublicKeys(strings.Fields(c.trusted))
			if err != nil {
				t.Fatal(err)
			}
			n, ferryErr := keys.VerifyPath(i.Path, i.hash(t), i.NarSize, i.References, c.sigs)
			switch {
			case c.err != "":
				if ferryErr == nil || !strings.Contains(ferryErr.Error(), c.err) {
					t.Errorf("ferry: %d, %v; want error %q", n, ferryErr, c.err)
				}
			case ferryErr != nil || (n > 0) != c.accept:
				t.Errorf("ferry: %d, %v; want accepted %v", n, ferryErr, c.accept)
			}

			setSigs(p, c.sigs)
			dst := filepath.Join(t.TempDir(), "dst")
			_, stderr, err := nixtest.Try(t, nil, "nix", "copy", "--store", dst, "--from", "file://"+cache,
				"--option", "require-sigs", "true", "--trusted-public-keys", c.trusted, p)
			switch {
			case c.accept:
				if err != nil {
					t.Errorf("Nix refuses what ferry accepts: %v\n%s", err, stderr)
				}
			case c.err == "":
				if err == nil || !bytes.Contains(stderr, []byte("lacks a valid signature")) {
					t.Errorf("Nix: %v\n%s\nwant 'lacks a valid signature'", err, stderr)
				}
			default:
				if err == nil || !bytes.Contains(stderr, []byte(c.err)) {
					t.Errorf("Nix: %v\n%s\nwant %q", err, stderr, c.err)
				}
			}
		})
	}
}
