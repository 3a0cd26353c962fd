package nar

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRestoreRefusesExistingDest(t *testing.T) {
	small, _ := os.ReadFile("testdata/small.nar")
	hello, _ := os.ReadFile("testdata/hello.nar")
	sym := build(toks("nix-archive-1 ( type symlink target x )"))
	dir := t.TempDir()
	outside := filepath.Join(dir, "outside")
	must(t, os.Mkdir(outside, 0o755))
	existing := map[string]func(p string) error{
		"dir":              func(p string) error { return os.Mkdir(p, 0o755) },
		"file":             func(p string) error { return os.WriteFile(p, nil, 0o644) },
		"symlink to dir":   func(p string) error { return os.Symlink(outside, p) },
		"dangling symlink": func(p string) error { return os.Symlink(filepath.Join(outside, "new"), p) },
	}
	for ename, mk := range existing {
		for nname, nar := range map[string][]byte{"dir": small, "file": hello, "symlink": sym} {
			t.Run(ename+"/"+nname, func(t *testing.T) {
				dest := filepath.Join(t.TempDir(), "dest")
				must(t, mk(dest))
				err := Restore(bytes.NewReader(nar), dest)
				if err == nil || !strings.Contains(err.Error(), "exists") {
					t.Errorf("Restore over existing %s = %v, want an exists error", ename, err)
				}
			})
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("Restore wrote outside dest: %v", ents)
	}
}

// TestRestoreStaysInside restores archives whose symlinks point outside
// dest and checks nothing is written through them.
func TestRestoreStaysInside(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(dir, "outside")
	must(t, os.Mkdir(outside, 0o755))
	nars := map[string][]byte{
		"absolute symlink then file": dirWith(
			toks("entry ( name a node ( type symlink target"), outside, toks(") )"),
			file("b")),
		"dotdot symlink": dirWith(
			toks("entry ( name a node ( type symlink target ../outside ) )"),
			toks("entry ( name b node ( type directory"), file("c"), toks(") )")),
		"symlink then same name": dirWith(
			toks("entry ( name a node ( type symlink target"), outside, toks(") )"),
			file("a")),
		"dotdot entry": dirWith(file("..")...),
	}
	for name, nar := range nars {
		t.Run(name, func(t *testing.T) {
			dest := filepath.Join(t.TempDir(), "dest")
			Restore(bytes.NewReader(nar), dest)
			ents, _ := os.ReadDir(outside)
			if len(ents) != 0 {
				t.Errorf("Restore wrote outside dest: %v", ents)
			}
			if target, err := os.Readlink(filepath.Join(dest, "a")); err == nil && target != outside && target != "../outside" {
				t.Errorf("symlink a -> %q", target)
			}
		})
	}
}

func TestRestoreModes(t *testing.T) {
	entries := []entry{
		{Header: Header{Type: TypeDirectory}},
		{Header: Header{Path: "exec", Type: TypeRegular, Executable: true, Size: 2}, Contents: "#!"},
		{Header: Header{Path: "plain", Type: TypeRegular, Size: 1}, Contents: "x"},
		{Header: Header{Path: "sub", Type: TypeDirectory}},
		{Header: Header{Path: "sub/link", Type: TypeSymlink, LinkTarget: "../plain"}},
	}
	nar, err := writeAll(t, entries)
	must(t, err)
	dest := filepath.Join(t.TempDir(), "dest")
	must(t, Restore(bytes.NewReader(nar), dest))
	check := func(p string, wantType fs.FileMode, exec bool) {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(dest, p))
		must(t, err)
		if fi.Mode().Type() != wantType {
			t.Errorf("%s: type %v, want %v", p, fi.Mode().Type(), wantType)
		}
		if wantType == 0 && (fi.Mode()&0o111 == 0o111) != exec {
			t.Errorf("%s: mode %v, executable want %v", p, fi.Mode(), exec)
		}
		if wantType == 0 && fi.Mode()&0o100 == 0 && exec {
			t.Errorf("%s: mode %v not executable", p, fi.Mode())
		}
	}
	check("exec", 0, true)
	check("plain", 0, false)
	check("sub", fs.ModeDir, false)
	check("sub/link", fs.ModeSymlink, false)
	var b bytes.Buffer
	must(t, Dump(&b, dest))
	if !bytes.Equal(b.Bytes(), nar) {
		t.Errorf("Dump after Restore differs")
	}
	if err := Restore(bytes.NewReader(nar), filepath.Join(dest, "missing", "x")); err == nil {
		t.Errorf("Restore below a missing parent succeeded")
	}
}
