package cli

import (
	"bufio"
	"context"

	"ferry/nix/nar"
)

func init() {
	register(&command{name: "nar dump", args: "PATH", summary: "write the NAR serialisation of PATH to standard output (as nix-store --dump)", run: cmdNarDump})
	register(&command{name: "nar restore", args: "DEST", summary: "restore a NAR read from standard input to DEST, which must not exist (as nix-store --restore)", run: cmdNarRestore})
	register(&command{name: "nar ls", args: "[-l] [-R]", summary: "list the contents of a NAR read from standard input (as nix nar ls)", run: cmdNarLs})
}

func cmdNarDump(ctx context.Context, e *Env, args []string) error {
	name := "nar dump"
	ops, err := parseFlags(newFlags(e, name), args)
	if err != nil {
		return err
	}
	if len(ops) != 1 {
		return usagef("nar dump takes exactly one PATH")
	}
	w := bufio.NewWriterSize(e.Stdout, 1<<20)
	if err := nar.Dump(w, ops[0]); err != nil {
		return err
	}
	return w.Flush()
}

func cmdNarRestore(ctx context.Context, e *Env, args []string) error {
	name := "nar restore"
	ops, err := parseFlags(newFlags(e, name), args)
	if err != nil {
		return err
	}
	if len(ops) != 1 {
		return usagef("nar restore takes exactly one DEST")
	}
	return nar.Restore(bufio.NewReaderSize(e.Stdin, 1<<20), ops[0])
}

func cmdNarLs(ctx context.Context, e *Env, args []string) error {
	name := "nar ls"
	fs := newFlags(e, name)
	var opts nar.ListOptions
	fs.BoolVar(&opts.Long, "l", false, "show types, permissions, sizes and symlink targets")
	fs.BoolVar(&opts.Long, "long", false, "same as -l")
	fs.BoolVar(&opts.Recursive, "R", false, "list every object, not just the top level")
	fs.BoolVar(&opts.Recursive, "recursive", false, "same as -R")
	ops, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(ops) != 0 {
		return usagef("nar ls takes no operands; it reads the NAR from standard input")
	}
	w := bufio.NewWriter(e.Stdout)
	if err := nar.List(w, bufio.NewReader(e.Stdin), &opts); err != nil {
		return err
	}
	return w.Flush()
}
