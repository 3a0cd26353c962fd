package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"

	"ferry/nix/hash"
	"ferry/nix/nar"
)

func init() {
	register(&command{name: "hash path", args: "[--type T] [--base16|--base32|--base64|--sri] PATH...", summary: "print the hash of the NAR serialisation of each PATH (as nix hash path)", run: cmdHashPath})
	register(&command{name: "hash file", args: "[--type T] [--base16|--base32|--base64|--sri] FILE...", summary: "print the hash of the contents of each FILE (as nix hash file)", run: cmdHashFile})
}

// hashFlags are the options shared by hash path and hash file.
type hashFlags struct {
	typ                         string
	base16, base32, base64, sri bool
}

func (h *hashFlags) register(fs interface {
	StringVar(*string, string, string, string)
	BoolVar(*bool, string, bool, string)
}) {
	fs.StringVar(&h.typ, "type", "sha256", "hash algorithm: md5, sha1, sha256 or sha512")
	fs.BoolVar(&h.base16, "base16", false, "print the hash in base-16")
	fs.BoolVar(&h.base32, "base32", false, "print the hash in Nix's base-32")
	fs.BoolVar(&h.base64, "base64", false, "print the hash in base-64")
	fs.BoolVar(&h.sri, "sri", false, "print the hash in SRI form (the default)")
}

func (h *hashFlags) format(x hash.Hash) string {
	switch {
	case h.base16:
		return x.Encode(hash.Base16, false)
	case h.base32:
		return x.Encode(hash.Nix32, false)
	case h.base64:
		return x.Encode(hash.Base64, false)
	}
	return x.SRI()
}

func cmdHashPath(ctx context.Context, e *Env, args []string) error {
	return runHash(e, args, "hash path", func(w io.Writer, p string) error { return nar.Dump(w, p) })
}

func cmdHashFile(ctx context.Context, e *Env, args []string) error {
	return runHash(e, args, "hash file", func(w io.Writer, p string) error {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.CopyBuffer(w, f, make([]byte, 1<<20))
		return err
	})
}

func runHash(e *Env, args []string, name string, feed func(io.Writer, string) error) error {
	fs := newFlags(e, name)
	var hf hashFlags
	hf.register(fs)
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	algo, err := hash.ParseAlgorithm(hf.typ)
	if err != nil {
		return usagef("--type: %v", err)
	}
	n := 0
	for _, b := range []bool{hf.base16, hf.base32, hf.base64, hf.sri} {
		if b {
			n++
		}
	}
	if n > 1 {
		return usagef("give at most one of --base16, --base32, --base64 and --sri")
	}
	w := bufio.NewWriter(e.Stdout)
	defer w.Flush()
	for _, p := range ops {
		h := algo.New()
		if err := feed(h, p); err != nil {
			return fmt.Errorf("hash %s: %w", p, err)
		}
		fmt.Fprintln(w, hf.format(hash.FromHasher(algo, h)))
	}
	return nil
}
