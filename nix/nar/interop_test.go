package nar

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"ferry/internal/nixtest"
)

// names are the entry names random trees draw from: spaces, unicode, shell
// metacharacters, leading dots and dashes, and names that sort differently
// bytewise than by locale.
var names = []string{
	"a", "B", "Z", "_", "z", "é", "ünïcødé", "日本", "with space", " lead", "trail ",
	"$(echo x);`y`&|*?", "'quote'", `"dq"`, "back\\slash", "-dash", ".hidden",
	"...", "tab\tname", "new\nline", "semi;colon", "a.b.c", "0", "00", "~", "#hash",
	"<>", "%s%n", "{}[]", "\x01ctl", "\xff\xfe", strings.Repeat("L", 255),
}

// fileSizes includes the empty file, sizes around the 8-byte padding, and
// files larger than 64 KiB and the Writer's buffer.
var fileSizes = []int{0, 1, 2, 7, 8, 9, 15, 16, 17, 100, 4095, 4096, 65535, 65536 + 13, 200001}

// randomTree creates a random file system tree at dir, seeded.
func randomTree(t *testing.T, rng *rand.Rand, dir string, depth int) {
	t.Helper()
	must(t, os.Mkdir(dir, 0o755))
	n := rng.IntN(6)
	if depth == 0 {
		n = 8 + rng.IntN(8)
	}
	used := map[string]bool{}
	for range n {
		name := names[rng.IntN(len(names))]
		if used[name] {
			continue
		}
		used[name] = true
		p := filepath.Join(dir, name)
		switch k := rng.IntN(10); {
		case k < 5:
			size := fileSizes[rng.IntN(len(fileSizes))]
			data := make([]byte, size)
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			mode := os.FileMode(0o644)
			switch rng.IntN(4) {
			case 0:
				mode = 0o755
			case 1:
				mode = 0o700
			case 2:
				mode = 0o654 // group/other exec only: not executable in a NAR
			}
			must(t, os.WriteFile(p, data, 0o600))
			must(t, os.Chmod(p, mode))
		case k < 7:
			targets := []string{"a", "../a", "/nonexistent/dangling", "é/x", "with space", ".", "..", "deep/../../x"}
			must(t, os.Symlink(targets[rng.IntN(len(targets))], p))
		case k < 9 && depth < 4:
			randomTree(t, rng, p, depth+1)
		default:
			must(t, os.Mkdir(p, 0o755)) // empty directory
		}
	}
	if depth == 0 {
		// A deep chain of nested directories ending in a file.
		p := filepath.Join(dir, "deep")
		for i := range 40 {
			p = filepath.Join(p, fmt.Sprintf("d%d", i))
		}
		must(t, os.MkdirAll(p, 0o755))
		must(t, os.WriteFile(filepath.Join(p, "leaf"), []byte("leaf\n"), 0o755))
	}
}

func sriSHA256(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}

