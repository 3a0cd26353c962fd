package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"ferry/examples"
	"ferry/nix/hash"
	"ferry/nix/nar"
	"ferry/nix/storepath"
)

func init() {
	register(&command{name: "demo", args: "[DIR]", summary: "ferry's main job on an embedded default (needs no sshd and no root)", run: cmdDemo})
}

// cmdDemo runs the format round trip on the embedded example tree, or on
// DIR: dump to a NAR, restore it, dump again and compare, and print the
// NAR hash and the store path `nix-store --add` would give it.
func cmdDemo(ctx context.Context, e *Env, args []string) error {
	ops, err := parseFlags(newFlags(e, "demo"), args)
	if err != nil {
		return err
	}
	if len(ops) > 1 {
		return usagef("demo takes at most one DIR")
	}
	work, err := os.MkdirTemp("", "ferry-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	src := filepath.Join(work, "tree")
	if len(ops) == 1 {
		src = ops[0]
	} else if err := writeEmbedded(src); err != nil {
		return err
	}
	var first bytes.Buffer
	if err := nar.Dump(&first, src); err != nil {
		return err
	}
	dest := filepath.Join(work, "restored")
	if err := nar.Restore(bytes.NewReader(first.Bytes()), dest); err != nil {
		return err
	}
	var second bytes.Buffer
	if err := nar.Dump(&second, dest); err != nil {
		return err
	}
	if !bytes.Equal(first.Bytes(), second.Bytes()) {
		return fmt.Errorf("demo: NAR of the restored tree differs from the original")
	}
	sum := sha256.Sum256(first.Bytes())
	h, _ := hash.New(hash.SHA256, sum[:])
	p, err := storepath.DefaultDir.MakeFixedOutput(filepath.Base(src), storepath.Recursive, h, nil, false)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "nar size:   %d bytes (dump, restore and re-dump identical)\n", first.Len())
	fmt.Fprintf(e.Stdout, "nar hash:   %s\n", h.SRI())
	fmt.Fprintf(e.Stdout, "store path: %s\n", p)
	return nil
}

// writeEmbedded writes the embedded example tree to dir, keeping the
// executable bits the repository gives its files.
func writeEmbedded(dir string) error {
	return fs.WalkDir(examples.FS, "tree", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel("tree", name)
		target := filepath.Join(dir, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := examples.FS.ReadFile(name)
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if bytes.HasPrefix(data, []byte("#!")) {
			mode = 0o755 // embed.FS drops modes; scripts are executable
		}
		return os.WriteFile(target, data, mode)
	})
}