func TestInteropNix(t *testing.T) {
	nixtest.RequireNix(t)
	listed := 0 // listings compared with nix nar ls
	defer func() {
		if listed == 0 && !t.Failed() {
			t.Errorf("no listing was compared with nix nar ls")
		}
	}()
	for seed := range uint64(6) {
		t.Run(fmt.Sprintf("seed%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0x6e6172))
			tmp := t.TempDir()
			tree := filepath.Join(tmp, "tree")
			randomTree(t, rng, tree, 0)

			// Dump equals nix-store --dump, and the hash nix hash path.
			var ours bytes.Buffer
			must(t, Dump(&ours, tree))
			theirs := nixtest.Nix(t, nil, "nix-store", "--dump", tree)
			if !bytes.Equal(ours.Bytes(), theirs) {
				t.Fatalf("Dump differs from nix-store --dump (%d vs %d bytes)", ours.Len(), len(theirs))
			}
			if got, want := sriSHA256(ours.Bytes()), nixtest.Line(t, "nix", "hash", "path", tree); got != want {
				t.Errorf("hash = %s, nix hash path = %s", got, want)
			}

			// The Reader and Writer round-trip it.
			entries, err := readAll(t, bytes.NewReader(theirs))
			must(t, err)
			rewritten, err := writeAll(t, entries)
			must(t, err)
			if !bytes.Equal(rewritten, theirs) {
				t.Errorf("Reader→Writer round trip differs")
			}

			// List matches nix nar ls -R -l. Nix 2.8 passes each path to
			// boost::format as the format string, so a name with '%' makes
			// it fail; those trees are only listed by us.
			narFile := filepath.Join(tmp, "tree.nar")
			must(t, os.WriteFile(narFile, theirs, 0o644))
			for _, opts := range []ListOptions{{Long: true, Recursive: true}, {}} {
				args := []string{"nar", "ls", narFile, "/"}
				if opts.Long {
					args = append(args, "-R", "-l")
				}
				var listing bytes.Buffer
				must(t, List(&listing, bytes.NewReader(theirs), &opts))
				want, stderr, err := nixtest.Try(t, nil, "nix", args...)
				if err != nil && bytes.Contains(stderr, []byte("boost::too_few_args")) && bytes.Contains(theirs, []byte("%")) {
					t.Logf("nix nar ls cannot list names with %%: %s", bytes.TrimSpace(stderr))
					continue
				}
				if err != nil {
					t.Fatalf("nix %s: %v\n%s", strings.Join(args, " "), err, stderr)
				}
				listed++
				if listing.String() != string(want) {
					t.Errorf("List(%+v) differs from nix %s:\n got %q\nwant %q", opts, strings.Join(args, " "), listing.String(), want)
				}
			}

			// Our Restore of Nix's NAR dumps back identically.
			mine := filepath.Join(tmp, "restored-by-us")
			must(t, Restore(bytes.NewReader(theirs), mine))
			var again bytes.Buffer
			must(t, Dump(&again, mine))
			if !bytes.Equal(again.Bytes(), theirs) {
				t.Errorf("Dump(Restore(nar)) differs")
			}

			// Nix restores our NAR to the same tree.
			nixs := filepath.Join(tmp, "restored-by-nix")
			nixtest.Nix(t, ours.Bytes(), "nix-store", "--restore", nixs)
			if d := nixtest.Nix(t, nil, "nix-store", "--dump", nixs); !bytes.Equal(d, theirs) {
				t.Errorf("nix-store --restore of our NAR dumps differently")
			}
		})
	}
}

// TestInteropSingleObjects covers roots that are not directories.
func TestInteropSingleObjects(t *testing.T) {
	nixtest.RequireNix(t)
	dir := t.TempDir()
	objs := map[string]func(p string) error{
		"empty file":    func(p string) error { return os.WriteFile(p, nil, 0o644) },
		"exec file":     func(p string) error { return os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755) },
		"big file":      func(p string) error { return os.WriteFile(p, bytes.Repeat([]byte{7}, 3<<20+5), 0o644) },
		"symlink":       func(p string) error { return os.Symlink("/nix/store/x", p) },
		"empty dir":     func(p string) error { return os.Mkdir(p, 0o755) },
		"dangling link": func(p string) error { return os.Symlink("nowhere", p) },
	}
	for name, mk := range objs {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
			must(t, mk(p))
			var ours bytes.Buffer
			must(t, Dump(&ours, p))
			if theirs := nixtest.Nix(t, nil, "nix-store", "--dump", p); !bytes.Equal(ours.Bytes(), theirs) {
				t.Errorf("Dump differs from nix-store --dump")
			}
			if got, want := sriSHA256(ours.Bytes()), nixtest.Line(t, "nix", "hash", "path", p); got != want {
				t.Errorf("hash = %s, nix hash path = %s", got, want)
			}
		})
	}
}
